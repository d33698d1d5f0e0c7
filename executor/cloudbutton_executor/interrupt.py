"""Ctrl-C while waiting for jobs: cancel them and say so in one line.

A KeyboardInterrupt that reaches a wait for results (``Job.result()``, a
future's ``result()``, ``wait``, ``get_result``, leaving a ``with Executor()``
block) cancels the unfinished jobs concerned (no more invocations, running
workers stopped) and becomes ``JobCancelled("cancelled: 12 of 40 done, 28
cancelled")``. It is still a KeyboardInterrupt, so ``except KeyboardInterrupt``
keeps working and ``except Exception`` does not swallow it. IPython shows only
its message (``_render_traceback_``); a plain script prints only its message
too (a chained ``sys.excepthook``, installed the first time one is raised).

The host's own threads block SIGINT (``start_thread``, ``block_interrupts``). Linux hands a
process's SIGINT to any thread that does not block it, and Python runs signal handlers only
in the main thread: a main thread blocked in a wait with no timeout is woken only if the
signal was delivered to it, so a Ctrl-C taken by a background thread went unseen until the
next task ended (minutes, or never).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
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
    for job in reversed(hit):  # newest first: see Executor.shutdown
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


def block_interrupts() -> None:
    """Keep Ctrl-C (SIGINT) from being delivered to the calling thread: called first in every
    background thread of the host, and as the initializer of its thread pools."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def start_thread(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """A started daemon thread running ``target(*args)`` with SIGINT blocked."""
    def run() -> None:
        block_interrupts()
        target(*args)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread
