"""A data-driven map's inputs: storage locations, listed once on the host, split into chunks.

``Executor.map(fn, "s3://bucket/prefix/")`` (or a list of ``s3://`` keys, or on the
local backend a directory or a glob) runs ``fn`` once per chunk of every object found.
Everything is decided here, before anything is uploaded or invoked: each location is
listed once (page by page: a prefix of 10,000 keys costs 10 LISTs), a missing bucket
or key is an error naming it, and the partitions travel to the tasks as their
inputs. No task ever lists a bucket.

The forms follow Lithops' data processing (its code ports unchanged): the function
gets the chunk as its parameter named ``obj`` (or, when it has none, as its first
argument); iterdata may also be dicts whose ``"obj"`` is a location, the other keys
going to every chunk of it as keyword arguments; ``obj_chunk_size`` (bytes) or
``obj_chunk_number`` (chunks per object) split objects, at line boundaries unless
``obj_newline=None``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import inspect
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .partitions import DataPartition, s3_for
from .storage import NoSuchBucket, NotFound, S3Storage

_WILDCARDS = "*?["


class DataLocationError(ValueError):
    """A storage location cannot be mapped over; the message names it."""


@dataclasses.dataclass(frozen=True)
class S3Service:
    """The S3 service data buckets live in: what the host lists with (its own credentials,
    ``session``) and what workers read with (their role, or locally the host's chain)."""

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None     # passed to local workers only: Lambda has its role
    session: Any = dataclasses.field(default=None, compare=False)

    def worker_source(self, with_profile: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "s3"}
        if self.region:
            out["region"] = self.region
        if self.endpoint_url:
            out["endpoint_url"] = self.endpoint_url
        if with_profile and self.profile:
            out["profile"] = self.profile
        return out

    def bucket(self, name: str) -> S3Storage:
        if self.session is not None:
            return S3Storage(name, region=self.region, endpoint_url=self.endpoint_url,
                             session=self.session)
        return s3_for(self.worker_source(True), name)


def is_location(value: Any) -> bool:
    """Whether a string names storage (``s3://...``) or a local path, not a task input."""
    return isinstance(value, str) and (value.startswith("s3://") or value.startswith(("/", "./", "../", "~")))


def obj_parameter(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a parameter named ``obj`` (Lithops' mark of a data function)."""
    try:
        return "obj" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def wants_data(fn: Callable[..., Any], iterdata: Any) -> bool:
    """Whether ``map(fn, iterdata)`` is a data-driven map: a single location (a string is
    no iterable of inputs), or, for a function with an ``obj`` parameter, a list of
    locations or of dicts whose ``"obj"`` is one."""
    if isinstance(iterdata, str):
        return True
    if not obj_parameter(fn) or not isinstance(iterdata, (list, tuple)) or not iterdata:
        return False
    return all(is_location(x) or (isinstance(x, dict) and is_location(x.get("obj")))
               for x in iterdata)


@dataclasses.dataclass
class Plan:
    """What a data-driven map runs: one call per partition, and what listing cost."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    partitions: int
    objects: int
    bytes: int
    requests: dict[str, int]


def plan(fn: Callable[..., Any], iterdata: Any, *, chunk_size: int | None, chunk_number: int | None,
         newline: str | None, local_files: bool, s3: S3Service, lambda_workers: bool,
         extra_args: tuple[Any, ...] | dict[str, Any] | None = None) -> Plan:
    """The calls of a data-driven map (see the module docstring); raises before anything
    runs for a location that names nothing."""
    if chunk_size is not None and chunk_number is not None:
        raise TypeError("give obj_chunk_size or obj_chunk_number, not both")
    if newline is not None and (not isinstance(newline, str) or len(newline.encode()) != 1):
        raise ValueError(f"obj_newline must be one character (or None for exact byte ranges), "
                         f"got {newline!r}")
    entries = [iterdata] if isinstance(iterdata, str) else list(iterdata)
    by_keyword = obj_parameter(fn)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    counters: dict[str, int] = {}
    n_objects = n_bytes = 0
    source = s3.worker_source(with_profile=not lambda_workers)
    for entry in entries:
        params: dict[str, Any] = {}
        if isinstance(entry, dict):
            params = {k: v for k, v in entry.items() if k != "obj"}
            entry = entry.get("obj")
        if not isinstance(entry, str) or not is_location(entry):
            raise DataLocationError(f"{entry!r} is not a storage location: give 's3://bucket/prefix/', "
                                    "'s3://bucket/key' or (local backend) a directory or glob")
        objects: Iterator[tuple[str | None, str, str | None, int]]
        if entry.startswith("s3://"):
            objects = _s3_objects(entry, s3, counters)
        else:
            if not local_files:
                raise DataLocationError(
                    f"{entry!r} is a local path: only the local backend's workers can read it. "
                    "Upload the data to S3 and map over 's3://bucket/prefix/'")
            objects = _local_objects(entry)
        found = 0
        for bucket, key, path, size in objects:
            found += 1
            n_objects += 1
            n_bytes += size
            src = {"kind": "file"} if path is not None else source
            for p in split(src, bucket, key, path, size, chunk_size, chunk_number, newline):
                kwargs = dict(params)
                args: tuple[Any, ...] = ()
                if by_keyword:
                    kwargs["obj"] = p
                else:
                    args = (p,)
                if extra_args is not None:
                    if isinstance(extra_args, dict):
                        kwargs.update(extra_args)
                    else:
                        args = args + tuple(extra_args)
                calls.append((args, kwargs))
        if not found:
            raise NotFound(f"no objects in {entry}")
    return Plan(calls=calls, partitions=len(calls), objects=n_objects, bytes=n_bytes,
                requests=counters)


def split(source: dict[str, Any], bucket: str | None, key: str, path: str | None, size: int,
          chunk_size: int | None, chunk_number: int | None,
          newline: str | None) -> Iterator[DataPartition]:
    """The chunks of one object: ``chunk_number`` of them (as equal as whole bytes allow),
    or of ``chunk_size`` bytes, or the whole object; an empty object is one empty chunk."""
    if chunk_number:
        step = max(1, math.ceil(size / chunk_number))
    elif chunk_size:
        step = chunk_size
    else:
        step = max(1, size)
    starts = range(0, size, step) if size else range(1)
    total = len(starts)
    for part, start in enumerate(starts, 1):
        yield DataPartition(source, bucket=bucket, key=key, path=path, size=size, start=start,
                            stop=min(size, start + step), part=part, total_parts=total,
                            newline=newline)


# Listing -------------------------------------------------------------------------------------
def parse_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/rest`` -> ``(bucket, rest)``."""
    bucket, _, rest = url[len("s3://"):].partition("/")
    if not bucket:
        raise DataLocationError(f"{url!r} names no bucket: write s3://bucket/prefix/")
    return bucket, rest


def _add(counters: dict[str, int], st: S3Storage, before: dict[str, int]) -> None:
    for k, v in st.request_counts.items():
        counters[k] = counters.get(k, 0) + v - before.get(k, 0)


def _s3_objects(url: str, s3: S3Service, counters: dict[str, int]
                ) -> Iterator[tuple[str, str, None, int]]:
    """``(bucket, key, None, size)`` of what ``url`` names: every key under a prefix (one
    paginated listing), the keys matching a glob, or one key (one HEAD)."""
    bucket, rest = parse_s3(url)
    st = s3.bucket(bucket)
    before = st.request_counts
    try:
        wild = min((rest.index(c) for c in _WILDCARDS if c in rest), default=None)
        if rest == "" or rest.endswith("/"):
            for key, size in st.iter_objects(rest):
                if not key.endswith("/"):  # a "folder" marker is no data
                    yield bucket, key, None, size
        elif wild is not None:
            for key, size in st.iter_objects(rest[:wild]):
                if fnmatch.fnmatchcase(key, rest) and not key.endswith("/"):
                    yield bucket, key, None, size
        else:
            try:
                size = st.size(rest)
            except NoSuchBucket:
                raise
            except NotFound:
                raise NotFound(f"no such key: {url} (a prefix ends with '/')") from None
            yield bucket, rest, None, size
    except NoSuchBucket:
        raise NoSuchBucket(f"no such bucket: {bucket} (in {url})") from None
    finally:
        _add(counters, st, before)


def _local_objects(path: str) -> Iterator[tuple[None, str, str, int]]:
    """``(None, path, path, size)`` of the files a directory holds (all the way down, in
    name order, as an S3 prefix lists), that a glob matches, or of one file."""
    full = os.path.abspath(os.path.expanduser(path))
    if any(c in path for c in _WILDCARDS):
        names: Iterable[str] = sorted(glob.glob(full, recursive=True))
    elif os.path.isdir(full):
        names = sorted(os.path.join(d, f) for d, _dirs, files in os.walk(full) for f in files)
    elif os.path.exists(full):
        names = [full]
    else:
        raise NotFound(f"no such file or directory: {path}")
    for name in names:
        if os.path.isfile(name):
            yield None, name, name, os.path.getsize(name)
