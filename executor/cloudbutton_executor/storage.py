"""Object storage: one small interface, a local directory and S3.

Every implementation counts its requests (the S3 request count per task is a
cost the job reports). ``describe()`` returns what a worker needs to reach the
same storage; it never contains credentials (workers use their own role).
"""
from __future__ import annotations

import abc
import builtins
import collections
import errno
import io
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO


class NotFound(KeyError):
    """The key does not exist in storage."""

    def __str__(self) -> str:  # KeyError's repr of its argument reads badly in messages
        return str(self.args[0]) if self.args else "not found"


class NoSuchBucket(NotFound):
    """The bucket (a local storage's root directory) does not exist."""


def default_local_root() -> str:
    explicit = os.environ.get("CLOUDBUTTON_STORAGE_DIR")
    if explicit:
        return explicit
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "cloudbutton")


class Storage(abc.ABC):
    """Key/value object storage with byte-range reads and first-write-wins puts."""

    kind = "abstract"

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    def _count(self, op: str, n: int = 1) -> None:
        with self._count_lock:
            self._counts[op] += n

    @property
    def request_counts(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self._counts)

    # The interface -------------------------------------------------------
    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing what was there."""

    def put_parts(self, key: str, parts: Iterable[bytes | memoryview]) -> None:
        """``put(key, b"".join(parts))``; a storage that can write the parts one after
        another does so without the joined copy."""
        self.put(key, b"".join(parts))

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` unless ``key`` exists; True if this call wrote it."""

    @abc.abstractmethod
    def get(self, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        """Bytes of ``key``, or of its ``[start, stop)`` slice."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """The size of ``key`` in bytes (NotFound if it does not exist)."""

    @abc.abstractmethod
    def open_range(self, key: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        """A file-like object streaming bytes ``[start, stop)`` of ``key`` (to its end if
        ``stop`` is None): one ranged GET, read as the caller reads."""

    @abc.abstractmethod
    def iter_objects(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every key under ``prefix``, in key order, page by page
        (a listing of millions of keys never sits in memory at once)."""

    @abc.abstractmethod
    def iter_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        """``(key, last modified as a Unix time)`` of every key under ``prefix``."""

    @abc.abstractmethod
    def touch(self, key: str) -> None:
        """Make ``key``'s last-modified time now, without sending its bytes again
        (NotFound if it does not exist)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key`` (nothing happens if it does not exist)."""

    @abc.abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> builtins.list[str]:
        """Keys under ``prefix`` in order; only those after ``start_after`` if given."""

    @abc.abstractmethod
    def children(self, prefix: str) -> builtins.list[str]:
        """Names one level below ``prefix`` (like ``ls``), e.g. the job ids under ``jobs/``."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What a worker needs to reach this storage (never credentials)."""


_COALESCE_BYTES = 1 << 20


def _coalesced(parts: Iterable[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """``parts`` with runs of small ones joined into pieces of up to about 1 MB: one write
    per piece instead of one per part (a map's data.pickle is one small part per item);
    a large part passes as it is, never copied."""
    run: builtins.list[bytes | memoryview] = []
    size = 0
    for part in parts:
        n = len(part) if not isinstance(part, memoryview) else part.nbytes
        if n >= _COALESCE_BYTES:
            if run:
                yield b"".join(run)
                run, size = [], 0
            yield part
            continue
        run.append(part)
        size += n
        if size >= _COALESCE_BYTES:
            yield b"".join(run)
            run, size = [], 0
    if run:
        yield run[0] if len(run) == 1 else b"".join(run)


def _all_before(dir_key: str, start_after: str) -> bool:
    """Every key below ``dir_key`` (ending in "/") sorts before ``start_after``."""
    return dir_key < start_after and not start_after.startswith(dir_key)


class LocalStorage(Storage):
    kind = "local"

    def __init__(self, root: str | None = None):
        super().__init__()
        self.root = os.path.abspath(root or default_local_root())

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return os.path.join(self.root, key)

    def _write_tmp(self, path: str, data: bytes | Iterable[bytes | memoryview]) -> str:
        tmp = f"{path}.{os.urandom(16).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(tmp, flags, 0o666)
        try:
            for part in _coalesced([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def put(self, key: str, data: bytes) -> None:
        self._count("PUT")
        path = self._path(key)
        os.replace(self._write_tmp(path, data), path)

    def put_parts(self, key: str, parts: Iterable[bytes | memoryview]) -> None:
        """``put(key, b"".join(parts))`` without building the joined copy."""
        self._count("PUT")
        path = self._path(key)
        os.replace(self._write_tmp(path, parts), path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._count("PUT")
        path = self._path(key)
        written = _link_new_file(path, data) if _ANONYMOUS_FILES else None
        if written is not None:
            return written
        tmp = self._write_tmp(path, data)
        try:
            os.link(tmp, path)  # atomic and fails if the key exists: first write wins
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def get(self, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        self._count("GET")
        try:
            fd = os.open(self._path(key), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            self._check_root()
            raise NotFound(key) from None
        try:
            if start is None or stop is None:
                # Unbuffered reads straight into one buffer (open().read() costs
                # an isatty ioctl, an fstat and a copy more).
                return _read_all(fd, start or 0)
            return _read_range(fd, start, stop - start)
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        self._count("HEAD")
        return os.path.exists(self._path(key))

    def size(self, key: str) -> int:
        self._count("HEAD")
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            self._check_root()
            raise NotFound(key) from None

    def open_range(self, key: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        self._count("GET")
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            self._check_root()
            raise NotFound(key) from None
        f.seek(start)
        return f if stop is None else _Bounded(f, stop - start)  # type: ignore[return-value]

    def iter_objects(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        self._check_root()
        for key in self.list(prefix, start_after):
            try:
                yield key, os.stat(self._path(key)).st_size
            except FileNotFoundError:  # deleted since the listing
                continue

    def iter_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        for key in self.list(prefix):
            try:
                yield key, os.stat(self._path(key)).st_mtime
            except FileNotFoundError:  # deleted since the listing
                continue

    def touch(self, key: str) -> None:
        self._count("PUT")
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            raise NotFound(key) from None

    def delete(self, key: str) -> None:
        self._count("DELETE")
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise NoSuchBucket(f"no such directory: {self.root}")

    def list(self, prefix: str, start_after: str | None = None) -> builtins.list[str]:
        self._count("LIST")
        base = self._path(prefix.rstrip("/")) if prefix.rstrip("/") else self.root
        out = []
        cut = len(self.root) + 1
        for dirpath, dirs, files in os.walk(base):
            rel = dirpath[cut:].replace(os.sep, "/") if dirpath != self.root else ""
            here = f"{rel}/" if rel else ""
            if start_after is not None:
                # A directory whose every key sorts before start_after is not entered: a
                # poll that lists from its first pending task reads the names of the
                # finished ones, not their contents (else each poll walks the whole job).
                dirs[:] = [d for d in dirs if not _all_before(f"{here}{d}/", start_after)]
            for name in files:
                if not name.endswith(".tmp"):
                    key = f"{here}{name}"
                    if key.startswith(prefix) and (start_after is None or key > start_after):
                        out.append(key)
        return sorted(out)

    def children(self, prefix: str) -> builtins.list[str]:
        self._count("LIST")
        try:
            return sorted(n for n in os.listdir(self._path(prefix.rstrip("/"))) if not n.endswith(".tmp"))
        except FileNotFoundError:
            return []

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self._count("DELETE")
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass
        # Remove emptied directories below the prefix.
        base = self._path(prefix.rstrip("/"))
        if os.path.isdir(base):
            for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        return len(keys)

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "root": self.root}


def _read_range(fd: int, start: int, n: int) -> bytes:
    if n <= 0:
        return b""
    first = os.pread(fd, n, start)
    if len(first) == n or not first:
        return first
    buf = bytearray(first)  # a short read: keep going until EOF or n bytes
    while len(buf) < n:
        chunk = os.pread(fd, n - len(buf), start + len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# Linux: a status (one per task) is written as an unnamed file in its directory and then
# given its name, in one step that fails if the name exists (first write wins): no temporary
# name to make up and unlink (a third fewer syscalls than write, link, unlink). Readers
# never see it partly written. Off where the kernel or filesystem cannot (see below).
_ANONYMOUS_FILES = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_ROOT_FD: int | None = None  # any directory fd: makes os.link use linkat (follows /proc links)


def _link_new_file(path: str, data: bytes) -> bool | None:
    """Store ``data`` at ``path`` unless it exists (True: stored; False: it existed);
    None where unnamed files are not supported (then nothing was done)."""
    global _ANONYMOUS_FILES, _ROOT_FD
    folder = os.path.dirname(path)
    flags = os.O_TMPFILE | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        if _ROOT_FD is None:
            _ROOT_FD = os.open("/", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            fd = os.open(folder, flags, 0o666)
        except FileNotFoundError:  # a task's first object: its folder is new
            try:
                os.mkdir(folder)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
            except FileExistsError:
                pass
            fd = os.open(folder, flags, 0o666)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or exc.errno not in _NO_TMPFILE:
            raise
        _ANONYMOUS_FILES = False  # e.g. a filesystem without O_TMPFILE: the portable path
        return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        try:
            # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the open file (O_TMPFILE's
            # documented use); it fails if ``path`` exists.
            os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=_ROOT_FD, follow_symlinks=True)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            _ANONYMOUS_FILES = False
            return None
    finally:
        os.close(fd)


# What a kernel, filesystem or sandbox without unnamed files (or /proc links) answers.
_NO_TMPFILE = {getattr(errno, n) for n in ("EISDIR", "EOPNOTSUPP", "EINVAL", "EXDEV", "EPERM",
                                            "EACCES", "ENOSYS") if hasattr(errno, n)}


def _read_all(fd: int, start: int) -> bytes:
    first = os.pread(fd, 1 << 16, start)
    if len(first) < 1 << 16:  # a regular file returns less only at its end
        return first
    # Stored objects are immutable (written whole, then renamed or linked in).
    return _read_range(fd, start, os.fstat(fd).st_size - start)


class _Bounded(io.RawIOBase):
    """At most ``n`` bytes of an open file, from where it stands."""

    def __init__(self, f: BinaryIO, n: int):
        self._f = f
        self._left = max(0, n)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")[:self._left]
        if not view:
            return 0
        n = self._f.readinto(view)  # type: ignore[attr-defined]
        self._left -= n or 0
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


def _conditional_puts(client: Any) -> None:
    """Let ``put_object(IfNoneMatch="*")`` work on botocore releases older than S3's
    conditional writes (Aug 2024) -- such as the one Lambda's Python runtimes bundle:
    the parameter is taken out before validation and sent as the header it stands for."""
    shape = client.meta.service_model.operation_model("PutObject").input_shape
    if "IfNoneMatch" in shape.members:
        return

    def take(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "IfNoneMatch" in params:
            context["cloudbutton_if_none_match"] = params.pop("IfNoneMatch")

    def add(request: Any, **_: Any) -> None:
        value = request.context.get("cloudbutton_if_none_match")
        if value is not None:
            request.headers["If-None-Match"] = value

    client.meta.events.register("before-parameter-build.s3.PutObject", take)
    client.meta.events.register("before-sign.s3.PutObject", add)


class S3Storage(Storage):
    kind = "s3"

    def __init__(self, bucket: str, region: str | None = None, endpoint_url: str | None = None,
                 max_pool_connections: int = 64, session: Any = None, profile: str | None = None,
                 client: Any = None):
        super().__init__()
        if not bucket:
            raise ValueError("S3 storage needs a bucket name")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.profile = profile  # a name in the host's ~/.aws (local workers only), never a secret
        self._max_pool = max_pool_connections
        self._session = session
        self._client: Any = client  # shared by the buckets of one ObjectStorage
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    session = self._session or boto3.session.Session(profile_name=self.profile)
                    self._client = session.client(
                        "s3", region_name=self.region, endpoint_url=self.endpoint_url,
                        config=Config(retries={"mode": "standard", "max_attempts": 8},
                                      max_pool_connections=self._max_pool))
                    _conditional_puts(self._client)
        return self._client

    def _is_missing(self, err: Any) -> bool:
        """Whether ``err`` says the key is missing (a missing bucket is no missing key: the
        job protocol must not wait for a key in a bucket that is gone)."""
        code = err.response.get("Error", {}).get("Code", "")
        return code in ("NoSuchKey", "404", "NotFound")

    def _is_missing_object(self, err: Any) -> bool:
        """For reads of data (size, open_range, iter_objects, the storage API): a missing
        bucket raises NoSuchBucket; else whether the key is missing."""
        if err.response.get("Error", {}).get("Code", "") == "NoSuchBucket":
            raise NoSuchBucket(f"no such bucket: {self.bucket}") from None
        return self._is_missing(err)

    def put(self, key: str, data: bytes) -> None:
        self._count("PUT")
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        self._count("PUT")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise

    def get(self, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        self._count("GET")
        kwargs = {"Bucket": self.bucket, "Key": key}
        if start is not None:
            kwargs["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
        try:
            return bytes(self.client.get_object(**kwargs)["Body"].read())
        except ClientError as err:
            if self._is_missing(err):
                raise NotFound(key) from None
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        self._count("HEAD")
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as err:
            if self._is_missing(err):
                return False
            raise

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        self._count("HEAD")
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as err:
            if self._is_missing(err):
                # HEAD has no error body: a 404 may be the bucket's. Ask once to say which.
                self._check_bucket()
                raise NotFound(key) from None
            raise

    def open_range(self, key: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        from botocore.exceptions import ClientError

        self._count("GET")
        if stop is not None and stop <= start:
            return io.BytesIO(b"")  # S3 refuses an empty range
        rng = f"bytes={start}-{'' if stop is None else stop - 1}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=rng)["Body"]
        except ClientError as err:
            if self._is_missing_object(err):
                raise NotFound(key) from None
            if err.response.get("Error", {}).get("Code") == "InvalidRange":
                return io.BytesIO(b"")  # at or past the end of the object
            raise
        return body  # type: ignore[no-any-return]  # botocore's StreamingBody: read(n), close()

    def iter_objects(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        from botocore.exceptions import ClientError

        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            self._count("LIST")
            try:
                resp = self.client.list_objects_v2(**kwargs)
            except ClientError as err:
                self._is_missing_object(err)  # raises NoSuchBucket for a missing bucket
                raise
            for obj in resp.get("Contents", []):
                yield obj["Key"], int(obj["Size"])
            if not resp.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def iter_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            self._count("LIST")
            resp = self.client.list_objects_v2(**kwargs)
            for obj in resp.get("Contents", []):
                yield obj["Key"], obj["LastModified"].timestamp()
            if not resp.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def touch(self, key: str) -> None:
        from botocore.exceptions import ClientError

        self._count("PUT")  # a COPY, billed as a PUT: the bytes stay in S3
        try:  # S3 copies an object onto itself only when something changes: its metadata
            self.client.copy_object(Bucket=self.bucket, Key=key,
                                    CopySource={"Bucket": self.bucket, "Key": key},
                                    MetadataDirective="REPLACE",
                                    Metadata={"touched": f"{time.time():.3f}"})
        except ClientError as err:
            if self._is_missing_object(err):
                raise NotFound(key) from None
            raise

    def delete(self, key: str) -> None:
        self._count("DELETE")
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        self._count("HEAD")
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code", "") in ("404", "NoSuchBucket", "NotFound"):
                raise NoSuchBucket(f"no such bucket: {self.bucket}") from None
            raise

    def list(self, prefix: str, start_after: str | None = None) -> builtins.list[str]:
        out: builtins.list[str] = []
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            self._count("LIST")
            resp = self.client.list_objects_v2(**kwargs)
            out.extend(obj["Key"] for obj in resp.get("Contents", []))
            if not resp.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def children(self, prefix: str) -> builtins.list[str]:
        prefix = prefix.rstrip("/") + "/"
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
        out: builtins.list[str] = []
        while True:
            self._count("LIST")
            resp = self.client.list_objects_v2(**kwargs)
            out.extend(p["Prefix"][len(prefix):].rstrip("/") for p in resp.get("CommonPrefixes", []))
            out.extend(o["Key"][len(prefix):] for o in resp.get("Contents", []))
            if not resp.get("IsTruncated"):
                return sorted(out)
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            self._count("DELETE")
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        return len(keys)

    def describe(self) -> dict[str, Any]:
        desc: dict[str, Any] = {"kind": "s3", "bucket": self.bucket}
        if self.region:
            desc["region"] = self.region
        if self.endpoint_url:
            desc["endpoint_url"] = self.endpoint_url
        if self.profile:
            desc["profile"] = self.profile
        return desc


def storage_from_description(desc: dict[str, Any]) -> Storage:
    """Rebuild a storage from ``describe()`` output (what an event carries)."""
    kind = desc.get("kind")
    if kind == "local":
        return LocalStorage(desc["root"])
    if kind == "s3":
        return S3Storage(desc["bucket"], region=desc.get("region"),
                         endpoint_url=desc.get("endpoint_url"), profile=desc.get("profile"))
    raise ValueError(f"unknown storage kind {kind!r}")


class CountingView(Storage):
    """A view of a storage that counts the requests made through it (one job's share)."""

    def __init__(self, storage: Storage):
        super().__init__()
        self.inner = storage
        self.kind = storage.kind

    @property
    def counts(self) -> dict[str, int]:
        return self.request_counts

    def add_counts(self, counts: dict[str, int]) -> None:
        """Count requests made for this job through another storage (a data listing)."""
        for op, n in counts.items():
            if n:
                self._count(op, n)

    def put(self, key: str, data: bytes) -> None:
        self._count("PUT")
        self.inner.put(key, data)

    def put_parts(self, key: str, parts: Iterable[bytes | memoryview]) -> None:
        self._count("PUT")
        self.inner.put_parts(key, parts)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._count("PUT")
        return self.inner.put_if_absent(key, data)

    def get(self, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        self._count("GET")
        return self.inner.get(key, start, stop)

    def exists(self, key: str) -> bool:
        self._count("HEAD")
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        self._count("HEAD")
        return self.inner.size(key)

    def open_range(self, key: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        self._count("GET")
        return self.inner.open_range(key, start, stop)

    def iter_objects(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        self._count("LIST")
        return self.inner.iter_objects(prefix, start_after)

    def iter_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        self._count("LIST")
        return self.inner.iter_modified(prefix)

    def touch(self, key: str) -> None:
        self._count("PUT")
        self.inner.touch(key)

    def delete(self, key: str) -> None:
        self._count("DELETE")
        self.inner.delete(key)

    def list(self, prefix: str, start_after: str | None = None) -> builtins.list[str]:
        self._count("LIST")
        return self.inner.list(prefix, start_after)

    def children(self, prefix: str) -> builtins.list[str]:
        self._count("LIST")
        return self.inner.children(prefix)

    def delete_prefix(self, prefix: str) -> int:
        self._count("DELETE")
        return self.inner.delete_prefix(prefix)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()
