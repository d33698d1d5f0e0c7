"""Futures and the waiting vocabulary of ``concurrent.futures``."""
from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, CancelledError

from .interrupt import cancel_on_interrupt

ANY_COMPLETED = FIRST_COMPLETED  # Lithops' name for the same thing

__all__ = ["TaskFuture", "wait", "as_completed", "get_result", "ALL_COMPLETED", "ANY_COMPLETED",
           "FIRST_COMPLETED", "FIRST_EXCEPTION", "CancelledError"]


class TaskFuture(cf.Future):
    """A ``concurrent.futures.Future`` for one item of a job.

    ``stats`` holds the item's timestamps (host_submit, worker_start,
    setup_done, compute_start, compute_done, result_stored, host_seen,
    host_fetched), cold_start, peak_mem_mb and flops; ``stdout`` what it
    printed; ``task_id`` the invocation that ran it. They are read from the
    job, which holds every item's outcome.
    """

    def __init__(self, job, index: int):
        super().__init__()
        self.job = job
        self.job_id = job.job_id
        self.index = index

    def result(self, timeout=None):
        """Like ``Future.result``; Ctrl-C while waiting cancels the job (see interrupt.py)."""
        with cancel_on_interrupt(self.job):
            return super().result(timeout)

    def exception(self, timeout=None):
        with cancel_on_interrupt(self.job):
            return super().exception(timeout)

    @property
    def task_id(self) -> str | None:
        return self.job.item_task(self.index)

    @property
    def stats(self) -> dict:
        return self.job.item_stats(self.index)

    @property
    def stdout(self) -> str:
        return self.job.item_stdout(self.index)

    @property
    def attempts(self) -> int:
        return self.job.item_attempts(self.index)

    @property
    def error_info(self) -> dict | None:
        """type, message and traceback of the item's failure."""
        return self.job.item_error_info(self.index)

    @property
    def state(self) -> str:
        """queued, running, done, failed or cancelled."""
        return self.job.item_state(self.index)

    def __repr__(self):
        return f"<TaskFuture {self.job_id}[{self.index}] {self.state}>"


def _futures(fs):
    if isinstance(fs, cf.Future):
        return [fs]
    return list(fs)


def _jobs_of(fs) -> list:
    """The jobs behind ``fs`` (a Job, or futures of jobs), for cancelling on Ctrl-C."""
    if hasattr(fs, "item_state"):
        return [fs]
    return list({id(j): j for j in (getattr(f, "job", None) for f in fs) if j is not None}.values())


def wait(fs, return_when=ALL_COMPLETED, timeout=None):
    """Like ``concurrent.futures.wait``; ``fs`` may be a Job, a future or futures."""
    futures = _futures(fs)
    with cancel_on_interrupt(*_jobs_of(futures)):
        return cf.wait(futures, timeout=timeout, return_when=return_when)


def as_completed(fs, timeout=None):
    """Like ``concurrent.futures.as_completed``; ``fs`` may be a Job. Ctrl-C while it waits
    cancels the jobs."""
    futures = _futures(fs)
    return _cancelling(cf.as_completed(futures, timeout=timeout), _jobs_of(futures))


def _cancelling(it, jobs):
    box = []
    while True:
        with cancel_on_interrupt(*jobs):
            for f in it:
                box.append(f)
                break
            else:
                return
        del f
        yield box.pop()  # no local keeps the future while the caller has it


def get_result(fs, timeout=None):
    """Results in order; a single future gives its result. Raises the first failure."""
    if isinstance(fs, cf.Future):
        return fs.result(timeout)
    if hasattr(fs, "item_state"):  # a Job: it holds the results already, no futures needed
        return fs.result(timeout)
    futures = _futures(fs)
    with cancel_on_interrupt(*_jobs_of(futures)):
        done, not_done = cf.wait(futures, timeout=timeout)
    if not_done:
        raise cf.TimeoutError(f"{len(not_done)} of {len(futures)} tasks not done after {timeout} s")
    return [f.result() for f in futures]
