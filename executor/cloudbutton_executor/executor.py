"""The user-facing API, in the vocabulary of ``concurrent.futures``."""
from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time
import weakref

from . import job_modules, protocol, serialize
from .backends import get_backend
from .futures import ALL_COMPLETED, as_completed, get_result, wait
from .job import Job, _gc_paused
from .storage import LocalStorage, NotFound, Storage

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_MB = {"local": 2048, "lambda": 1024}
# Target duration of one auto-sized batch: enough to amortise the invocation overhead.
DEFAULT_AUTO_TARGET_S = {"local": 0.05, "lambda": 1.0}


def _as_call(item, extra_args):
    """iterdata element -> (args, kwargs): tuples are positional args, dicts kwargs."""
    if isinstance(item, dict):
        args, kwargs = (), dict(item)
    elif isinstance(item, tuple):
        args, kwargs = item, {}
    else:
        args, kwargs = (item,), {}
    if extra_args is not None:
        if isinstance(extra_args, dict):
            kwargs = {**kwargs, **extra_args}
        else:
            args = args + tuple(extra_args)
    return args, kwargs


def _check_iterdata(iterdata) -> list:
    if isinstance(iterdata, (str, bytes)):
        raise TypeError(f"iterdata must be an iterable of task inputs, got a {type(iterdata).__name__}; "
                        "wrap a single input in a list: [value]")
    try:
        return list(iterdata)
    except TypeError:
        raise TypeError(f"iterdata must be an iterable of task inputs (list, range, generator...), "
                        f"got {type(iterdata).__name__!s}") from None


def _check_chunksize(chunksize):
    if chunksize == "auto":
        return chunksize
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be a positive integer or 'auto', got {chunksize!r}")
    return chunksize


def _positive(name, value, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


class Executor:
    """Runs functions on stateless workers: ``local`` processes (default) or AWS ``lambda``.

    >>> with Executor() as ex:
    ...     ex.map(lambda x: x + 1, range(10)).result()
    """

    def __init__(self, backend: str = "local", *, workers: int | None = None,
                 storage: Storage | None = None, prefix: str | None = None,
                 timeout: float | None = None, memory_mb: int | None = None, retries: int = 0,
                 auto_batch_target_s: float | None = None, **backend_options):
        if backend not in ("local", "lambda"):
            raise ValueError(f"unknown backend {backend!r}: choose 'local' or 'lambda'")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.backend_name = backend
        # Lambda: None means the deployed Timeout (read at submit, see _submit_blob).
        self.timeout = _positive("timeout", timeout) or (None if backend == "lambda" else DEFAULT_TIMEOUT_S)
        # Lambda: None means the deployed MemorySize (read at submit, see _submit_blob).
        self.memory_mb = _positive("memory_mb", memory_mb) or \
            (None if backend == "lambda" else DEFAULT_MEMORY_MB[backend])
        self.retries = int(retries)
        self.auto_batch_target_s = _positive("auto_batch_target_s", auto_batch_target_s) \
            or DEFAULT_AUTO_TARGET_S[backend]
        if backend == "local":
            self.storage = storage or LocalStorage()
            self.backend = get_backend("local", workers=workers)
        else:
            self.backend = get_backend("lambda", workers=workers, storage=storage, **backend_options)
            self.storage = self.backend.storage
        # Lambda's IAM policy only grants its configured prefix: default to it.
        prefix = prefix if prefix is not None else getattr(self.backend, "prefix", None)
        self.prefix = (prefix or "cloudbutton").strip("/") or "cloudbutton"
        self.concurrency = self.backend.workers
        self._uploaded: set[str] = set()
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._closed = False

    # concurrent.futures-style context management ----------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        for job in list(self._jobs):
            if cancel_futures:
                job.cancel()
            elif wait:
                job.wait()

    # Submission -------------------------------------------------------------
    def map(self, fn, iterdata, *, extra_args=None, chunksize=1, timeout=None, retries=None,
            memory_mb=None, label=None) -> Job:
        """Run ``fn`` once per element of ``iterdata``; returns a ``Job`` of futures in input order.

        Elements may be scalars (``fn(x)``), tuples (``fn(*t)``) or dicts (``fn(**d)``);
        ``extra_args`` (tuple or dict) is appended to every call.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable first argument, got {type(fn).__name__}")
        with _gc_paused():  # bulk allocation: see job._gc_paused
            items = _check_iterdata(iterdata)
            payloads = serialize.dumps_scalar_calls(items) if extra_args is None else None
            calls = None if payloads is not None else [_as_call(x, extra_args) for x in items]
        return self._submit(fn, calls, payloads=payloads, chunksize=_check_chunksize(chunksize),
                            timeout=timeout, retries=retries, memory_mb=memory_mb, label=label)

    def call_async(self, fn, *args, **kwargs) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` once; returns its future."""
        if not callable(fn):
            raise TypeError(f"call_async() needs a callable, got {type(fn).__name__}")
        return self._submit(fn, [(args, kwargs)], chunksize=1)[0]

    def map_reduce(self, map_fn, iterdata, reduce_fn, **map_options) -> cf.Future:
        """Map, then run ``reduce_fn(list_of_results)`` remotely on the stored results.

        Returns the reduce task's future; it fails with the first map failure.
        """
        if not callable(reduce_fn):
            raise TypeError(f"map_reduce() needs a callable reduce_fn, got {type(reduce_fn).__name__}")
        map_job = self.map(map_fn, iterdata, **map_options)
        reduce_blob, reduce_modules = job_modules.dumps_with_modules(
            reduce_fn, f"reduce function {getattr(reduce_fn, '__name__', '')}")
        outer: cf.Future = cf.Future()

        def run_reduce():
            try:
                map_job.result()
            except BaseException as exc:  # the first failed (or cancelled) item
                outer.set_exception(exc)
                return
            tasks = map_job.task_ids()
            try:
                job = self._submit_blob(reduce_blob, getattr(reduce_fn, "__name__", "reduce"),
                                        [b""], chunksize=1, modules=reduce_modules,
                                        reduce={"job_id": map_job.job_id, "tasks": tasks})
                job[0].add_done_callback(lambda f: _chain(f, outer))
            except BaseException as exc:  # storage errors must reach the caller
                outer.set_exception(exc)

        if not len(map_job):
            self._submit_blob(reduce_blob, "reduce", [serialize.dumps((([],), {}), "reduce input")],
                              chunksize=1, modules=reduce_modules)[0].add_done_callback(lambda f: _chain(f, outer))
        else:
            threading.Thread(target=run_reduce, daemon=True, name="cloudbutton-reduce").start()
        outer.map_job = map_job
        return outer

    def _submit(self, fn, calls, *, payloads=None, chunksize, timeout=None, retries=None,
                memory_mb=None, label=None):
        """Submit ``calls`` ((args, kwargs) each), or their ``payloads`` if already pickled."""
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        blob, modules = job_modules.dumps_with_modules(fn, f"function {name}")
        if payloads is None:
            payloads = [serialize.dumps(call, f"iterdata[{i}]") for i, call in enumerate(calls)] \
                if len(calls) < 64 else self._dumps_many(calls)
        return self._submit_blob(blob, name, payloads, chunksize=chunksize, timeout=timeout,
                                 retries=retries, memory_mb=memory_mb, label=label, modules=modules)

    @staticmethod
    def _dumps_many(calls) -> list[bytes]:
        # One pickling pass for many inputs; on failure find and name the culprit.
        try:
            return serialize.dumps_each(calls)
        except serialize.SerializationError:
            for i, call in enumerate(calls):
                serialize.dumps(call, f"iterdata[{i}]")
            raise

    def _submit_blob(self, blob, name, payloads, *, chunksize, timeout=None, retries=None,
                     memory_mb=None, label=None, reduce=None, modules=()) -> Job:
        timeout = _positive("timeout", timeout) or self.timeout
        memory_mb = _positive("memory_mb", memory_mb) or self.memory_mb
        # Pre-flight: refuse (before anything is uploaded) what the backend cannot run as asked.
        if hasattr(self.backend, "check_job"):
            fit = self.backend.check_job(modules=modules, memory_mb=memory_mb, timeout=timeout)
            memory_mb, timeout = fit["memory_mb"], fit["timeout"]
        elif hasattr(self.backend, "check_ready"):
            self.backend.check_ready()
        fkey = protocol.function_key(self.prefix, serialize.digest(blob))
        if fkey not in self._uploaded:
            if not self.storage.exists(fkey):
                self.storage.put(fkey, blob)
            self._uploaded.add(fkey)
        job = Job(job_id=protocol.new_job_id(), backend=self.backend, storage=self.storage,
                  prefix=self.prefix, function_key=fkey, function_name=name, payloads=payloads,
                  chunksize=chunksize,
                  timeout=timeout,
                  retries=self.retries if retries is None else int(retries),
                  memory_mb=memory_mb,
                  auto_target_s=self.auto_batch_target_s, concurrency=self.concurrency,
                  label=label, reduce=reduce)
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.done()] + [job]
        if payloads:
            job._start()
            self._ensure_monitor()
        return job

    # Waiting ----------------------------------------------------------------
    def wait(self, fs, return_when=ALL_COMPLETED, timeout=None):
        return wait(fs, return_when=return_when, timeout=timeout)

    def as_completed(self, fs, timeout=None):
        return as_completed(fs, timeout=timeout)

    def get_result(self, fs, timeout=None):
        return get_result(fs, timeout=timeout)

    # Jobs in storage ----------------------------------------------------------
    def jobs(self, limit: int = 20) -> list[dict]:
        """Manifests of recent jobs in this storage, newest first."""
        return list_jobs(self.storage, self.prefix, limit)

    def attach(self, job_id: str) -> Job:
        """Re-attach to a job from its manifest (e.g. after a kernel restart).

        Tasks already stored are collected without re-running anything; the
        rest finish as their statuses appear, or as lost once their deadline passed.
        """
        if not protocol.JOB_ID_RE.match(job_id or ""):
            raise ValueError(f"not a job id: {job_id!r}")
        try:
            manifest = json.loads(self.storage.get(protocol.manifest_key(self.prefix, job_id)))
        except NotFound:
            raise KeyError(f"no job {job_id} in {self.storage.describe()}") from None
        job = Job(job_id=job_id, backend=self.backend, storage=self.storage, prefix=self.prefix,
                  function_key=manifest["function_key"], function_name=manifest["function"],
                  payloads=[b""] * manifest["n_items"], chunksize=manifest["chunksize"],
                  timeout=manifest["timeout"], retries=0, memory_mb=manifest["memory_mb"],
                  auto_target_s=self.auto_batch_target_s, concurrency=self.concurrency,
                  label=manifest.get("label"))
        job.created = manifest["created"]
        job.attach_existing(deadline=manifest["created"] + manifest["timeout"] * manifest["n_items"] + 60)
        with self._lock:
            self._jobs.append(job)
        self._ensure_monitor()
        return job

    # Monitoring: cancel markers (the panel), storage polling, deadlines -------
    def _ensure_monitor(self):
        with self._lock:
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = threading.Thread(target=_monitor_loop, args=(weakref.ref(self),),
                                                 daemon=True, name="cloudbutton-monitor")
                self._monitor.start()


_MONITOR_LINGER_S = 5.0  # an idle monitor waits this long for the next job before exiting


def _monitor_loop(ref):
    last_cancel_check = 0.0
    idle_since = None
    while True:
        ex = ref()
        if ex is None:
            return
        jobs = [j for j in ex._jobs if not j.done()]
        poll = getattr(ex.backend, "poll_interval", None)
        now = time.time()
        if not jobs:
            # Linger: starting a thread per map() costs a GIL hand-off that can take
            # milliseconds while the backend's threads are busy.
            idle_since = idle_since or now
            if now - idle_since > _MONITOR_LINGER_S:
                with ex._lock:
                    if all(j.done() for j in ex._jobs):
                        ex._monitor = None  # decided under the lock _ensure_monitor takes
                        return
            del ex
            time.sleep(poll or 0.25)
            continue
        idle_since = None
        del ex
        check_cancel = now - last_cancel_check > 0.5
        if check_cancel:
            last_cancel_check = now
        for job in jobs:
            try:
                if check_cancel and job.check_cancel_marker():
                    continue
                if poll or job.attached:
                    job.poll_storage()
                job.check_deadlines()
            except Exception as exc:  # keep monitoring the other jobs
                job.monitor_error = exc
        time.sleep(poll or 0.25)


def _chain(src: cf.Future, dst: cf.Future) -> None:
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


def list_jobs(storage, prefix: str, limit: int = 20) -> list[dict]:
    ids = [j for j in storage.children(f"{prefix}/jobs/") if protocol.JOB_ID_RE.match(j)]
    ids.sort(reverse=True)  # job ids start with their UTC creation time
    out = []
    for job_id in ids[:limit]:
        try:
            out.append(json.loads(storage.get(protocol.manifest_key(prefix, job_id))))
        except (NotFound, ValueError):
            continue
    return out
