"""IPython magics for cloudbutton: ``%%cloud map xs`` runs a cell over ``xs`` on stateless workers."""


def load_ipython_extension(ip):
    from . import job_display
    from .magics import CloudMagics

    magics = CloudMagics(ip)
    ip.register_magics(magics)
    job_display.register(ip)  # a Job as a cell's last expression shows its widget
    magics.runner.prewarm()


def unload_ipython_extension(ip):  # pragma: no cover - IPython keeps magics registered
    pass
