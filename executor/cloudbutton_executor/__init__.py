"""cloudbutton_executor: a PyWren-style executor for stateless workers.

Runs a function over many inputs on AWS Lambda, or on local worker processes
with Lambda's semantics (the default), with the vocabulary of
``concurrent.futures``.
"""
from .context import report_flops
from .errors import (InfrastructureError, IntegrityError, JobCancelled, LostInvocationError,
                     OutOfMemoryError, RemoteError, TaskTimeoutError, VersionMismatchError, WorkerDiedError,
                     WorkerSetupError, MissingPackageError)
from .executor import Executor
from .futures import (ALL_COMPLETED, ANY_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION,
                      CancelledError, TaskFuture, as_completed, get_result, wait)
from .job import Job
from .objectstore import CloudObject, ObjectStorage
from .partitions import DataPartition
from .pool import CloudPoolExecutor
from .serialize import SecretError, SerializationError
from .storage import NoSuchBucket, NotFound

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
