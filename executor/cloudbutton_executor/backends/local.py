"""Local worker processes with AWS Lambda's semantics.

- Each invocation sees only its event; workers are separate processes that
  read everything from storage (nothing is inherited from the host).
- A worker gets its next event as soon as it has answered the previous one,
  before the host processes that answer (pipelining: the host's share of a
  task overlaps the worker's next task); a worker still has at most one event.
- Enforced per-invocation timeout (the process is killed) and memory limit
  (RLIMIT_AS, set by the runtime), a concurrency limit (one dispatcher thread
  per worker slot), warm reuse of processes with cold starts marked, a fresh
  scratch dir per invocation.
- A worker that dies (signal, exit, segfault) ends its invocation with an
  error naming what happened; the slot starts a fresh process next time.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from .. import local_runtime
from ..local_runtime import RuntimeProcess
from ..errors import LostInvocationError, TaskTimeoutError, WorkerDiedError
from ..interrupt import start_thread
from .base import Backend, BackendLimits, Event, InvocationListener

log = logging.getLogger("cloudbutton.local")

_pools: dict[tuple[Any, ...], LocalBackend] = {}
_pools_lock = threading.Lock()


def get_local_backend(workers: int | None = None, **options: Any) -> LocalBackend:
    """A process-wide pool per concurrency level, so warm workers are reused
    across the executors that hold it at the same time (as Lambda reuses warm
    containers). Each call takes one hold; ``release()`` gives it back, and the
    last release shuts the pool down: no thread or process outlives its users."""
    if options:
        raise TypeError(f"unknown option(s) for the local backend: {', '.join(sorted(options))}")
    workers = int(workers or os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    env = _worker_env(workers)
    key = (workers, tuple(sorted(env.items())))  # new credentials or paths: new workers
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or pool.closed:
            pool = _pools[key] = LocalBackend(workers, env)
            pool._key = key
        pool._holds += 1
        return pool


@atexit.register
def _shutdown_all() -> None:
    # The interpreter is exiting: running tasks cannot report to anyone any more.
    for pool in list(_pools.values()):
        pool.shutdown(kill_running=True)
    _discard_spares()


# Pre-warmed workers: runtime processes started ahead of need by ``prewarm`` (the notebook
# extension calls it when it loads), one per worker of the pool to come, that have paid
# for their interpreter and imports and wait for their first event. A pool (or a slot
# replacing a killed worker) with the same environment and directory takes them instead of
# waiting for fresh ones. They have run nothing, so each one's first invocation is still a
# cold start of a fresh process. Only on request: a shut-down executor leaves nothing running.
_spares: list[RuntimeProcess] = []
_spares_key: tuple[Any, ...] | None = None  # the environment and directory they were made for
_spares_wanted: tuple[dict[str, str], str, int] | None = None
_spare_cond = threading.Condition()
_spawner: threading.Thread | None = None


def _forget_after_fork() -> None:
    """In a child forked from the host (``multiprocessing``'s fork, ``os.fork``): the pools,
    spares and spawner are the parent's. Their threads did not survive the fork, so a pool
    taken here would never run an event, and at exit the child would kill the parent's
    workers. The child starts with none; the parent's processes are left alone."""
    global _pools_lock, _spare_cond, _spawner, _spares_key, _spares_wanted
    _pools.clear()
    _pools_lock = threading.Lock()  # another thread may have held them at the fork
    _spare_cond = threading.Condition()
    _spares.clear()
    _spawner = _spares_key = _spares_wanted = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _process_key(env: dict[str, str], cwd: str) -> tuple[Any, ...]:
    return (tuple(sorted(env.items())), cwd)


def _take_spare(env: dict[str, str], cwd: str) -> RuntimeProcess | None:
    """A pre-warmed worker for ``env`` and ``cwd``, or None. Those made for another
    environment (new credentials, paths) are of no use: they are killed."""
    useless: list[RuntimeProcess] = []
    proc = None
    with _spare_cond:
        if _spares and _spares_key != _process_key(env, cwd):
            useless, _spares[:] = list(_spares), []
        while _spares and proc is None:
            proc = _spares.pop(0)
            if proc.popen.poll() is not None:
                useless.append(proc)
                proc = None
    for p in useless:
        p.kill()
    return proc


def _make_spares(env: dict[str, str], cwd: str, count: int) -> None:
    """Have ``count`` pre-warmed workers for ``env`` and ``cwd`` started, less those that
    wait already. One long-lived thread starts them: a worker dies with the thread that
    started it (``PR_SET_PDEATHSIG``), and they outlive the caller that asked for them."""
    global _spares_wanted, _spawner
    with _spare_cond:
        if _spares_key == _process_key(env, cwd) and len(_spares) >= count:
            return
        _spares_wanted = (env, cwd, count)
        if _spawner is None:
            _spawner = start_thread(_spawn_spares, name="cloudbutton-local-prewarm")
        _spare_cond.notify()


def _spawn_spares() -> None:
    global _spares_key, _spares_wanted
    while True:
        with _spare_cond:
            while _spares_wanted is None:
                _spare_cond.wait()
            env, cwd, count = _spares_wanted
            _spares_wanted = None
            key = _process_key(env, cwd)
            useless: list[RuntimeProcess] = []
            if _spares_key != key:
                useless, _spares[:] = list(_spares), []
                _spares_key = key
            missing = count - len(_spares)
        for p in useless:
            p.kill()
        for _ in range(missing):
            try:
                proc = _new_process(env, cwd, spare=False)
            except OSError:
                log.warning("could not start a pre-warmed local worker", exc_info=True)
                break
            with _spare_cond:
                if _spares_key == key and _spares_wanted is None:
                    _spares.append(proc)  # takeable at once, while the next one starts
                    continue
            proc.kill()  # asked for another environment, or discarded, meanwhile
            break


def _discard_spares() -> None:
    global _spares_wanted
    with _spare_cond:
        useless, _spares[:], _spares_wanted = list(_spares), [], None
    for p in useless:
        p.kill()


def prewarm(workers: int | None = None) -> None:
    """Start the workers of the next local pool of ``workers`` (default: one per CPU)
    ahead of it, so its first results do not wait for interpreters to start and import.
    The notebook extension calls it when it loads; what waits already is not started
    again. The workers and one idle thread stay until a pool takes the workers or the
    process ends."""
    workers = int(workers or os.cpu_count() or 1)
    env = _worker_env(workers)
    _make_spares(env, _worker_cwd(env), workers)


# How long a warm worker trusts that the job it last found not cancelled still is not: no
# longer than the host takes to look at the marker itself (dispatch.CANCEL_CHECK_INTERVAL_S)
# and end the job's running tasks by killing their workers. At thousands of tasks a second
# it saves all but one look (a stat) in hundreds.
CANCEL_CHECK_TTL_S = 0.5

# How long an idle slot lets its starting worker get ready before taking events anyway.
_READY_WAIT_S = 10.0

WORKER_ENV = "CLOUDBUTTON_WORKER_ENV"  # comma-separated names of host variables workers get


def _worker_env(workers: int) -> dict[str, str]:
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    # CLOUDBUTTON_WORKER_ENV names more variables to pass: the local stand-in for a Lambda
    # function's own environment variables (also how a test harness reaches the workers).
    extra = {n.strip() for n in os.environ.get(WORKER_ENV, "").split(",")} - {""}
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "LC_ALL", "LD_LIBRARY_PATH", "TZ", "SYSTEMROOT", "TMPDIR")
           or k.startswith("AWS_") or k in extra}  # AWS_*: the stand-in for an execution role
    env.update({
        "PYTHONPATH": pkg_parent,
        "PYTHONUNBUFFERED": "1",
        "CLOUDBUTTON_WORKER": "local",
        # One BLAS/OpenMP pool per worker, sized so workers don't oversubscribe cores.
        "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
        "NUMEXPR_NUM_THREADS": threads, "VECLIB_MAXIMUM_THREADS": threads,
    })
    return env


_log_file: IO[bytes] | None = None


def worker_log_path() -> str:
    """Where local workers' own output goes: the local stand-in for Lambda's CloudWatch logs.
    (Tasks' prints are captured per task into their stats; echoing them into the
    kernel's stderr as well would show every line twice in the notebook.)"""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"cloudbutton-workers-{os.getpid()}.log")


def _worker_log() -> IO[bytes]:
    global _log_file
    if _log_file is None or _log_file.closed:
        _log_file = open(worker_log_path(), "ab", buffering=0)  # noqa: SIM115 - open for the process's life
    return _log_file


def _worker_cwd(env: dict[str, str]) -> str:
    cwd = env.get("HOME") or "/"
    return cwd if os.path.isdir(cwd) else "/"


def _new_process(env: dict[str, str], cwd: str, spare: bool = True) -> RuntimeProcess:
    """A runtime process for ``env`` and ``cwd``: the pre-warmed one if it fits (``spare``),
    else a new one."""
    if spare:
        proc = _take_spare(env, cwd)
        if proc is not None:
            return proc
    return RuntimeProcess([sys.executable, "-s", "-c",
                           "from cloudbutton_executor.local_runtime import main; main()"],
                          env=env, cwd=cwd, stderr=_worker_log())


class LocalBackend(Backend):
    name = "local"

    def __init__(self, workers: int, env: dict[str, str] | None = None):
        self.workers = workers
        self._limits = BackendLimits(
            concurrency=workers, max_timeout_s=None, payload_limit_bytes=None, max_inflight=None,
            can_stop_running=True, calls_back=True, poll_interval_s=None,
            deadline_grace_s=None,  # each slot kills its worker at the timeout and says so
            lost_after_s=None, redeliveries=0, reports_accepted=False,
            default_memory_mb=2048, auto_batch_target_s=0.05, reads_host_files=True,
            live_stdout_s=0.5)  # + a 0.25 s tick: printed lines show within about a second
        self.closed = False
        self._queue: collections.deque[tuple[Event, InvocationListener]] = collections.deque()
        self._cond = threading.Condition()
        self._running: dict[int, tuple[Event, RuntimeProcess]] = {}  # slot -> (event, process)
        self._killed: set[int] = set()
        # An event a slot took from the queue and has not yet marked running: a cancel in
        # between finds it here (it is in neither the queue nor _running) and withdraws it.
        self._claimed: dict[int, Event] = {}  # slot -> event
        self._withdrawn: set[int] = set()     # slots whose claimed event must not be sent
        self._env = env or _worker_env(workers)
        self._cwd = _worker_cwd(self._env)
        self._key: tuple[Any, ...] = ()  # its key in the process-wide _pools
        self._holds = 0  # executors holding it (see get_local_backend)
        self._threads = [start_thread(self._slot, i, name=f"cloudbutton-local-{i}")
                         for i in range(workers)]

    @property
    def limits(self) -> BackendLimits:
        return self._limits

    # Invocation -------------------------------------------------------------
    def invoke(self, events: list[Event], listener: InvocationListener) -> None:
        with self._cond:
            if self.closed:
                raise RuntimeError("the local backend has been shut down")
            for e in events:
                if e.get("backup"):
                    # A backup races a straggler: behind the queue it could not win.
                    self._queue.appendleft((e, listener))
                else:
                    self._queue.append((e, listener))
            self._cond.notify(len(events))

    def cancel_job(self, job_id: str) -> None:
        """Drop the job's queued events and kill its running workers."""
        def its(event: dict[str, Any]) -> bool:
            return bool(event["job_id"] == job_id)

        with self._cond:
            self._queue = collections.deque(x for x in self._queue if not its(x[0]))
            self._withdraw_claimed(its)
            self._kill_running(its)

    def stop_task(self, job_id: str, task: str) -> bool:
        """Drop the task's queued events and kill the workers running it (a backup race
        was won: the other attempts are losers)."""
        def its(event: dict[str, Any]) -> bool:
            return bool(event["job_id"] == job_id and event["task"] == task)

        with self._cond:
            self._queue = collections.deque(x for x in self._queue if not its(x[0]))
            self._withdraw_claimed(its)
            self._kill_running(its)
        return True

    def _withdraw_claimed(self, which: Callable[[dict[str, Any]], bool]) -> None:
        """Events taken from the queue but not yet marked running, for which ``which(event)``
        holds, are dropped like queued ones (lock held): their slots never send them."""
        for slot, event in self._claimed.items():
            if which(event):
                self._withdrawn.add(slot)

    def _kill_running(self, which: Callable[[dict[str, Any]], bool]) -> None:
        """Kill the workers running an event for which ``which(event)`` holds (lock held);
        their processes are never handed another event."""
        for slot, (event, proc) in list(self._running.items()):
            if which(event):
                self._killed.add(slot)
                proc.doomed = True
                try:
                    proc.popen.kill()
                except ProcessLookupError:
                    pass

    def release(self, wait: bool = True) -> None:
        """Give back one hold; the last one shuts the pool down (and, with ``wait``,
        joins its threads and worker processes)."""
        with _pools_lock:
            self._holds -= 1
            if self._holds > 0:
                return
            if _pools.get(self._key) is self:
                del _pools[self._key]
        self.shutdown(wait=wait)

    def shutdown(self, wait: bool = False, kill_running: bool = False) -> None:
        """Take no more events: queued ones end as lost, running ones finish (or are killed,
        with ``kill_running``), idle workers exit (their stdin closes). ``wait``: return
        once every slot thread (and so its process) has ended."""
        with self._cond:
            self.closed = True
            dropped = list(self._queue)
            self._queue.clear()
            if kill_running:
                self._kill_running(lambda event: True)
            self._cond.notify_all()
        for event, listener in dropped:  # never sent to a worker: lost, not left hanging
            try:
                listener.on_lost(event, LostInvocationError(
                    f"task {event['task']}: the local backend was shut down before running it",
                    event["task"]))
            except Exception:
                log.exception("a listener failed on a lost event of job %s", event.get("job_id"))
        if wait:
            self.join()

    def join(self) -> None:
        """After shutdown: wait until every slot thread (and so its process) has ended.
        A pool still held by another executor is not shut down: nothing to wait for."""
        if not self.closed:
            return
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join()

    def status(self) -> dict[str, Any]:
        return {"backend": "local", "workers": self.workers, "ok": not self.closed}

    # One slot = one concurrent worker --------------------------------------
    def _next(self, slot: int, block: bool) -> tuple[Event, InvocationListener] | None:
        """The next queued (event, listener), claimed by ``slot`` until ``_begin``; or None
        (closed, or empty and not blocking)."""
        with self._cond:
            while block and not self._queue and not self.closed:
                self._cond.wait(timeout=60)
                if not self._queue:
                    return None  # let the slot check idleness
            if self.closed or not self._queue:
                return None
            item = self._queue.popleft()
            self._claimed[slot] = item[0]
            self._withdrawn.discard(slot)
            return item

    def _begin(self, slot: int, item: tuple[Event, InvocationListener],
               proc: RuntimeProcess) -> tuple[RuntimeProcess, bool]:
        """Mark ``item`` (claimed by ``_next``) running on ``proc`` and send it; a process
        found dead before the event reached it is replaced (the event is not lost). False:
        a cancel withdrew the event after ``_next`` took it, and it was not sent."""
        event, listener = item
        with self._cond:
            # Claimed to running in one step under the lock: a cancel sees it in one or
            # the other, never in neither.
            self._claimed.pop(slot, None)
            if slot in self._withdrawn:
                self._withdrawn.discard(slot)
                return proc, False
            # A cancel may have killed this process just after it answered its last
            # event: it must not take this one (another job's, perhaps) down with it.
            doomed = proc.doomed
            if not doomed:
                self._running[slot] = (event, proc)
                self._killed.discard(slot)
        if doomed:
            proc.kill()
            proc = _new_process(self._env, self._cwd)
            with self._cond:
                self._running[slot] = (event, proc)
                self._killed.discard(slot)
        try:
            listener.on_start(event)
        except Exception:  # a listener bug must not kill the slot
            log.exception("local backend slot %d: the listener failed on a started event", slot)
        # A warm worker may trust its last look at the job's cancel marker for a moment (as
        # on Lambda): the host itself drops a cancelled job's events and kills its running
        # workers, so the look per task (a stat) only guards that short window.
        sent = dict(event, cancel_check_ttl=CANCEL_CHECK_TTL_S)
        try:
            proc.send(sent)
        except (BrokenPipeError, OSError):
            proc.kill()
            proc = _new_process(self._env, self._cwd)
            with self._cond:
                self._running[slot] = (event, proc)
            try:
                proc.send(sent)
            except (BrokenPipeError, OSError):
                pass  # a fresh process that cannot take one event: recv() reports it
        return proc, True

    def _slot(self, slot: int) -> None:
        proc: RuntimeProcess | None = None
        try:
            # Pre-warmed: the runtime starts (interpreter, imports) while the host is still
            # submitting the first job, not after it; its first invocation is still cold.
            proc = _new_process(self._env, self._cwd)
        except OSError:
            log.exception("local backend slot %d: could not start a worker yet", slot)
        idle_since = time.time()
        sent: tuple[Event, InvocationListener, float] | None = None  # written to proc already
        while True:
            if sent is None:
                if proc is not None and not proc.ready:
                    # An event goes to a started worker first (a pre-warmed one, a warm
                    # one): taken by one still starting, it would wait for it.
                    proc.wait_ready(timeout=_READY_WAIT_S)
                item = self._next(slot, block=True)
                if item is None:
                    if self.closed:
                        if proc is not None:
                            proc.close()
                        return
                    if proc is not None and time.time() - idle_since > 600:
                        proc.close()  # reclaim an idle warm worker, like Lambda does
                        proc = None
                    continue
                event, listener = item
                if proc is None:
                    proc = _new_process(self._env, self._cwd)
                timeout = float(event.get("timeout") or 900)
                proc, begun = self._begin(slot, item, proc)
                if not begun:
                    continue  # withdrawn by a cancel
                sent = (event, listener, time.time() + timeout)
            event, listener, deadline = sent
            sent = None
            assert proc is not None  # the event was written to it
            try:
                try:
                    response = proc.recv(deadline)
                except TimeoutError:
                    proc.kill()
                    proc = None
                    timeout = float(event.get("timeout") or 900)
                    listener.on_failure(event, TaskTimeoutError(
                        f"task {event['task']} exceeded its timeout of {timeout:g} s and was killed",
                        event["task"]))
                    continue
                except OSError:
                    response = None
                if response is None:
                    peak_mb = proc.peak_rss_mb
                    code = proc.kill()
                    proc = None
                    with self._cond:
                        cancelled = slot in self._killed
                    listener.on_failure(event, WorkerDiedError(
                        "job cancelled: worker killed" if cancelled else
                        f"task {event['task']}: "
                        f"{local_runtime.describe_exit(code, peak_mb, event.get('memory_mb'))}",
                        event["task"]))
                    continue
                # Pipelining: the worker is free, so hand it the next queued event
                # before this response is processed (the host's share of a task
                # then overlaps the worker's next one instead of idling it).
                nxt = self._next(slot, block=False)
                if nxt is not None:
                    t_next = float(nxt[0].get("timeout") or 900)
                    try:
                        proc, begun = self._begin(slot, nxt, proc)
                        if begun:  # else withdrawn by a cancel: the finally frees the slot
                            sent = (nxt[0], nxt[1], time.time() + t_next)
                    except Exception:  # e.g. no process could be started: requeue it
                        with self._cond:
                            self._queue.appendleft(nxt)
                            self._running.pop(slot, None)
                        proc = None
                else:
                    with self._cond:
                        self._running.pop(slot, None)
                if response.get("state") == "handler_error":
                    listener.on_failure(event, WorkerDiedError(
                        f"task {event['task']}: worker handler failed: {response.get('error')}",
                        event["task"]))
                else:
                    listener.on_done(event, response)
            except Exception:  # a listener bug must not kill the slot
                log.exception("local backend slot %d: the listener failed on an ended event", slot)
            finally:
                if sent is None:
                    with self._cond:
                        self._running.pop(slot, None)
                        self._killed.discard(slot)
                idle_since = time.time()
