"""Exceptions a task can end with, besides the user's own."""
from __future__ import annotations

from typing import Any


class RemoteTraceback(Exception):
    """Carries the worker's traceback text; set as ``__cause__`` of a re-raised
    remote exception so Python prints it above the local one (as
    ``concurrent.futures.ProcessPoolExecutor`` does)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class RemoteError(Exception):
    """A remote exception whose own type could not travel back (not picklable)."""

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = traceback

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return (RemoteError, (self.type_name, self.message, self.remote_traceback))


class ExceptionByState:
    """Pickles as ``exc`` rebuilt from its type, ``args`` and ``__dict__`` without calling
    ``__init__``: for exception classes whose ``__init__`` signature differs from their
    ``args`` (``pickle`` would call ``cls(*args)`` and fail). Unpickling gives the exception."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        if type(exc).__reduce__ is not BaseException.__reduce__:
            raise TypeError(f"{type(exc).__qualname__} defines its own __reduce__")
        return _rebuild_exception, (type(exc), exc.args, dict(getattr(exc, "__dict__", {})))


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


class InfrastructureError(Exception):
    """The task did not run to completion for a reason outside the user's code."""

    kind = "infrastructure"

    def __init__(self, message: str, task_id: str | None = None):
        super().__init__(message)
        self.task_id = task_id

    def __reduce__(self) -> tuple[type[InfrastructureError], tuple[str | None, ...]]:
        return (type(self), (str(self), self.task_id))


class TaskTimeoutError(InfrastructureError, TimeoutError):
    kind = "timeout"


class OutOfMemoryError(InfrastructureError, MemoryError):
    kind = "oom"


class WorkerDiedError(InfrastructureError):
    """The worker process was killed by a signal or exited mid-task."""

    kind = "died"


class LostInvocationError(InfrastructureError):
    """The invocation never produced a result (dropped event, lost container)."""

    kind = "lost"


class JobCancelled(KeyboardInterrupt):
    """Ctrl-C cancelled jobs while the host waited for them; the message counts the outcome
    ("cancelled: 12 of 40 done, 28 cancelled"). See interrupt.py."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [str(self)]


class WorkerSetupError(InfrastructureError):
    """The worker could not start the task: the function or its inputs could not be
    loaded (a module missing on the worker, a version skew, unreadable inputs, a full
    /tmp). The message names the worker's Python and cloudpickle versions and, for a
    missing module, the module (also in ``missing_module``)."""

    kind = "setup"

    def __init__(self, message: str, task_id: str | None = None, missing_module: str | None = None):
        super().__init__(message, task_id)
        self.missing_module = missing_module

    def __reduce__(self) -> tuple[type[InfrastructureError], tuple[str | None, ...]]:
        return (type(self), (str(self), self.task_id, self.missing_module))


class IntegrityError(InfrastructureError):
    """Something read from storage failed verification: a tampered or foreign object (a
    content-addressed blob that does not match its sha256 name, a status, result or
    manifest whose seal does not verify with the job's key). Nothing of it was used."""

    kind = "integrity"


class VersionMismatchError(RuntimeError):
    """The deployed worker runs other versions than the host."""


class MissingPackageError(VersionMismatchError):
    """The deployed runtime lacks a module the job imports, or has another version of it."""


INFRA_ERRORS = {cls.kind: cls for cls in
                (InfrastructureError, TaskTimeoutError, OutOfMemoryError, WorkerDiedError,
                 LostInvocationError, WorkerSetupError, IntegrityError)}
