"""Ctrl-C while waiting for jobs: cancel them and say so in one line.

A KeyboardInterrupt that reaches a wait for results (``Job.result()``, a
future's ``result()``, ``wait``, ``get_result``, leaving a ``with Executor()``
block) cancels the unfinished jobs concerned (no more invocations, running
workers stopped) and becomes ``JobCancelled("cancelled: 12 of 40 done, 28
cancelled")``. It is still a KeyboardInterrupt, so ``except KeyboardInterrupt``
keeps working and ``except Exception`` does not swallow it. IPython shows only
its message (``_render_traceback_``); a plain script prints only its message
too (a chained ``sys.excepthook``, installed the first time one is raised).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from .errors import JobCancelled

_previous_hook: Any = None


def summary(jobs: Iterable[Any]) -> str:
    """"cancelled: 12 of 40 done, 28 cancelled" over ``jobs`` (failed counted when any)."""
    n = done = failed = cancelled = 0
    for job in jobs:
        c = job.counts()
        n += len(job)
        done += c["done"]
        failed += c["failed"]
        cancelled += c["cancelled"]
    return (f"cancelled: {done} of {n} done" + (f", {failed} failed" if failed else "")
            + f", {cancelled} cancelled")


def cancel_jobs(jobs: Iterable[Any]) -> JobCancelled | None:
    """Cancel the unfinished ``jobs``; the JobCancelled to raise, or None if all had ended."""
    hit = [j for j in jobs if not j.done()]
    for job in hit:
        job.cancel()
    if not hit:
        return None
    _install_excepthook()
    return JobCancelled(summary(hit))


@contextlib.contextmanager
def cancel_on_interrupt(*jobs: Any) -> Iterator[None]:
    """Turn a KeyboardInterrupt inside the block into cancelling ``jobs`` + JobCancelled."""
    try:
        yield
    except JobCancelled:
        raise
    except KeyboardInterrupt:
        err = cancel_jobs(jobs)
        if err is None:
            raise
        raise err from None


def _install_excepthook() -> None:
    """In a plain script, an uncaught JobCancelled prints its one line, not a traceback.
    Left alone where someone else owns the hook (IPython, a debugger, an app)."""
    global _previous_hook
    if sys.excepthook is not sys.__excepthook__:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = _excepthook


def _excepthook(etype: type[BaseException], value: BaseException,
                tb: TracebackType | None) -> None:
    if isinstance(value, JobCancelled):
        print(value, file=sys.stderr)
    else:
        (_previous_hook or sys.__excepthook__)(etype, value, tb)
