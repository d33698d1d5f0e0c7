"""cloudbutton_executor: a PyWren-style executor for stateless workers.

Runs a function over many inputs on AWS Lambda, or on local worker processes
with Lambda's semantics (the default), with the vocabulary of
``concurrent.futures``.
"""
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from .context import report_flops
    from .errors import (InfrastructureError, IntegrityError, JobCancelled, LostInvocationError,
                         MissingPackageError, OutOfMemoryError, RemoteError, TaskTimeoutError,
                         VersionMismatchError, WorkerDiedError, WorkerSetupError)
    from .executor import Executor
    from .futures import (ALL_COMPLETED, ANY_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION,
                          CancelledError, TaskFuture, as_completed, get_result, wait)
    from .job import Job
    from .objectstore import CloudObject, ObjectStorage
    from .partitions import DataPartition
    from .pool import CloudPoolExecutor
    from .serialize import SecretError, SerializationError
    from .storage import NoSuchBucket, NotFound

# What each public name is imported from. A worker process imports only the modules it
# runs (local_runtime, worker and theirs), not the host's executor, dispatcher, cache...:
# importing this package has no cost beyond itself (PEP 562's module __getattr__).
_LAZY = {
    "report_flops": "context",
    "InfrastructureError": "errors", "IntegrityError": "errors", "JobCancelled": "errors",
    "LostInvocationError": "errors", "MissingPackageError": "errors", "OutOfMemoryError": "errors",
    "RemoteError": "errors", "TaskTimeoutError": "errors", "VersionMismatchError": "errors",
    "WorkerDiedError": "errors", "WorkerSetupError": "errors",
    "Executor": "executor",
    "ALL_COMPLETED": "futures", "ANY_COMPLETED": "futures", "CancelledError": "futures",
    "FIRST_COMPLETED": "futures", "FIRST_EXCEPTION": "futures", "TaskFuture": "futures",
    "as_completed": "futures", "get_result": "futures", "wait": "futures",
    "Job": "job",
    "CloudObject": "objectstore", "ObjectStorage": "objectstore",
    "DataPartition": "partitions",
    "CloudPoolExecutor": "pool",
    "SecretError": "serialize", "SerializationError": "serialize",
    "NoSuchBucket": "storage", "NotFound": "storage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Executor", "CloudPoolExecutor", "Job", "TaskFuture", "report_flops", "wait", "as_completed",
    "get_result",
    "ALL_COMPLETED", "ANY_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "CancelledError",
    "InfrastructureError", "TaskTimeoutError", "OutOfMemoryError", "WorkerDiedError",
    "LostInvocationError", "WorkerSetupError", "IntegrityError", "MissingPackageError", "RemoteError",
    "JobCancelled",
    "VersionMismatchError", "SerializationError", "SecretError", "__version__",
    "ObjectStorage", "CloudObject", "DataPartition", "NotFound", "NoSuchBucket",
]
