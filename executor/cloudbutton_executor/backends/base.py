"""The contract between the dispatcher and a backend.

A backend runs invocation events on workers that call the one worker handler;
it never interprets results (statuses in storage are the truth). What it can
and cannot do is data (``BackendLimits``) that the dispatcher reads instead of
probing the backend; what happens to an invocation reaches the dispatcher as
explicit events (``InvocationListener``).
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

if TYPE_CHECKING:
    from ..errors import InfrastructureError
    from ..storage import Storage

Event = dict[str, Any]
DEFAULT_TIMEOUT_S = 300.0  # a task's timeout when neither the user nor the backend sets one


class JobFit(TypedDict):
    """What a job runs with on a backend (``Backend.check_job``)."""

    memory_mb: int
    timeout: float


@dataclasses.dataclass(frozen=True)
class BackendLimits:
    """What a backend can do, as data the dispatcher plans with."""

    concurrency: int                  # invocations that run at once
    max_timeout_s: float | None       # longest invocation it can run (None: no limit)
    payload_limit_bytes: int | None   # largest event it accepts (None: no limit)
    max_inflight: int | None          # events to hand it at once (None: it queues them itself)
    can_stop_running: bool            # ``cancel_job`` stops invocations already running
    calls_back: bool                  # reports every invocation's end (else: poll storage)
    poll_interval_s: float | None     # between storage polls, when it does not call back
    deadline_grace_s: float | None    # after an invocation's timeout before the host ends it
                                      # (None: the backend enforces timeouts and reports them)
    lost_after_s: float | None        # silence after which an accepted event may be presumed
                                      # lost and sent again (None: events are never lost)
    redeliveries: int                 # events sent again per task when lost or presumed lost
    reports_accepted: bool            # reports when it accepted an event (deadlines start then)
    default_memory_mb: int            # memory of an invocation when the user sets none
    auto_batch_target_s: float        # how long one auto-sized batch should run
    architecture: str | None = None   # CPU architecture it bills (None: not billed)
    live_stdout_s: float | None = None  # a printing task stores its output this often
                                      # (None: only at its end)
    reads_host_files: bool = False    # its workers see the host's files (a data-driven map
                                      # may then read local paths)


class InvocationListener(Protocol):
    """What a backend tells about each event it was given (the dispatcher listens).

    Calls may come from any thread, in any order between events; for one event,
    ``on_accepted``/``on_throttled``/``on_start`` come before its end, and it ends
    with exactly one of ``on_done``, ``on_failure`` or ``on_lost`` (a backend that
    does not call back never ends an event: its statuses appear in storage).
    """

    def on_accepted(self, event: Event, at: float) -> None:
        """The backend took the event (e.g. Lambda answered 202) at time ``at``."""

    def on_throttled(self, event: Event, retry_after: float | None) -> None:
        """The backend refused the event for now; it will try again by itself."""

    def on_start(self, event: Event) -> None:
        """A worker picked the event up."""

    def on_done(self, event: Event, response: dict[str, Any]) -> None:
        """The handler returned ``response`` (its status is stored, or it saw a cancel)."""

    def on_failure(self, event: Event, error: InfrastructureError) -> None:
        """The invocation ended without the handler returning (timeout, worker died...)."""

    def on_lost(self, event: Event, error: InfrastructureError) -> None:
        """The event never reached a worker: sending it again cannot run it twice."""


class Backend(abc.ABC):
    """Runs invocation events; see the module docstring."""

    name: str = "abstract"
    # The storage its workers reach (None: any storage they can reach by its
    # description will do; the executor chooses).
    storage: Storage | None = None
    # The key prefix its workers may use (None: any).
    prefix: str | None = None

    @property
    @abc.abstractmethod
    def limits(self) -> BackendLimits:
        """What it can do (may change once it has checked its deployment)."""

    @abc.abstractmethod
    def invoke(self, events: list[Event], listener: InvocationListener) -> None:
        """Start the events; report on each to ``listener``. Must not block on them."""

    @abc.abstractmethod
    def cancel_job(self, job_id: str) -> None:
        """Send no more of the job's events; stop running ones if ``limits.can_stop_running``."""

    def stop_task(self, job_id: str, task: str) -> bool:
        """Stop the running invocations of one task (the losers of a backup race); True if
        this backend can. By default it cannot: a loser runs to its end and its status is
        refused (first write wins)."""
        return False

    def check_ready(self) -> None:  # noqa: B027 - optional: most backends are always ready
        """Raise if a job cannot run now (e.g. the deployed worker differs from the host)."""

    def check_job(self, *, modules: Collection[str], memory_mb: int | None,
                  timeout: float | None) -> JobFit:
        """Pre-flight, before anything is uploaded: raise (naming what and how to fix it)
        if the backend cannot run a job that imports ``modules`` with this memory and
        timeout per item (None: the backend's defaults); else what the job runs with."""
        self.check_ready()
        return {"memory_mb": memory_mb or self.limits.default_memory_mb,
                "timeout": timeout if timeout is not None else DEFAULT_TIMEOUT_S}

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """What it is and whether it works (for the panel and the CLI); never secrets."""

    def shutdown(self) -> None:  # noqa: B027 - optional: most backends hold nothing
        """Release threads and processes."""

    def release(self, wait: bool = False) -> None:
        """The executor that made or took this backend, and all its jobs, are done with it
        (see lease.py). A backend of its own shuts down; a shared one (the local pool)
        when its last holder releases it. ``wait``: see ``join``."""
        self.shutdown()
        if wait:
            self.join()

    def join(self) -> None:  # noqa: B027 - optional: most backends have nothing to wait for
        """After shutdown: return once its threads and processes have ended."""
