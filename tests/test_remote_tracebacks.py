"""Remote tracebacks show the user's source lines, and user exceptions keep their type,
with the current cloudpickle and with the previous minor release on host and workers.

The code under test is defined where workers cannot read it back from a file: a
notebook-like cell (source only in the host's linecache), a lambda in that cell,
and a local module deleted from disk after import, as on Lambda, where workers
have none of the user's files.
"""
import json
import os
import re
import subprocess
import sys

import cloudpickle
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache")  # git-ignored

SCRIPT = r'''
import json, linecache, os, sys, textwrap
import cloudpickle
from cloudbutton_executor import Executor, RemoteError
from cloudbutton_executor.storage import LocalStorage

CELL = textwrap.dedent("""
    class Boom(Exception):
        pass

    class NeedsTwo(Exception):
        def __init__(self, what, code):
            super().__init__(f"{what} failed with {code}")
            self.code = code

    def noisy(x):
        total = x * 2
        raise Boom(f"bad {total}")

    def two(x):
        raise NeedsTwo("step", x)

    half = lambda x: (x,
                      1 / x)
""")
# What IPython does with a cell: a pseudo file name that exists only in linecache.
CELL_FILE = "/nonexistent/ipykernel_0/cell-7.py"
linecache.cache[CELL_FILE] = (len(CELL), None, CELL.splitlines(True), CELL_FILE)
ns = {"__name__": "__main__"}
exec(compile(CELL, CELL_FILE, "exec"), ns)

moddir = sys.argv[1]
with open(os.path.join(moddir, "gonemod.py"), "w") as f:
    f.write("def check(x):\n    assert x < 0, f'{x} is not negative'\n    return x\n")
sys.path.insert(0, moddir)
import gonemod
# The host keeps the module's source (read into its linecache, as a traceback would);
# the file is gone from disk, so a worker of this machine cannot read it either.
linecache.getlines(gonemod.__file__)
os.remove(gonemod.__file__)

out = {"cloudpickle": cloudpickle.__version__}
with Executor(workers=1, storage=LocalStorage(sys.argv[2])) as ex:
    for name, fn, arg in [("noisy", ns["noisy"], 1), ("two", ns["two"], 3), ("lambda", ns["half"], 0)]:
        try:
            ex.call_async(fn, arg).result(timeout=60)
        except Exception as exc:
            out[name] = {"type": type(exc).__name__, "same_class": type(exc) is ns.get(type(exc).__name__),
                         "str": str(exc), "tb": exc.__cause__.tb, "attrs": dict(vars(exc))}
    try:
        ex.map(gonemod.check, [5]).result(timeout=60)
    except Exception as exc:
        out["module"] = {"type": type(exc).__name__, "tb": exc.__cause__.tb}
print("RESULT" + json.dumps(out, default=repr))
'''


def _previous_minor_python() -> str:
    """A Python that sees cloudpickle's previous minor release first, then this venv's packages.
    Built once in .cache/ from the registry; its workers use it too (they run sys.executable)."""
    major, minor = (int(p) for p in cloudpickle.__version__.split(".")[:2])
    if minor == 0:
        pytest.skip(f"cloudpickle {cloudpickle.__version__} has no previous minor in this major")
    spec = f"cloudpickle=={major}.{minor - 1}.*"
    venv = os.path.join(CACHE, f"cloudpickle-{major}.{minor - 1}")
    python = os.path.join(venv, "bin", "python")
    site = os.path.join(venv, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}",
                        "site-packages")
    ready = os.path.join(venv, ".ready")
    if not os.path.exists(ready):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", venv], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, spec],
                       check=True, env={k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"})
        import sysconfig

        ours = sysconfig.get_paths()["purelib"]
        with open(os.path.join(site, "zz_host_venv.pth"), "w") as f:  # after its own cloudpickle
            f.write(f"import site; site.addsitedir({ours!r})\n")
        open(ready, "w").close()
    return python


def _run(python, tmp_path) -> dict:
    script = tmp_path / "host.py"
    script.write_text(SCRIPT)
    (tmp_path / "mods").mkdir()
    p = subprocess.run([python, str(script), str(tmp_path / "mods"), str(tmp_path / "storage")],
                       capture_output=True, text=True, timeout=180, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("which", ["current", "previous-minor"])
def test_source_lines_and_exception_types_travel(which, tmp_path):
    python = sys.executable if which == "current" else _previous_minor_python()
    out = _run(python, tmp_path)
    if which == "current":
        assert out["cloudpickle"] == cloudpickle.__version__
    else:
        assert out["cloudpickle"].split(".")[:2] != cloudpickle.__version__.split(".")[:2]

    cell = "/nonexistent/ipykernel_0/cell-7.py"
    noisy = out["noisy"]
    assert noisy["type"] == "Boom" and noisy["same_class"], noisy  # the notebook's own class
    assert f'File "{cell}", line 12, in noisy' in noisy["tb"], noisy["tb"]
    assert 'raise Boom(f"bad {total}")' in noisy["tb"]

    two = out["two"]  # __init__ takes other arguments than args: still its own type
    assert two["type"] == "NeedsTwo" and two["same_class"], two
    assert two["str"] == "step failed with 3" and two["attrs"] == {"code": 3}
    assert 'raise NeedsTwo("step", x)' in two["tb"]

    lam = out["lambda"]
    assert lam["type"] == "ZeroDivisionError"
    assert f'File "{cell}", line 18, in <lambda>' in lam["tb"] and "1 / x)" in lam["tb"], lam["tb"]

    mod = out["module"]
    assert mod["type"] == "AssertionError"
    assert "gonemod.py\", line 2, in check" in mod["tb"]
    assert "assert x < 0, f'{x} is not negative'" in mod["tb"], mod["tb"]


def test_in_a_notebook_the_traceback_names_the_cell_and_shows_its_line(tmp_path):
    """Real kernel (ipykernel's cell file names), a notebook function and a %%cloud cell."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in (
        "%load_ext cloudbutton_jupyter\n%cloud config workers=1",
        "def noisy(x):\n    y = x * 2\n    raise ValueError(f'bad {y}')",
        "from cloudbutton_executor import Executor\n"
        "with Executor(workers=1) as ex:\n"
        "    try:\n        ex.call_async(noisy, 1).result()\n"
        "    except ValueError as e:\n        print(e.__cause__)",
        "%%cloud map [1] as x\nz = x + 1\nraise KeyError(z)",
    )]
    env = dict(os.environ, CLOUDBUTTON_STORAGE_DIR=str(tmp_path / "s"),
               CLOUDBUTTON_CONFIG=str(tmp_path / "none.yaml"))
    client = NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert 'File "Cell In[2] (' in printed and "line 3, in noisy" in printed, printed
    assert "raise ValueError(f'bad {y}')" in printed, printed
    error = next(o for o in nb.cells[3].outputs if o.output_type == "error")
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))  # IPython's colours
    assert error["ename"] == "KeyError"
    assert "<cloud-cell In[4] " in text and "raise KeyError(z)" in text, text
