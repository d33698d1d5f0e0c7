"""Futures and the waiting vocabulary of ``concurrent.futures``."""
from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, CancelledError
from typing import Any, Protocol

from .interrupt import cancel_on_interrupt

ANY_COMPLETED = FIRST_COMPLETED  # Lithops' name for the same thing

__all__ = ["TaskFuture", "wait", "as_completed", "get_result", "ALL_COMPLETED", "ANY_COMPLETED",
           "FIRST_COMPLETED", "FIRST_EXCEPTION", "CancelledError"]


class ItemRecords(Protocol):
    """Where a future reads its item's details (the job's outcome store)."""

    job_id: str

    def item_task(self, i: int) -> str | None: ...
    def item_stats(self, i: int) -> dict[str, Any]: ...
    def item_stdout(self, i: int) -> str: ...
    def item_attempts(self, i: int) -> int: ...
    def item_error_info(self, i: int) -> dict[str, Any] | None: ...
    def item_state(self, i: int) -> str: ...
    def item_backups(self, i: int) -> list[dict[str, Any]]: ...
    def item_cache_info(self, i: int) -> dict[str, Any] | None: ...


class TaskFuture(cf.Future[Any]):
    """A ``concurrent.futures.Future`` for one item of a job.

    ``stats`` holds the item's timestamps (host_submit, worker_start,
    setup_done, compute_start, compute_done, result_stored, host_seen,
    host_fetched), cold_start, peak_mem_mb and flops (and read_bytes, read_s if its
    task read data from storage); ``stdout`` what it
    printed; ``task_id`` the invocation that ran it. They are read from the
    job, which holds every item's outcome.
    """

    def __init__(self, records: ItemRecords, index: int):
        super().__init__()
        self._records = records
        self.job_id = records.job_id
        self.index = index
        self.synced = 0  # the item state the job last gave this future (0: queued)

    def result(self, timeout: float | None = None) -> Any:
        """Like ``Future.result``; Ctrl-C while waiting cancels the job (see interrupt.py)."""
        with cancel_on_interrupt(*_jobs_of([self])):
            return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        with cancel_on_interrupt(*_jobs_of([self])):
            return super().exception(timeout)

    @property
    def task_id(self) -> str | None:
        return self._records.item_task(self.index)

    @property
    def stats(self) -> dict[str, Any]:
        return self._records.item_stats(self.index)

    @property
    def stdout(self) -> str:
        return self._records.item_stdout(self.index)

    @property
    def attempts(self) -> int:
        return self._records.item_attempts(self.index)

    @property
    def error_info(self) -> dict[str, Any] | None:
        """type, message and traceback of the item's failure."""
        return self._records.item_error_info(self.index)

    @property
    def state(self) -> str:
        """queued, running, done, failed, cancelled or cached."""
        return self._records.item_state(self.index)

    @property
    def backups(self) -> list[dict[str, Any]]:
        """Backup invocations sent for its task: ``{"at", "reason", "attempt"}`` each."""
        return self._records.item_backups(self.index)

    @property
    def cache_info(self) -> dict[str, Any] | None:
        """For a result the cache served: the job and task that computed it, its timings."""
        return self._records.item_cache_info(self.index)

    def __repr__(self) -> str:
        return f"<TaskFuture {self.job_id}[{self.index}] {self.state}>"


def _futures(fs: cf.Future[Any] | Iterable[cf.Future[Any]]) -> list[cf.Future[Any]]:
    if isinstance(fs, cf.Future):
        return [fs]
    return list(fs)


def _jobs_of(fs: Any) -> list[Any]:
    """The jobs behind ``fs`` (a Job, or futures of jobs), for cancelling on Ctrl-C."""
    if hasattr(fs, "item_state") and not isinstance(fs, cf.Future):
        return [fs]
    jobs = (getattr(getattr(f, "_records", None), "job", None) for f in fs)
    return list({id(j): j for j in jobs if j is not None}.values())


def wait(fs: cf.Future[Any] | Iterable[cf.Future[Any]], return_when: str = ALL_COMPLETED,
         timeout: float | None = None) -> cf._base.DoneAndNotDoneFutures[Any]:
    """Like ``concurrent.futures.wait``; ``fs`` may be a Job, a future or futures."""
    futures = _futures(fs)
    with cancel_on_interrupt(*_jobs_of(futures)):
        return cf.wait(futures, timeout=timeout, return_when=return_when)


def as_completed(fs: cf.Future[Any] | Iterable[cf.Future[Any]],
                 timeout: float | None = None) -> Iterator[cf.Future[Any]]:
    """Like ``concurrent.futures.as_completed``; ``fs`` may be a Job. Ctrl-C while it waits
    cancels the jobs."""
    futures = _futures(fs)
    return _cancelling(cf.as_completed(futures, timeout=timeout), _jobs_of(futures))


def _cancelling(it: Iterator[cf.Future[Any]], jobs: list[Any]) -> Iterator[cf.Future[Any]]:
    box: list[cf.Future[Any]] = []
    while True:
        with cancel_on_interrupt(*jobs):
            for f in it:
                box.append(f)
                break
            else:
                return
        del f
        yield box.pop()  # no local keeps the future while the caller has it


def get_result(fs: Any, timeout: float | None = None) -> Any:
    """Results in order; a single future gives its result. Raises the first failure."""
    if isinstance(fs, cf.Future):
        return fs.result(timeout)
    from .job import Job

    if isinstance(fs, Job):  # it holds the results already, no futures needed
        return fs.result(timeout)
    futures = _futures(fs)
    with cancel_on_interrupt(*_jobs_of(futures)):
        _, not_done = cf.wait(futures, timeout=timeout)
    if not_done:
        raise cf.TimeoutError(f"{len(not_done)} of {len(futures)} tasks not done after {timeout} s")
    return [f.result() for f in futures]
