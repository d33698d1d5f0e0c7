"""Pre-warmed local workers: runtime processes started ahead of need (``prewarm``, which the
notebook extension calls when it loads), one per worker of the pool to come, that the
pool's first tasks run on. They have run nothing before (each one's first invocation is a
cold start of a fresh process), serve only a pool of their own environment, and never
outlive their host."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from cloudbutton_executor import Executor
from cloudbutton_executor.backends import local
from cloudbutton_executor.local_runtime import RuntimeProcess
from test_local_processes import gone, wait_gone


def _spares(n: int = 1, within: float = 30) -> list[RuntimeProcess]:
    """The first ``n`` pre-warmed workers, once the spawner thread has started them and
    they are ready (while starting, one has no advantage over a pool's fresh workers)."""
    end = time.time() + within
    while time.time() < end:
        with local._spare_cond:
            spares = list(local._spares)
        if len(spares) >= n:
            for proc in spares[:n]:
                assert proc.wait_ready(30)
            return spares[:n]
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} pre-warmed workers were started")


def _spare() -> RuntimeProcess:
    return _spares(1)[0]


# A pool size no other test leaves held (the magics' tests keep a pool of 2 for the
# session): a pool that is still up serves a new executor with its warm workers.
W = 3


@pytest.fixture(autouse=True)
def no_spare_before_or_after():
    local._discard_spares()
    assert not [key for key in local._pools if key[0] == W]
    yield
    local._discard_spares()


def test_a_pool_after_prewarm_runs_on_its_pre_warmed_workers_whose_first_runs_are_cold(storage):
    local.prewarm(W)
    spares = {p.pid for p in _spares(W)}
    assert all(psutil.Process(pid).ppid() == os.getpid() for pid in spares)
    with Executor(workers=W, storage=storage) as ex:
        # Each worker holds its task a moment, so each of the W takes one.
        job = ex.map(lambda _: (time.sleep(0.5), os.getpid())[1], range(W))
        assert set(job.result()) == spares
        assert [f.stats["cold_start"] for f in job] == [True] * W  # module state never used
    assert local._spares == []  # taken, and a shut-down pool leaves none behind


def test_a_task_goes_to_a_started_worker_before_one_still_starting(storage):
    used: set[int] = set()
    # One pre-warmed worker and W - 1 starting in the pool: the starting ones must not
    # take the task from the ready one (whichever slot took it).
    for _ in range(12):
        local.prewarm(W)
        ready, *others = _spares(W)
        with local._spare_cond:
            local._spares[:] = [ready]
        for proc in others:
            proc.kill()
        assert ready.pid not in used  # a worker that has run tasks is never kept
        with Executor(workers=W, storage=storage) as ex:
            job = ex.map(os.getpid, [()])
            assert job.result() == [ready.pid]
            assert job[0].stats["cold_start"] is True
        used.add(ready.pid)


def test_without_prewarm_a_pool_leaves_no_worker_behind(storage):
    with Executor(workers=W, storage=storage) as ex:
        ex.map(os.getpid, [(), ()]).result()
    time.sleep(0.3)
    assert local._spares == [] and local._spares_wanted is None


def test_a_pre_warmed_worker_of_another_environment_is_killed_not_used(storage, monkeypatch):
    local.prewarm(W)
    spare = _spare()
    monkeypatch.setenv(local.WORKER_ENV, "PREWARM_PROBE")
    monkeypatch.setenv("PREWARM_PROBE", "new")  # as new credentials would be
    with Executor(workers=W, storage=storage) as ex:
        (pid, seen), = ex.map(lambda: (os.getpid(), os.environ.get("PREWARM_PROBE")), [()]).result()
    assert seen == "new" and pid != spare.pid
    assert wait_gone(spare.pid), "the unusable pre-warmed worker was left running"


def test_the_pre_warmed_worker_outlives_the_thread_that_asked_for_it(storage):
    # A worker dies with the thread that started it (PR_SET_PDEATHSIG): a spare asked for
    # by a short-lived thread (a job's listener releasing the pool) must not.
    def ask():
        local.prewarm(W)
        _spare()  # ready: it has set up its death signal by now

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join()
    time.sleep(0.3)
    spare = _spare()
    assert not gone(spare.pid)
    with Executor(workers=W, storage=storage) as ex:
        assert ex.map(lambda x: (os.getpid(), x * 2), [21]).result() == [(spare.pid, 42)]


def test_prewarm_starts_only_what_is_missing_and_drops_another_environments(storage):
    local.prewarm(W)
    first = _spares(W)
    local.prewarm(W)
    time.sleep(0.3)
    assert local._spares == first and not any(gone(p.pid) for p in first)
    local.prewarm(1)  # another pool's size: another environment (its BLAS threads: 2 here)
    assert all(wait_gone(p.pid) for p in first)
    (one,) = _spares(1)
    time.sleep(0.3)
    assert local._spares == [one] and one.pid not in {p.pid for p in first}


@pytest.mark.parametrize("how", ["exits", "is killed"])
def test_the_pre_warmed_worker_ends_with_its_host(tmp_path, how):
    script = textwrap.dedent(f"""
        import os, sys, time
        from cloudbutton_executor import Executor
        from cloudbutton_executor.backends import local
        from cloudbutton_executor.storage import LocalStorage

        with Executor(workers=2, storage=LocalStorage({str(tmp_path / 'storage')!r})) as ex:
            ex.map(os.getpid, [()]).result()
        local.prewarm(2)
        while len(local._spares) < 2:
            time.sleep(0.02)
        assert all(p.wait_ready(30) for p in local._spares)
        print(" ".join(str(p.pid) for p in local._spares), flush=True)
        sys.stdin.readline()  # held until the test has seen whose children the spares are
    """)
    host = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        spares = [int(pid) for pid in host.stdout.readline().split()]
        assert [psutil.Process(pid).ppid() for pid in spares] == [host.pid] * 2
        if how == "is killed":
            host.send_signal(signal.SIGKILL)
        else:
            host.stdin.write("\n")
            host.stdin.flush()
        host.wait(30)
    finally:
        host.kill()
        host.wait()
    assert all(wait_gone(pid) for pid in spares), f"pre-warmed workers outlived their host, which {how}"


def test_wait_ready_says_whether_the_runtime_started(tmp_path):
    runtime = RuntimeProcess([sys.executable, "-s", "-c",
                              "from cloudbutton_executor.local_runtime import main; main()"],
                             env={**os.environ, "CLOUDBUTTON_WORKER": "local"},
                             cwd=str(tmp_path), stderr=None)
    try:
        assert not runtime.ready
        assert runtime.wait_ready(30) and runtime.ready
        assert runtime.wait_ready(0)  # once ready, always: no read, no wait
    finally:
        runtime.close()
    assert runtime.popen.returncode == 0  # its stdin closed: it ended by itself

    broken = RuntimeProcess([sys.executable, "-c", "import sys; sys.exit(3)"],
                            env=dict(os.environ), cwd=str(tmp_path), stderr=None)
    assert broken.wait_ready(30) is False and not broken.ready
    assert broken.recv(time.time() + 30) is None  # the supervisor then reports how it died
    assert broken.kill() == 3

    silent = RuntimeProcess([sys.executable, "-c", "import time; time.sleep(30)"],
                            env=dict(os.environ), cwd=str(tmp_path), stderr=None)
    try:
        t = time.time()
        assert silent.wait_ready(0.3) is False
        assert 0.25 < time.time() - t < 5
    finally:
        silent.kill()


def test_loading_the_extension_pre_warms_the_first_cells_worker(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from cloudbutton_magic import load_ipython_extension

    config = tmp_path / "config.yaml"
    config.write_text(f"workers: {W}\n")
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(config))
    shell = InteractiveShell.instance()
    saved = dict(shell.user_ns)
    try:
        load_ipython_extension(shell)
        spares = {p.pid for p in _spares(W)}
        shell.run_cell_magic("cloud", "map range(3) -o pids", "import os, time\ntime.sleep(0.5)\nos.getpid()")
        assert set(shell.user_ns["pids"]) == spares
    finally:
        runner = shell.magics_manager.registry["CloudMagics"].runner
        for ex in runner._executors.values():
            ex.shutdown(wait=True)
        shell.user_ns.clear()
        shell.user_ns.update(saved)


def test_loading_the_extension_for_lambda_starts_no_local_worker(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from cloudbutton_magic import load_ipython_extension

    config = tmp_path / "config.yaml"
    config.write_text("backend: lambda\n")
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(config))
    shell = InteractiveShell.instance()
    load_ipython_extension(shell)
    assert shell.magics_manager.registry["CloudMagics"].runner.settings()["backend"] == "lambda"
    time.sleep(0.3)
    assert local._spares == [] and local._spares_wanted is None


def test_a_forked_child_has_its_own_pool_and_leaves_the_parents_workers_alone(tmp_path):
    # After a fork (multiprocessing's default start method on Linux) the parent's pool
    # has no slot threads in the child: taking it would hang the child's job, and the
    # child's exit would kill the parent's workers.
    script = textwrap.dedent(f"""
        import json, os, sys, time
        from cloudbutton_executor import Executor
        from cloudbutton_executor.backends import local
        from cloudbutton_executor.storage import LocalStorage

        def pid(_):
            time.sleep(0.5)  # two at once: one on each worker of the pool
            return os.getpid()

        def double(x):
            return 2 * x

        ex = Executor(workers=2, storage=LocalStorage({str(tmp_path / 'storage')!r}))
        before = ex.map(pid, range(2)).result(timeout=60)
        local.prewarm(2)
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            kid = Executor(workers=2, storage=LocalStorage({str(tmp_path / 'storage')!r}))
            os.write(w, json.dumps(kid.map(double, range(3)).result(timeout=20)).encode())
            kid.shutdown()
            sys.exit(0)  # an ordinary exit: the module's exit handlers run in the child
        os.close(w)
        _, status = os.waitpid(child, 0)
        doubled = os.read(r, 1000).decode()
        after = ex.map(pid, range(2)).result(timeout=60)
        ex.shutdown()
        print(json.dumps({{"child": doubled, "status": status, "before": sorted(set(before)),
                           "after": sorted(set(after))}}))
    """)
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = host.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", "the forked child's job hung (it took the parent's pool)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.pid, signal.SIGKILL)  # the host and a child that hung
        host.wait()
    assert host.returncode == 0, stderr[-3000:]
    seen = json.loads(stdout.strip().splitlines()[-1])
    assert seen["status"] == 0 and json.loads(seen["child"]) == [0, 2, 4], (seen, stderr[-3000:])
    assert len(seen["before"]) == 2
    assert seen["after"] == seen["before"], "the child's exit killed the parent's workers"
