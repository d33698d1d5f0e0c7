import os
import shutil
import tempfile

import pytest

import hermetic

# Plugins contributed by the suites of each layer.
pytest_plugins = ["aws_fixtures"]

_session_tmp = {}


def pytest_configure(config):
    # Everything the run writes to "the temp dir" (worker logs, kernels' and Chromium's
    # files, scratch dirs) lands in one directory removed at the end: nothing left in /tmp.
    # Subprocesses inherit TMPDIR; this process's tempfile module is pointed there too.
    root = tempfile.mkdtemp(prefix="cloudbutton-testrun-")
    _session_tmp.update(root=root, env=os.environ.get("TMPDIR"), tempdir=tempfile.tempdir)
    os.environ["TMPDIR"] = root
    tempfile.tempdir = root


def pytest_unconfigure(config):
    if "root" not in _session_tmp:
        return
    from cloudbutton_executor.backends import local

    local._shutdown_all()  # the workers' log is open inside the directory
    if _session_tmp["env"] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = _session_tmp["env"]
    tempfile.tempdir = _session_tmp["tempdir"]
    shutil.rmtree(_session_tmp.pop("root"), ignore_errors=True)


# Modules whose tests are one story in one shared server (test_browser_panel.py: one
# JupyterLab, whose jobs later tests look at). pytest-randomly shuffles every other
# module's tests; these keep their file order, at the place the shuffle gave the module.
IN_FILE_ORDER = ("test_browser_panel.py",)


def pytest_collection_modifyitems(config, items):
    for name in IN_FILE_ORDER:
        places = [k for k, item in enumerate(items) if item.path.name == name]
        story = sorted((items[k] for k in places), key=lambda item: item.reportinfo()[1] or 0)
        for k, item in zip(places, story):
            items[k] = item


@pytest.fixture(autouse=True)
def hermetic_environment(tmp_path, monkeypatch):
    """Every test: its own config file and job cache, no AWS account, and the process
    environment exactly as it was afterwards (whatever the test or a fixture changed)."""
    saved = dict(os.environ)
    private = tmp_path / "hermetic"
    private.mkdir()
    for var, value in hermetic.settings(private).items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    yield
    monkeypatch.undo()
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def storage(tmp_path):
    from cloudbutton_executor.storage import LocalStorage

    return LocalStorage(str(tmp_path / "storage"))


@pytest.fixture
def ex(storage):
    from cloudbutton_executor import Executor

    with Executor(workers=2, storage=storage, timeout=60) as executor:
        yield executor

# moto_endpoint, s3_bucket and the Lambda emulator fixtures live in aws_fixtures.py.


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """A real IPython shell with the %cloud magics, its jobs in this test's storage."""
    from IPython.core.interactiveshell import InteractiveShell

    from cloudbutton_magic.magics import CloudMagics

    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "no-config.yaml"))
    shell = InteractiveShell.instance()
    magics = CloudMagics(shell)
    shell.register_magics(magics)
    shell.runner = magics.runner
    saved = dict(shell.user_ns)
    shell.run_cell("%cloud config workers=2")
    yield shell
    shell.user_ns.clear()
    shell.user_ns.update(saved)
