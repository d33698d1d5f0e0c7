"""The user-facing API, in the vocabulary of ``concurrent.futures``."""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator
from types import TracebackType
from typing import Any

from . import (cache, catalog, cleanup, config, datamap, integrity, job_modules, largevalues,
               objectstore, protocol, screening, serialize, sharedbuffers, shown_inputs)
from .backends import Backend, create
from .dispatch import JobSpec
from .errors import IntegrityError, JobCancelled
from .futures import ALL_COMPLETED, as_completed, get_result, wait
from .interrupt import cancel_jobs, cancel_on_interrupt, start_thread
from .job import Job, new_job
from .lease import BackendLease
from .outcomes import gc_paused
from .storage import LocalStorage, NotFound, S3Storage, Storage

log = logging.getLogger("cloudbutton.executor")

Call = tuple[tuple[Any, ...], dict[str, Any]]  # one task's (args, kwargs)

# Lithops' backend names for ours.
BACKEND_ALIASES = {"localhost": "local", "aws_lambda": "lambda"}
# Lithops map_reduce() options with no equivalent here, and why.
_UNSUPPORTED_MAP_REDUCE = {
    "spawn_reducer": "the reduce starts once every map task has ended",
    "extra_env": "workers see only their event; pass values as arguments",
    "obj_reduce_by_key": "one reduce over every chunk of every object",
    "include_modules": "local modules travel by value automatically",
    "exclude_modules": "local modules travel by value automatically",
}


def _alias(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    """``value``, or the Lithops-named ``alias_value``; both given is an error."""
    if alias_value is None:
        return value
    if value is not None:
        raise TypeError(f"give {name} or its Lithops name {alias}, not both")
    return alias_value


def _as_call(item: Any, extra_args: tuple[Any, ...] | dict[str, Any] | None) -> Call:
    """iterdata element -> (args, kwargs): tuples are positional args, dicts kwargs."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
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


def _check_iterdata(iterdata: Iterable[Any]) -> list[Any]:
    if isinstance(iterdata, (str, bytes)):
        raise TypeError(f"iterdata must be an iterable of task inputs, got a {type(iterdata).__name__}; "
                        "wrap a single input in a list: [value] (a string that names storage, "
                        "'s3://bucket/prefix/' or a local directory, maps over its objects)")
    try:
        items = iter(iterdata)
    except TypeError:
        raise TypeError(f"iterdata must be an iterable of task inputs (list, range, generator...), "
                        f"got {type(iterdata).__name__!s}") from None
    out: list[Any] = []
    try:
        out.extend(items)
    except Exception as exc:  # a generator that fails midway: its own exception, placed
        if hasattr(exc, "add_note"):
            exc.add_note(f"(raised by iterdata after {len(out)} items; nothing was submitted)")
        raise
    return out


class Executor:
    """Runs functions on stateless workers: ``local`` processes (default), AWS ``lambda``,
    or any ``Backend`` instance.

    >>> with Executor() as ex:
    ...     ex.map(lambda x: x + 1, range(10)).result()
    """

    def __init__(self, backend: str | Backend = "local", *, workers: int | None = None,
                 storage: Storage | None = None, prefix: str | None = None,
                 timeout: float | None = None, memory_mb: int | None = None, retries: int = 0,
                 auto_batch_target_s: float | None = None, runtime_memory: int | None = None,
                 max_workers: int | None = None, cache: bool | None = None,
                 budget: float | None = None, backups: bool | None = None,
                 **backend_options: Any):
        where = "Executor(): "
        if isinstance(backend, str):
            backend = BACKEND_ALIASES.get(backend, backend)
        memory_mb = _alias("memory_mb", memory_mb, "runtime_memory", runtime_memory)
        workers = _alias("workers", workers, "max_workers", max_workers)
        if storage is not None and not isinstance(storage, Storage):
            raise TypeError(f"{where}storage must be a Storage object (LocalStorage, S3Storage), "
                            f"got {type(storage).__name__} {storage!r}")
        self.backend: Backend
        if isinstance(backend, Backend):
            if workers is not None or backend_options:
                raise TypeError("workers and backend options configure a backend made by name; "
                                f"this {backend.name} backend is made already")
            self.backend = backend
        elif isinstance(backend, str):
            config.check("backend", backend, where)
            config.check("workers", workers, where)
            if backend == "lambda":
                self.backend = create("lambda", workers=workers, storage=storage, **backend_options)
            else:
                if backend_options:
                    raise TypeError(f"unknown option(s) for the local backend: "
                                    f"{', '.join(sorted(backend_options))}")
                self.backend = create(backend, workers=workers)
        else:
            raise TypeError(f"backend must be a name ('local' or 'lambda') or a Backend, "
                            f"got {type(backend).__name__}")
        self.backend_name = self.backend.name
        limits = self.backend.limits
        # None: what the backend runs by default (Lambda: the deployed timeout and memory),
        # decided by its check_job at each submission.
        self.timeout: float | None = config.check("timeout", timeout, where)
        self.memory_mb: int | None = config.check("memory_mb", memory_mb, where)
        self.retries = config.check("retries", retries, where)
        self.auto_batch_target_s = config.check("auto_batch_target_s", auto_batch_target_s,
                                                where) or limits.auto_batch_target_s
        # Policies: the argument, else the config file's or environment's run default.
        defaults = config.saved_run_defaults() if None in (cache, budget, backups) else {}
        self.cache: bool = config.check("cache", cache if cache is not None
                                        else defaults.get("cache", False), where)
        self.backups: bool = config.check("backups", backups if backups is not None
                                          else defaults.get("backups", True), where)
        budget = config.check("budget", budget if budget is not None
                              else defaults.get("budget"), where)
        if budget is None and self.backend.name == "lambda":
            budget = getattr(getattr(self.backend, "cfg", None), "lambda_", config.LambdaConfig()).budget
        self.budget: float | None = budget
        # A backend whose workers reach one storage (Lambda: its bucket) decides it.
        self.storage = self.backend.storage or storage or LocalStorage()
        # Lambda's IAM policy only grants its configured prefix: default to it.
        prefix = prefix if prefix is not None else self.backend.prefix
        if isinstance(prefix, str):
            prefix = prefix.strip("/") or None
        self.prefix: str = config.check("prefix", prefix or "cloudbutton", where)
        self.concurrency = limits.concurrency
        # Function blobs this executor stored or refreshed, and when (time.monotonic()).
        self._uploaded: dict[str, float] = {}
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._closed = False
        self._uncollected: list[tuple[Any, bool]] = []  # (job or future, single call): get_result()
        self._reduces: list[cf.Future[Any]] = []
        # The backend lives while this executor or one of its jobs needs it (see lease.py).
        self._lease = BackendLease(self.backend, owned=isinstance(backend, str))
        weakref.finalize(self, self._lease.drop_owner)

    # concurrent.futures-style context management ----------------------------
    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, JobCancelled):
            # Ctrl-C anywhere in the block: cancel what runs, say so in one line.
            cancelled = cancel_jobs(list(self._jobs))
            self.shutdown(wait=False, cancel_futures=True)
            if cancelled is not None:
                raise cancelled from None
            return
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work. ``cancel_futures``: cancel every unfinished job (queued items and
        running workers alike). ``wait``: return once every job has ended and the
        backend's threads and processes are gone; else they go when the jobs end."""
        self._closed = True
        jobs = list(self._jobs)
        if cancel_futures:
            # Newest first: a cancel kills the job's running workers, and a worker freed
            # that way would start the next queued job's task before its own cancel came.
            for job in reversed(jobs):
                job.cancel()
        if wait:
            for job in jobs:
                job.wait()
            cf.wait(list(self._reduces))
            for job in jobs:
                self._lease.job_ended(job)  # don't leave it to the job's listener thread
        monitor = self._monitor
        if wait and monitor is not None and monitor is not threading.current_thread():
            monitor.join()
        self._lease.drop_owner(wait=wait)

    # Submission -------------------------------------------------------------
    def map(self, fn: Callable[..., Any], iterdata: Iterable[Any], *,
            extra_args: tuple[Any, ...] | dict[str, Any] | None = None,
            chunksize: int | str | None = 1, timeout: float | None = None, retries: int | None = None,
            memory_mb: int | None = None, label: str | None = None,
            runtime_memory: int | None = None, cache: bool | None = None,
            budget: float | None = None, backups: bool | None = None,
            obj_chunk_size: int | None = None, obj_chunk_number: int | None = None,
            obj_newline: str | None = "\n") -> Job:
        """Run ``fn`` once per element of ``iterdata``; returns a ``Job`` of futures in input order.

        Elements may be scalars (``fn(x)``), tuples (``fn(*t)``) or dicts (``fn(**d)``);
        ``extra_args`` (tuple or dict) is appended to every call. ``runtime_memory`` is
        Lithops' name for ``memory_mb``; ``chunksize=None`` (Lithops' default) means 1.
        ``cache``: reuse results stored by earlier runs of the same code on the same items
        (see ``cache.py``); ``budget``: USD the job may cost, it stops once its projected
        total would pass it; ``backups``: backup invocations for slow tasks. Each defaults
        to the executor's setting.

        A data-driven map: ``iterdata`` a storage location (``"s3://bucket/prefix/"``, a
        key, a glob; on the local backend a directory or glob), or for a function with
        an ``obj`` parameter a list of them, runs ``fn`` once per object, or per chunk of
        ``obj_chunk_size`` bytes / ``obj_chunk_number`` chunks of each object, split at
        ``obj_newline`` (None: exact byte ranges). See ``datamap``.
        """
        memory_mb = _alias("memory_mb", memory_mb, "runtime_memory", runtime_memory)
        chunksize = 1 if chunksize is None else chunksize
        if not callable(fn):
            raise TypeError(f"map() needs a callable first argument, got {type(fn).__name__}")
        options = self._job_options(chunksize=chunksize, timeout=timeout, retries=retries,
                                    memory_mb=memory_mb, cache=cache, budget=budget,
                                    backups=backups)
        where = "map(): "
        extra_args = config.check_extra_args(extra_args, where)
        label = config.check("label", label, where)
        inputs = screening.Budget(label="the inputs")
        obj_chunk_size = config.check("obj_chunk_size", obj_chunk_size, where)
        obj_chunk_number = config.check("obj_chunk_number", obj_chunk_number, where)
        listing = None
        shown: list[str] | None = None  # short reprs of the inputs, for the panel
        if datamap.wants_data(fn, iterdata) and (not isinstance(iterdata, str)
                                                 or datamap.is_location(iterdata)):
            listing = self._plan_data(fn, iterdata, obj_chunk_size, obj_chunk_number, obj_newline,
                                      extra_args)
            calls: list[Call] | None = listing.calls
            payloads = None
        else:
            if obj_chunk_size is not None or obj_chunk_number is not None:
                raise TypeError("obj_chunk_size and obj_chunk_number split storage objects: "
                                "iterdata must name them ('s3://bucket/prefix/', a list of "
                                "keys for a function with an 'obj' parameter, a local directory)")
            with gc_paused():  # bulk allocation: see outcomes.gc_paused
                # A numpy array's rows travel as slices of its buffer (no pickle per row).
                payloads = serialize.dumps_array_rows(iterdata) if extra_args is None else None
                calls = None
                shown = None if payloads is None else shown_inputs.reprs(iterdata)
                if payloads is None:
                    items = _check_iterdata(iterdata)
                    shown = shown_inputs.reprs(items)
                    payloads = serialize.dumps_scalar_calls(items, inputs) if extra_args is None else None
                    calls = None if payloads is not None else [_as_call(x, extra_args) for x in items]
        job = self._submit(fn, calls, payloads=payloads, label=label, inputs=inputs,
                           shown=shown, **options)
        if listing is not None:  # the listing is part of what the job cost
            job.dispatcher.storage.add_counts(listing.requests)
        return job

    def _plan_data(self, fn: Callable[..., Any], iterdata: Any, chunk_size: int | None,
                   chunk_number: int | None, newline: str | None,
                   extra_args: tuple[Any, ...] | dict[str, Any] | None) -> datamap.Plan:
        """List what a data-driven map reads, once, here: a location that names nothing is
        an error before anything is uploaded."""
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        return datamap.plan(fn, iterdata, chunk_size=chunk_size, chunk_number=chunk_number,
                            newline=newline, local_files=self.backend.limits.reads_host_files,
                            s3=self.data_service(), lambda_workers=not self.backend.limits.reads_host_files,
                            extra_args=extra_args)

    def object_storage(self) -> objectstore.ObjectStorage:
        """The storage API over this executor's job storage (its S3 bucket, or its local
        directory), as its tasks get it from ``ObjectStorage()``; for ``get_cloudobject``
        of what tasks returned by reference."""
        return objectstore.ObjectStorage.for_job_storage(self.storage, key_prefix=f"{self.prefix}/objects")

    def data_service(self) -> datamap.S3Service:
        """The S3 service data buckets are read from: the job storage's (Lambda: its region,
        endpoint and credentials), else the config file's region, profile and S3 endpoint
        (the host's credentials chain; local workers inherit it)."""
        st = self.storage
        if isinstance(st, S3Storage):
            return datamap.S3Service(region=st.region, endpoint_url=st.endpoint_url,
                                     profile=st.profile, session=st._session)
        cfg = config.load_or_defaults()
        return datamap.S3Service(region=cfg.region, endpoint_url=cfg.endpoints.get("s3"),
                                 profile=cfg.profile)

    def call_async(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn(*args, **kwargs)`` once; returns its future."""
        if not callable(fn):
            raise TypeError(f"call_async() needs a callable, got {type(fn).__name__}")
        return self._submit(fn, [(args, kwargs)], single=True, **self._job_options())[0]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """``concurrent.futures`` name of ``call_async``."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}")
        return self._submit(fn, [(args, kwargs)], single=True, **self._job_options())[0]

    def map_reduce(self, map_fn: Callable[..., Any], iterdata: Iterable[Any],
                   reduce_fn: Callable[[list[Any]], Any], *,
                   extra_args: tuple[Any, ...] | dict[str, Any] | None = None,
                   chunksize: int | str | None = None, timeout: float | None = None,
                   retries: int | None = None, memory_mb: int | None = None,
                   map_runtime_memory: int | None = None, reduce_runtime_memory: int | None = None,
                   label: str | None = None, obj_chunk_size: int | None = None,
                   obj_chunk_number: int | None = None, obj_newline: str | None = "\n",
                   **unsupported: Any) -> MapReduceFuture:
        """Map, then run ``reduce_fn(list_of_results)`` remotely on the stored results.

        Returns the reduce task's future; it fails with the first map failure. Options
        apply to the map (a data-driven one too: ``obj_chunk_size``, ``obj_chunk_number``,
        ``obj_newline``); ``map_runtime_memory``/``reduce_runtime_memory`` (Lithops'
        names) set each phase's memory, ``memory_mb`` both.
        """
        if unsupported:
            raise TypeError("map_reduce() does not take " + "; ".join(
                f"{k} ({_UNSUPPORTED_MAP_REDUCE[k]})" if k in _UNSUPPORTED_MAP_REDUCE else k
                for k in sorted(unsupported)))
        if not callable(reduce_fn):
            raise TypeError(f"map_reduce() needs a callable reduce_fn, got {type(reduce_fn).__name__}")
        map_job = self.map(map_fn, iterdata, extra_args=extra_args, chunksize=chunksize,
                           timeout=timeout, retries=retries, label=label,
                           memory_mb=map_runtime_memory or memory_mb, obj_chunk_size=obj_chunk_size,
                           obj_chunk_number=obj_chunk_number, obj_newline=obj_newline)
        # get_result() collects the reduce's value, not the map's results.
        self._uncollected = [u for u in self._uncollected if u[0] is not map_job]
        reduce_memory = reduce_runtime_memory or memory_mb
        reduce_options = dict(self._job_options(timeout=timeout, memory_mb=reduce_memory), track=False)
        reduce_blob, reduce_modules = job_modules.dumps_with_modules(
            reduce_fn, f"reduce function {getattr(reduce_fn, '__name__', '')}")
        outer = MapReduceFuture(map_job)
        # The reduce is submitted later, from a thread: the backend must outlive a shutdown.
        lease = self._lease
        lease.hold()
        outer.add_done_callback(lambda _f: lease.let_go())
        self._reduces = [f for f in self._reduces if not f.done()] + [outer]
        self._uncollected.append((outer, True))

        def run_reduce() -> None:
            try:
                map_job.result()
            except BaseException as exc:  # the first failed (or cancelled) item
                outer.set_exception(exc)
                return
            tasks = map_job.task_ids()
            try:
                job = self._submit_blob(reduce_blob, getattr(reduce_fn, "__name__", "reduce"),
                                        [b""], reduce={"job_id": map_job.job_id, "tasks": tasks},
                                        modules=reduce_modules, **reduce_options)
                job[0].add_done_callback(lambda f: _chain(f, outer))
            except BaseException as exc:  # storage errors must reach the caller
                outer.set_exception(exc)

        if not len(map_job):
            self._submit_blob(reduce_blob, "reduce", [serialize.dumps((([],), {}), "reduce input")],
                              modules=reduce_modules, **reduce_options
                              )[0].add_done_callback(lambda f: _chain(f, outer))
        else:
            start_thread(run_reduce, name="cloudbutton-reduce")
        return outer

    def _job_options(self, *, chunksize: int | str = 1, timeout: float | None = None,
                     retries: int | None = None, memory_mb: int | None = None,
                     cache: bool | None = None, budget: float | None = None,
                     backups: bool | None = None) -> dict[str, Any]:
        """A job's options, checked (the config schema names a bad one), with the
        executor's defaults for those not given."""
        where = "map(): "
        return {"chunksize": config.check("chunksize", chunksize, where),
                "timeout": config.check("timeout", timeout, where) or self.timeout,
                "retries": self.retries if retries is None else config.check("retries", retries, where),
                "memory_mb": config.check("memory_mb", memory_mb, where) or self.memory_mb,
                "cache": self.cache if cache is None else config.check("cache", cache, where),
                "budget": self.budget if budget is None else config.check("budget", budget, where),
                "backups": self.backups if backups is None else config.check("backups", backups,
                                                                             where)}

    def _submit(self, fn: Callable[..., Any], calls: list[Call] | None, *,
                payloads: list[serialize.Payload] | None = None, label: str | None = None,
                inputs: screening.Budget | None = None, **options: Any) -> Job:
        """Submit ``calls`` ((args, kwargs) each), or their ``payloads`` if already pickled.
        Everything shipped is screened for credentials first (``screening``); what its
        budget could not search is reported."""
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        fn = objectstore.with_storage_argument(fn)  # a ``storage`` parameter gets the task's
        function = screening.Budget(label=f"function {name}")
        inputs = inputs or screening.Budget(label="the inputs")
        large: dict[str, tuple[str, bytes]] = {}
        blob, modules = job_modules.dumps_with_modules(fn, f"function {name}", function, large)
        for what, value in large.values():  # before the blob that names them: stored once each
            ref = largevalues.stash(self.storage, self.prefix, value)
            log.info("%s: %s (%.1f MB) stored apart at %s, loaded once per warm worker",
                     name, what, ref.size / 1e6, ref.key)
        shared = None
        if payloads is None:
            assert calls is not None
            # Local workers map large buffers from the host's memory (no copy through
            # storage); cached items are keyed by their bytes, so those stay in band.
            if (self.backend.limits.reads_host_files and not options["cache"]
                    and sharedbuffers.available()):
                shared = sharedbuffers.HostBuffers()
            with sharedbuffers.collecting(shared):
                payloads = [serialize.dumps(call, f"iterdata[{i}]", inputs)
                            for i, call in enumerate(calls)] \
                    if len(calls) < 64 else self._dumps_many(calls, inputs)
        function.report()
        inputs.report()
        if options["cache"] or (options["budget"] is not None
                                and self.backend.limits.architecture is not None):
            # The key of the cache and of earlier runs' timings (for a billed job's estimate).
            options["identity"] = cache.function_identity(fn, modules)
        job = self._submit_blob(blob, name, payloads, label=label, modules=modules, **options)
        if shared is not None and shared.count:
            job.hold_shared_buffers(shared)
        return job

    @staticmethod
    def _dumps_many(calls: list[Call], budget: screening.Budget) -> list[serialize.Payload]:
        # One pickling pass for many inputs; on failure find and name the culprit.
        try:
            return serialize.dumps_each(calls, budget)
        except serialize.SecretError as err:
            if str(err).startswith("refusing to ship"):
                raise  # it names where already
            for i, call in enumerate(calls):
                serialize.dumps(call, f"iterdata[{i}]")  # names the culprit
            raise
        except serialize.SerializationError:
            for i, call in enumerate(calls):
                serialize.dumps(call, f"iterdata[{i}]")
            raise

    def _submit_blob(self, blob: bytes, name: str, payloads: list[serialize.Payload], *, chunksize: int | str,
                     timeout: float | None, retries: int, memory_mb: int | None,
                     label: str | None = None, reduce: dict[str, Any] | None = None,
                     modules: Collection[str] = (), single: bool = False, track: bool = True,
                     identity: str | None = None, budget: float | None = None,
                     backups: bool = True, cache: bool = False, rerun_of: str | None = None,
                     shown: list[str] | None = None) -> Job:
        # Pre-flight: refuse (before anything is uploaded) what the backend cannot run as
        # asked; it decides the memory and timeout the job runs with.
        fit = self.backend.check_job(modules=modules, memory_mb=memory_mb, timeout=timeout)
        memory_mb, timeout = fit["memory_mb"], fit["timeout"]
        digest = serialize.digest(blob)
        fkey = protocol.function_key(self.prefix, digest)
        refreshed = self._uploaded.get(fkey)
        if refreshed is None:
            # Content-addressed: skip the upload only if what is stored really is this blob
            # (an object planted under its name in advance is replaced; workers check too).
            try:
                stored = integrity.sha256(self.storage.get(fkey)) == digest
            except NotFound:
                stored = False
            if stored:  # an old copy: `cloudbutton clean` keeps what was just refreshed
                cleanup.refresh_or_put(self.storage, fkey, blob)
            else:
                self.storage.put(fkey, blob)
            self._uploaded[fkey] = time.monotonic()
        elif time.monotonic() - refreshed > protocol.CONTENT_REFRESH_S:
            cleanup.refresh_or_put(self.storage, fkey, blob)
            self._uploaded[fkey] = time.monotonic()
        spec = JobSpec(job_id=protocol.new_job_id(), prefix=self.prefix, function_key=fkey,
                       function_name=name, n_items=len(payloads), chunksize=chunksize,
                       timeout=timeout, retries=retries, memory_mb=memory_mb, created=time.time(),
                       label=label, reduce=reduce, batch_target_s=self.auto_batch_target_s,
                       cache=cache and identity is not None, identity=identity, budget_usd=budget,
                       backups=backups, rerun_of=rerun_of)
        job = new_job(spec, self.backend, self.storage, payloads)
        job.executor = self
        if shown:  # what the panel shows of the inputs, stored before the manifest lists the job
            key = protocol.inputs_shown_key(self.prefix, spec.job_id)
            job.dispatcher.storage.put(key, integrity.seal(
                job.dispatcher.key, protocol.object_name(self.prefix, key),
                shown_inputs.document(spec.job_id, shown)))
        if spec.cache and payloads:
            job.dispatcher.use_cache()
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.done()] + [job]
            if track and self.track_uncollected:
                self._uncollected.append((job, single))
        self._lease.hold(job)
        if payloads:
            with cancel_on_interrupt(job):  # never leave a started job unknown to the caller
                job.dispatcher.start()
                self._ensure_monitor()
        return job

    # Waiting ----------------------------------------------------------------
    track_uncollected = True  # keep jobs for get_result()/wait() without futures (PyWren, Lithops)

    @staticmethod
    def _futures_of(entry: Any) -> list[cf.Future[Any]]:
        return [entry] if isinstance(entry, cf.Future) else list(entry.futures)

    def _uncollected_futures(self, what: str) -> list[cf.Future[Any]]:
        if not self._uncollected:
            raise ValueError(f"{what}() without futures collects this executor's calls not yet "
                             "collected, and there are none: call map(), call_async() or "
                             "map_reduce() first, or pass the futures")
        return [f for entry, _single in self._uncollected for f in self._futures_of(entry)]

    def wait(self, fs: cf.Future[Any] | Iterable[cf.Future[Any]] | None = None,
             return_when: str = ALL_COMPLETED,
             timeout: float | None = None) -> cf._base.DoneAndNotDoneFutures[Any]:
        """``concurrent.futures.wait``; without ``fs``, over this executor's futures not yet
        collected by ``get_result()``."""
        return wait(self._uncollected_futures("wait") if fs is None else fs,
                    return_when=return_when, timeout=timeout)

    def as_completed(self, fs: cf.Future[Any] | Iterable[cf.Future[Any]] | None = None,
                     timeout: float | None = None) -> Iterator[cf.Future[Any]]:
        return as_completed(self._uncollected_futures("as_completed") if fs is None else fs,
                            timeout=timeout)

    def get_result(self, fs: Any = None, timeout: float | None = None) -> Any:
        """Results of ``fs`` in order (raises the first failure). Without ``fs``: the results
        of this executor's calls not yet collected, in submission order, which are then
        collected; a lone ``call_async``/``map_reduce`` gives its value, not a list (Lithops)."""
        if fs is not None:
            value = get_result(fs, timeout=timeout)
            given = [fs] if isinstance(fs, (Job, cf.Future)) else list(fs)
            ids = {id(getattr(getattr(f, "_records", None), "job", None) or f) for f in given}
            self._uncollected = [u for u in self._uncollected if id(u[0]) not in ids]
            return value
        pending = list(self._uncollected)
        futures = self._uncollected_futures("get_result")
        if len(pending) == 1 and pending[0][1]:
            value = get_result(futures[0], timeout=timeout)
        else:
            value = get_result(futures, timeout=timeout)
        self._uncollected = [u for u in self._uncollected if u not in pending]
        return value

    # Jobs in storage ----------------------------------------------------------
    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """Manifests of recent jobs in this storage, newest first."""
        return list_jobs(self.storage, self.prefix, config.check("limit", limit, "jobs(): "))

    def attach(self, job_id: str) -> Job:
        """Re-attach to a job from its (verified) manifest, e.g. after a kernel restart.

        Tasks already stored are collected without re-running anything. A job whose host
        is gone is taken over and finished: what was never sent is sent, what is overdue
        is sent again within its budgets. A job whose host still runs is followed (and
        taken over if that host stops)."""
        config.check("job_id", job_id, "attach(): ")
        mkey = protocol.manifest_key(self.prefix, job_id)
        try:
            raw = self.storage.get(mkey)
        except NotFound:
            raise KeyError(f"no job {job_id} in {self.storage.describe()}") from None
        try:
            manifest = integrity.open_sealed(integrity.job_key(job_id),
                                             protocol.object_name(self.prefix, mkey), raw,
                                             "the manifest")
        except IntegrityError as err:
            try:
                legacy = "mac" not in json.loads(raw)
            except ValueError:
                legacy = False
            if legacy:
                raise IntegrityError(
                    f"job {job_id} was made by an older version whose objects are not sealed: "
                    "what it stored cannot be verified, so it is not attached") from None
            raise IntegrityError(
                f"the manifest of job {job_id} does not verify with this host's key "
                f"({integrity.key_file()}): the job was started on another host (copy that "
                "host's key file here to attach it) or the manifest was tampered with") from err
        job = new_job(JobSpec.from_manifest(manifest, self.prefix), self.backend, self.storage,
                      payloads=None)
        job.executor = self  # its failed items may be re-run (Job.rerun_failed)
        self._lease.hold(job)  # it may send invocations: the backend stays until it ends
        job.dispatcher.follow()
        # Its host is gone (a kernel restart): take it over at once and finish it. Else
        # follow it; the monitor takes over if that host stops.
        job.dispatcher.check_owner(time.time(), force=True)
        with self._lock:
            self._jobs.append(job)
        self._ensure_monitor()
        return job

    # Monitoring: cancel markers (the panel), storage polling, deadlines -------
    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = start_thread(_monitor_loop, weakref.ref(self),
                                             name="cloudbutton-monitor")


_MONITOR_LINGER_S = 5.0  # an idle monitor waits this long for the next job before exiting
_TICK_S = 0.25  # between ticks, for backends that report every end themselves


def _monitor_loop(ref: weakref.ReferenceType[Executor]) -> None:
    """Tick every unfinished job of the executor (cancel markers, polling, deadlines)."""
    idle_since = None
    while True:
        ex = ref()
        if ex is None:
            return
        jobs = [j for j in ex._jobs if not j.done()]
        pause = ex.backend.limits.poll_interval_s or _TICK_S
        now = time.time()
        if not jobs:
            # Linger: starting a thread per map() costs a GIL hand-off that can take
            # milliseconds while the backend's threads are busy.
            idle_since = idle_since or now
            if ex._closed or now - idle_since > _MONITOR_LINGER_S:
                with ex._lock:
                    if all(j.done() for j in ex._jobs):
                        ex._monitor = None  # decided under the lock _ensure_monitor takes
                        return
            del ex
            time.sleep(pause)
            continue
        idle_since = None
        del ex
        for job in jobs:
            job.dispatcher.tick()  # records its own errors: the other jobs go on
        time.sleep(pause)


class MapReduceFuture(cf.Future[Any]):
    """The future of a map_reduce's reduce task; ``map_job`` is the map's Job."""

    def __init__(self, map_job: Job):
        super().__init__()
        self.map_job = map_job


def _chain(src: cf.Future[Any], dst: cf.Future[Any]) -> None:
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


def list_jobs(storage: Storage, prefix: str, limit: int = 20) -> list[dict[str, Any]]:
    """Manifests of the newest jobs under ``prefix``, newest first."""
    return catalog.manifests(storage, prefix, limit)
