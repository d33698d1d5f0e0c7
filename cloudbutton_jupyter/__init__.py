"""cloudbutton-jupyter: the distribution front door.

``%load_ext cloudbutton_jupyter`` loads the ``%%cloud`` magics; the Jupyter
server loads the REST handlers the "Cloud" sidebar talks to.
"""

__version__ = "0.1.0"


def load_ipython_extension(ip):
    from cloudbutton_magic import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip):
    from cloudbutton_magic import unload_ipython_extension as unload

    unload(ip)


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "cloudbutton-jupyter"}]


def _jupyter_server_extension_points():
    return [{"module": "cloudbutton_jupyter"}]


def _load_jupyter_server_extension(server_app):
    # Imported here so that `%load_ext` in a kernel never pulls in tornado handlers.
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("cloudbutton_jupyter: REST API at %scloudbutton/", server_app.base_url)
