"""Who keeps an executor's backend alive: the executor, and each job not yet ended.

``Executor.shutdown()`` (or the executor being garbage-collected) lets go of the
executor's hold; each job lets go when it ends. The last one releases the
backend (``Backend.release``): the local pool's slot threads and worker
processes end once no executor holds it, Lambda's invoker threads stop. So
``shutdown(wait=False)`` never pulls the workers from under a running job, and
``shutdown(wait=True)`` leaves no thread or process behind. A backend the
caller made and passed in is theirs: it is never released here.
"""
from __future__ import annotations

import threading
from typing import Any

from .backends.base import Backend


class BackendLease:
    def __init__(self, backend: Backend, owned: bool = True):
        self.backend = backend
        self.owned = owned
        self._lock = threading.Lock()
        self._holds = 1  # the executor's own
        self._owner_held = True
        self._jobs: set[int] = set()
        self.released = False
        self._released = threading.Event()

    def hold(self, job: Any = None) -> None:
        """One more holder: ``job`` until it ends (a job listener lets go), or a caller
        that lets go itself with ``let_go()``."""
        with self._lock:
            if self.released:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._holds += 1
            if job is not None:
                self._jobs.add(id(job))
        if job is not None:
            job.add_listener(self.job_ended)
            if job.done():  # ended before the listener was added
                self.job_ended(job)

    def job_ended(self, job: Any) -> None:
        """A job's listener (and ``shutdown``): let go once for a job that has ended."""
        if not job.done():
            return
        with self._lock:
            if id(job) not in self._jobs:
                return
            self._jobs.discard(id(job))
        self.let_go()

    def drop_owner(self, wait: bool = False) -> None:
        """Let go of the executor's hold (once). ``wait``: return once the backend is
        released and its threads have ended (the jobs must have ended already)."""
        with self._lock:
            first = self._owner_held
            self._owner_held = False
        if first:
            self.let_go()
        # A job's own let-go runs just after it is marked done: give it a moment.
        if wait and self.owned and self._released.wait(10):
            self.backend.join()

    def let_go(self) -> None:
        with self._lock:
            self._holds -= 1
            last = self._holds == 0 and not self.released
            if last:
                self.released = True
        if last:
            if self.owned:
                self.backend.release(wait=False)  # may run on a backend thread: joining is drop_owner's
            self._released.set()
