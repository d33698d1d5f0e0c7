"""Objects in buckets, for tasks and the host: Lithops' ``Storage`` API on S3 and on local
directories, with the same error types on both (``NotFound`` for a key, ``NoSuchBucket``).

``ObjectStorage()`` inside a task is the storage of the task's own job (S3 bucket or
local directory), reached with the worker's role (Lambda) or the host's credentials
chain (local workers inherit it); on the host it is S3 as the config file says
(region, profile, S3 endpoint) with the config's bucket as default. A task function
with a parameter named ``storage`` gets one (as Lithops gives it). A task can return a
large value by reference: ``storage.put_cloudobject(data)`` stores it (by default
beside the task's status, deleted with its job) and returns a ``CloudObject`` naming
it with its sha256, which ``get_cloudobject`` checks before handing the bytes over.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import context, protocol
from .errors import IntegrityError
from .storage import LocalStorage, NoSuchBucket, NotFound, S3Storage, Storage

__all__ = ["ObjectStorage", "CloudObject", "NotFound", "NoSuchBucket"]

_counter = itertools.count()


@dataclasses.dataclass(frozen=True)
class CloudObject:
    """A stored object, by reference: where it is, its size and its sha256."""

    backend: str      # "s3" or "local"
    bucket: str
    key: str
    size: int
    sha256: str

    def __str__(self) -> str:
        return f"{'s3' if self.backend == 's3' else 'file'}://{self.bucket}/{self.key}"


def _body_bytes(body: Any) -> bytes:
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if hasattr(body, "read"):
        data = body.read()
        return data.encode() if isinstance(data, str) else bytes(data)
    raise TypeError(f"an object's body must be bytes, str or a file-like object, got "
                    f"{type(body).__name__}")


@contextlib.contextmanager
def _bucket_errors(bucket: str | None) -> Iterator[None]:
    """S3's NoSuchBucket as the storage API's NoSuchBucket (the job storage itself keeps
    botocore's error: for the job protocol a missing bucket is no missing key)."""
    try:
        yield
    except Exception as err:
        response = getattr(err, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise NoSuchBucket(f"no such bucket: {bucket}") from None
        raise


def _range_of(extra_get_args: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """Lithops' ``extra_get_args={"Range": "bytes=a-b"}`` (b inclusive, optional) as [a, b+1)."""
    rng = (extra_get_args or {}).get("Range")
    if rng is None:
        return None, None
    try:
        unit, _, span = str(rng).partition("=")
        first, _, last = span.partition("-")
        if unit.strip() != "bytes" or not first:
            raise ValueError
        return int(first), (int(last) + 1 if last else None)
    except ValueError:
        raise ValueError(f"Range must read 'bytes=FIRST-LAST' or 'bytes=FIRST-', got {rng!r}") from None


class ObjectStorage:
    """Put, get (whole, a byte range, or streamed), list, head and delete objects in
    buckets. ``backend="s3"`` (region, endpoint_url, profile: as boto3 takes them; never
    credentials) or ``"local"`` (``root``: a directory whose sub-directories are the
    buckets). ``bucket``: the default bucket of ``put_cloudobject``."""

    def __init__(self, backend: str | None = None, *, bucket: str | None = None,
                 region: str | None = None, endpoint_url: str | None = None,
                 profile: str | None = None, root: str | None = None,
                 key_prefix: str | None = None):
        if backend is None:
            task = context.current_task()
            if task is not None:  # inside a task: its own job's storage
                job = _from_job_storage(task["storage"])
                backend, root = job["backend"], job.get("root")
                region, endpoint_url, profile = (job.get("region"), job.get("endpoint_url"),
                                                 job.get("profile"))
                bucket = bucket or job["bucket"]
                key_prefix = key_prefix or (f"{protocol.tasks_prefix(task['prefix'], task['job_id'])}"
                                            f"{task['task']}/objects")
            else:
                backend, bucket, region, endpoint_url, profile = _host_defaults(bucket)
        if backend not in ("s3", "local"):
            raise ValueError(f"backend must be 's3' or 'local', got {backend!r}")
        self.backend = backend
        self.bucket = bucket
        self.region, self.endpoint_url, self.profile = region, endpoint_url, profile
        self.root = os.path.abspath(os.path.expanduser(root)) if backend == "local" and root else root
        if backend == "local" and not self.root:
            raise ValueError("a local ObjectStorage needs root= (the directory holding its buckets)")
        self.key_prefix = key_prefix or "cloudbutton/objects"
        self._buckets: dict[str, Storage] = {}
        self._client: Any = None

    @classmethod
    def for_job_storage(cls, storage: Storage, key_prefix: str | None = None) -> ObjectStorage:
        """The ObjectStorage whose default bucket is a job storage (``Executor.object_storage``)."""
        return cls(**_from_job_storage(storage.describe()), key_prefix=key_prefix)

    def describe(self) -> dict[str, Any]:
        """What reaches the same storage elsewhere (never credentials)."""
        out = {"backend": self.backend, "bucket": self.bucket, "region": self.region,
               "endpoint_url": self.endpoint_url, "profile": self.profile, "root": self.root}
        return {k: v for k, v in out.items() if v is not None}

    def __repr__(self) -> str:
        return f"ObjectStorage({', '.join(f'{k}={v!r}' for k, v in self.describe().items())})"

    # Buckets ---------------------------------------------------------------------------
    def _bucket(self, bucket: str | None) -> Storage:
        name = bucket or self.bucket
        if not name:
            raise ValueError("no bucket given, and this ObjectStorage has no default bucket")
        st = self._buckets.get(name)
        if st is None:
            if self.backend == "local":
                assert self.root is not None
                if "/" in name or name in (".", ".."):
                    raise ValueError(f"a local bucket is one directory name, got {name!r}")
                st = LocalStorage(os.path.join(self.root, name))
            else:
                s3 = S3Storage(name, region=self.region, endpoint_url=self.endpoint_url,
                               profile=self.profile, client=self._client)
                self._client = s3.client  # one client (and connection pool) for every bucket
                st = s3
            self._buckets[name] = st
        return st

    def create_bucket(self, bucket: str) -> None:
        if self.backend == "local":
            os.makedirs(self._bucket(bucket).root, exist_ok=True)  # type: ignore[attr-defined]
            return
        st = self._bucket(bucket)
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        st.client.create_bucket(**kwargs)  # type: ignore[attr-defined]

    def _existing(self, bucket: str | None) -> Storage:
        """A bucket that must exist (a local put would otherwise make its directory)."""
        st = self._bucket(bucket)
        if isinstance(st, LocalStorage) and not os.path.isdir(st.root):
            raise NoSuchBucket(f"no such bucket: {bucket or self.bucket} (no directory {st.root})")
        return st

    # Lithops' Storage API ---------------------------------------------------------------------
    def put_object(self, bucket: str, key: str, body: Any) -> None:
        """Store ``body`` (bytes, str or a file-like object) at ``key``, replacing it."""
        with _bucket_errors(bucket):
            self._existing(bucket).put(key, _body_bytes(body))

    def get_object(self, bucket: str, key: str, stream: bool = False,
                   extra_get_args: dict[str, Any] | None = None, *,
                   byte_range: tuple[int, int | None] | None = None) -> Any:
        """The object's bytes, or a file-like object streaming them (``stream=True``).
        ``byte_range=(start, stop)`` (stop exclusive, None: to the end), or Lithops'
        ``extra_get_args={"Range": "bytes=first-last"}``, reads a slice."""
        start, stop = byte_range if byte_range is not None else _range_of(extra_get_args)
        st = self._existing(bucket)
        began = time.perf_counter()
        with _bucket_errors(bucket):
            if stream:
                return st.open_range(key, start or 0, stop)
            if start is None and stop is None:
                data = st.get(key)
            else:
                size = None if stop is not None else st.size(key)
                data = st.get(key, start or 0, stop if stop is not None else size)
        context.count_read(len(data), time.perf_counter() - began)  # the task's read throughput
        return data

    def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        """``{"content-length": "N", "ContentLength": N}`` (NotFound if absent)."""
        n = self._existing(bucket).size(key)
        return {"content-length": str(n), "ContentLength": n}

    def iter_objects(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(key, size)`` under ``prefix``, in key order, a page at a time."""
        return self._existing(bucket).iter_objects(prefix or "")

    def list_objects(self, bucket: str, prefix: str | None = None) -> list[dict[str, Any]]:
        """``[{"Key": key, "Size": n}, ...]`` under ``prefix``, as Lithops returns them."""
        return [{"Key": k, "Size": n} for k, n in self.iter_objects(bucket, prefix or "")]

    def list_keys(self, bucket: str, prefix: str | None = None) -> list[str]:
        return [k for k, _n in self.iter_objects(bucket, prefix or "")]

    def delete_object(self, bucket: str, key: str) -> None:
        with _bucket_errors(bucket):
            self._existing(bucket).delete(key)

    def delete_objects(self, bucket: str, key_list: list[str]) -> None:
        st = self._existing(bucket)
        with _bucket_errors(bucket):
            for key in key_list:
                st.delete(key)

    # Objects by reference ----------------------------------------------------------------------
    def put_cloudobject(self, body: Any, bucket: str | None = None,
                        key: str | None = None) -> CloudObject:
        """Store ``body`` and return a reference to it, with its size and sha256 (inside a
        task, by default beside the task's status: it goes when its job is cleaned)."""
        data = _body_bytes(body)
        name = bucket or self.bucket
        if not name:
            raise ValueError("put_cloudobject() needs a bucket: this ObjectStorage has no default")
        key = key or f"{self.key_prefix}/{next(_counter):06d}-{os.urandom(6).hex()}"
        with _bucket_errors(name):
            self._existing(name).put(key, data)
        return CloudObject(self.backend, name, key, len(data), hashlib.sha256(data).hexdigest())

    def get_cloudobject(self, cloudobject: CloudObject, stream: bool = False) -> Any:
        """The bytes ``cloudobject`` names, once they match its sha256 (IntegrityError if
        anything else is stored there now)."""
        began = time.perf_counter()
        with _bucket_errors(cloudobject.bucket):
            data = self._existing(cloudobject.bucket).get(cloudobject.key)
        context.count_read(len(data), time.perf_counter() - began)
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), cloudobject.sha256):
            raise IntegrityError(f"{cloudobject} does not hold what was stored there: its "
                                 f"content does not match its sha256 {cloudobject.sha256[:16]}…")
        return io.BytesIO(data) if stream else data

    def delete_cloudobject(self, cloudobject: CloudObject) -> None:
        self.delete_object(cloudobject.bucket, cloudobject.key)

    def delete_cloudobjects(self, cloudobjects: list[CloudObject]) -> None:
        for c in cloudobjects:
            self.delete_cloudobject(c)


def _from_job_storage(desc: dict[str, Any]) -> dict[str, Any]:
    """ObjectStorage arguments whose default bucket is the job storage ``desc`` describes:
    its S3 bucket, or (local) its root directory as a bucket of the directory above."""
    if desc.get("kind") == "local":
        root = os.path.abspath(desc["root"])
        return {"backend": "local", "root": os.path.dirname(root), "bucket": os.path.basename(root)}
    return {"backend": "s3", "bucket": desc["bucket"], "region": desc.get("region"),
            "endpoint_url": desc.get("endpoint_url"), "profile": desc.get("profile")}


def _host_defaults(bucket: str | None) -> tuple[str, str | None, str | None, str | None, str | None]:
    from . import config

    cfg = config.load_or_defaults()
    return "s3", bucket or cfg.bucket, cfg.region, cfg.endpoints.get("s3"), cfg.profile


def with_storage_argument(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself, or, when it has a parameter named ``storage`` (Lithops' reserved
    name), a callable that passes it the task's ``ObjectStorage``."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    return StorageArgument(fn) if "storage" in params else fn


class StorageArgument:
    """Calls ``fn`` with ``storage=ObjectStorage()`` (the task's), unless the call gives one."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", type(fn).__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "storage" not in kwargs:
            kwargs["storage"] = ObjectStorage()
        return self.fn(*args, **kwargs)
