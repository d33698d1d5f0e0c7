"""``CloudPoolExecutor``: a ``concurrent.futures.Executor`` over cloud (or local) workers.

Code written for ``ProcessPoolExecutor`` runs unchanged::

    with CloudPoolExecutor(max_workers=4) as pool:
        squares = list(pool.map(pow, range(10), range(10)))   # results, lazily, in order

It is a sibling of ``Executor``, not ``Executor`` itself: PyWren's and Lithops'
``map(fn, iterdata)`` returns futures (a ``Job``), while ``concurrent.futures``'
``map(fn, *iterables)`` yields results; one class cannot be both. Each pool wraps
an ``Executor`` (``pool.executor``) whose options it accepts.
"""
from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from .executor import Executor
from .job import Job

_live: "weakref.WeakSet[CloudPoolExecutor]" = weakref.WeakSet()
_exit_registered = False


class CloudPoolExecutor(cf.Executor):
    def __init__(self, max_workers: int | None = None, *, backend: str = "local", **options: Any):
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers <= 0):
            raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
        self.executor = Executor(backend, workers=max_workers, **options)
        self.executor.track_uncollected = False  # nobody calls get_result() here: keep nothing
        _finish_at_exit(self)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        return self.executor.submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | str = 1) -> Iterator[Any]:
        """Like ``Executor.map`` of ``concurrent.futures``: every call is submitted now (one
        job; ``chunksize`` calls per invocation, or ``"auto"``); the results come in order
        as they are iterated, ``timeout`` counting from this call. A failed call raises
        at its position; leaving the iteration early cancels the calls not yet ended."""
        end = None if timeout is None else time.monotonic() + timeout
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        job = self.executor.map(fn, list(zip(*iterables)), chunksize=chunksize)  # tuples: fn(*t)
        return _results(job, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C cancels (see interrupt.py)
            self.executor.__exit__(exc_type, exc, tb)
        else:
            self.shutdown(wait=True)  # as concurrent.futures does, whatever else was raised
        return None


def _finish_at_exit(pool: CloudPoolExecutor) -> None:
    """As concurrent.futures' pools do, the interpreter's exit waits for work submitted
    and never shut down, unless it exits because of Ctrl-C: then that work is cancelled.
    (threading's exit hook runs before atexit's, where the local backend stops.)"""
    global _exit_registered
    _live.add(pool)
    if _exit_registered:
        return
    _exit_registered = True
    register = getattr(threading, "_register_atexit", None)  # what concurrent.futures uses
    if register is None:  # pragma: no cover - not CPython
        import atexit

        register = atexit.register
    register(_at_exit)


def _at_exit() -> None:
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for pool in list(_live):
        pool.shutdown(wait=not interrupted, cancel_futures=interrupted)


def _results(job: Job, end: float | None) -> Iterator[Any]:
    try:
        for i in range(len(job)):
            yield _take(job, i, end)  # no local holds the value while the caller has it
    finally:
        if not job.done():
            job.cancel()


def _take(job: Job, i: int, end: float | None) -> Any:
    try:
        return job[i].result(None if end is None else end - time.monotonic())
    finally:
        job.forget(i)
