"""IPython magics for cloudbutton: ``%%cloud map xs`` runs a cell over ``xs`` on stateless workers."""


def load_ipython_extension(ip):
    from .magics import CloudMagics

    ip.register_magics(CloudMagics)


def unload_ipython_extension(ip):  # pragma: no cover - IPython keeps magics registered
    pass
