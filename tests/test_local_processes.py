"""Process-level facts of the local backend, checked on the processes themselves (psutil):
a timed-out worker is gone, a crashing task runs exactly ``retries + 1`` times, and a
cancelled job leaves no worker running its tasks and writes nothing more to storage."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from cloudbutton_executor import TaskTimeoutError, WorkerDiedError, protocol


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, within: float = 10) -> bool:
    """Whether the process is gone within ``within`` seconds."""
    end = time.time() + within
    while not gone(pid) and time.time() < end:
        time.sleep(0.05)
    return gone(pid)


def wait_for_lines(path, n, timeout=20.0) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} has fewer than {n} lines after {timeout} s")


def test_timed_out_worker_process_is_gone(ex, tmp_path):
    pids = tmp_path / "pids"

    def stuck(_):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(120)

    job = ex.map(stuck, [0], timeout=1)
    (pid,) = map(int, wait_for_lines(pids, 1))
    assert psutil.Process(pid).ppid() == os.getpid()  # a worker of this host, running the task
    with pytest.raises(TaskTimeoutError, match="timeout of 1 s"):
        job[0].result(timeout=20)
    # The host kills the worker before it reports the timeout.
    assert gone(pid), f"worker {pid} still runs the timed-out task"


def test_a_worker_running_a_task_dies_with_its_host(tmp_path):
    # Nothing of the host is left to stop it: only the death signal the worker asked for
    # at its start (PR_SET_PDEATHSIG) ends the task, instead of its running on unseen.
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, time
        from cloudbutton_executor import Executor
        from cloudbutton_executor.storage import LocalStorage

        def stuck(_):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(120)

        with Executor(workers=1, storage=LocalStorage({str(tmp_path / 'storage')!r})) as ex:
            ex.map(stuck, [0]).result()
    """)
    host = subprocess.Popen([sys.executable, "-c", script])
    try:
        (pid,) = map(int, wait_for_lines(pids, 1, timeout=60))
        assert psutil.Process(pid).ppid() == host.pid
        host.send_signal(signal.SIGKILL)
        host.wait(30)
    finally:
        host.kill()
        host.wait()
    assert wait_gone(pid), f"worker {pid} still runs its task after its host was killed"


def _crash_always(path, how):
    def crash(_):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)

    return crash


@pytest.mark.parametrize("retries", [0, 2])
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_crashing_task_runs_exactly_retries_plus_one_times(ex, tmp_path, retries, how):
    runs = tmp_path / "runs"
    job = ex.map(_crash_always(runs, how), ["x"], retries=retries)
    with pytest.raises(WorkerDiedError):
        job.result(timeout=60)
    time.sleep(0.5)  # a retry too many would have been sent before the failure was kept
    pids = runs.read_text().split()
    assert len(pids) == retries + 1, pids
    assert len(set(pids)) == retries + 1  # each run in a fresh process: the last one died
    assert job.retried == retries and job.counts()["retried"] == retries
    assert job[0].attempts == retries + 1
    assert job.counts()["failed"] == 1 and job.counts()["done"] == 0


def test_cancel_leaves_no_worker_running_and_no_later_write(ex, tmp_path):
    started = tmp_path / "started"
    after = tmp_path / "after-cancel"

    def slow(x):
        with open(started, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.5)
        with open(after, "a") as f:  # reached only if the worker outlives the cancel
            f.write(f"{x}\n")
        return x

    job = ex.map(slow, range(8))
    pids = [int(p) for p in wait_for_lines(started, 2)]
    assert job.cancel() == 8
    job_prefix = protocol.job_prefix(ex.prefix, job.job_id) + "/"

    def snapshot():
        root = ex.storage.root
        return {k: os.stat(os.path.join(root, k)).st_mtime_ns for k in ex.storage.list(job_prefix)}

    at_cancel = snapshot()
    assert protocol.cancel_key(ex.prefix, job.job_id) in at_cancel
    assert not any(protocol.task_id_from_status_key(k) for k in at_cancel)
    deadline = time.time() + 5
    while not all(gone(p) for p in pids) and time.time() < deadline:
        time.sleep(0.02)
    assert all(gone(p) for p in pids), "workers still run the cancelled tasks"
    time.sleep(2.0)  # past the end the running tasks would have had
    assert not after.exists(), after.read_text()
    assert snapshot() == at_cancel  # nothing written to the job's storage after the cancel
    assert len(started.read_text().split()) == 2  # queued tasks never started
