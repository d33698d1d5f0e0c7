"""Every invocation writes exactly one terminal status, also when its setup fails: the
task ends at once with an error naming the cause (not at its deadline)."""
import json
import os
import shutil
import subprocess
import sys
import time
import types

import pytest

from cloudbutton_executor import WorkerSetupError


def _host_only_function(name="cb_host_only_mod"):
    """A function pickled by reference to a module that exists only in this process."""
    mod = types.ModuleType(name)
    exec("def f(x):\n    return x + 1\n", mod.__dict__)
    sys.modules[name] = mod
    return mod.f


class FailsToLoad:
    """Pickles fine on the host; unpickling it on the worker raises."""

    def __reduce__(self):
        return (_explode, ("state rejected by the worker",))


def _explode(msg):
    raise ValueError(msg)


def _check_setup_error(err, took, timeout):
    assert isinstance(err, WorkerSetupError), repr(err)
    assert took < min(10, timeout / 2), took  # not at the deadline
    text = str(err)
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in text
    assert "cloudpickle" in text


def test_missing_module_ends_the_task_at_once_with_its_name(ex):
    fn = _host_only_function()
    t0 = time.time()
    job = ex.map(fn, [1, 2, 3], timeout=60)
    outcomes = job.results(timeout=30)
    took = time.time() - t0
    for err in outcomes:
        _check_setup_error(err, took, 60)
        assert err.missing_module == "cb_host_only_mod"
        assert "No module named 'cb_host_only_mod'" in str(err) and "cloudbutton deploy --sync" in str(err)
        assert "ModuleNotFoundError" in str(err.__cause__)  # the worker's traceback
    with pytest.raises(WorkerSetupError):
        job.result()


def test_unpickling_failure_of_the_function_is_reported(ex):
    bad = FailsToLoad()

    def uses_it(x):
        return (bad, x)

    t0 = time.time()
    outcomes = ex.map(uses_it, [1, 2], chunksize=2, timeout=60).results(timeout=30)
    took = time.time() - t0
    for err in outcomes:
        _check_setup_error(err, took, 60)
        assert err.missing_module is None
        assert "ValueError: state rejected by the worker" in str(err)


def test_unreadable_inputs_write_one_error_status(storage):
    """The handler itself, on an event whose inputs are gone from storage (a cleaned job)."""
    import json

    from cloudbutton_executor import protocol, serialize
    from cloudbutton_executor.worker import handler

    blob = serialize.dumps(abs)
    fkey = protocol.function_key("p", serialize.digest(blob))
    storage.put(fkey, blob)
    event = {"v": protocol.PROTOCOL_VERSION, "job_id": "20260101-000000-abcdef", "prefix": "p",
             "storage": storage.describe(), "function_key": fkey, "task": "000000-000002",
             "data": {"key": "p/jobs/20260101-000000-abcdef/data.pickle", "start": 0, "stop": 10,
                      "offsets": [0, 5, 10], "blocks": [[0, 10, "0" * 64]]},
             "host_submit": time.time(), "attempt": 0, "auth": "ab" * 32}
    response = handler(event)
    assert response["state"] == "error" and response["written"]
    status = json.loads(storage.get(protocol.status_key("p", event["job_id"], event["task"])))
    assert status["infra"]["kind"] == "setup" and "data.pickle" in status["infra"]["message"]
    assert status["infra"]["worker"]["python"].startswith(f"{sys.version_info.major}.")
    errors = protocol.item_errors(status)
    assert sorted(errors) == [0, 1] and errors[0]["traceback"]
    # A second delivery of the same event cannot write a second status (first write wins).
    assert handler(event)["written"] is False


_FULL_TMP_JOB = """
import json, time
from cloudbutton_executor import Executor
with Executor(backend="local") as ex:
    t0 = time.time()
    out = ex.map(abs, [-1, -2], timeout=60).results(timeout=60)
    print(json.dumps({"took": time.time() - t0,
                      "out": [[type(o).__name__, str(o)] for o in out]}))
"""


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs util-linux's unshare")
def test_a_full_tmp_ends_the_task_at_once_naming_it(tmp_path):
    """Workers whose /tmp (TMPDIR) has no room left report that as the task's setup
    failure, in seconds: they neither die at start (a vague crash, as Python's
    tempfile.gettempdir() probe would make them) nor move to another directory.
    The full /tmp is a real one: a tmpfs with no inode left, in a private mount
    namespace of a child process (root can mount there)."""
    full = tmp_path / "tmp"
    full.mkdir()
    script = tmp_path / "job.py"
    script.write_text(_FULL_TMP_JOB)
    shell = (f"mount -t tmpfs -o size=1m,nr_inodes=2 tmpfs {full} && touch {full}/a; "
             f"touch {full}/b 2>/dev/null; exec {sys.executable} {script}")
    env = dict(os.environ, TMPDIR=str(full))
    proc = subprocess.run(["unshare", "-m", "sh", "-c", shell], env=env, capture_output=True,
                          text=True, timeout=120)
    if "mount" in proc.stderr and "permission denied" in proc.stderr.lower():
        pytest.skip(f"no mount namespaces here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["took"] < 10, report
    for kind, text in report["out"]:
        assert kind == "WorkerSetupError", report
        assert "No space left on device" in text and str(full) in text, text
        assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in text, text
