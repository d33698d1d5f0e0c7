"""Large captured values: stored once, content-addressed, loaded once per warm worker.

A notebook global of hundreds of MB would otherwise travel inside the function blob of
every job that reads it. The host stores its pickle on its own at
``<prefix>/values/<sha256>.pickle`` (once: an existing key is not uploaded again) and the
task's namespace holds a ``StoredValue`` naming it; a worker loads it the first time a task
needs it, checks it against its sha256 before unpickling (nothing read from storage is
trusted unverified), and keeps it for the next tasks of that warm process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import types
from collections.abc import Iterator
from typing import Any

from . import context, integrity, protocol
from .cleanup import refresh_or_put
from .storage import Storage, storage_from_description

_values: dict[str, Any] = {}  # sha256 -> the loaded value, for this warm process
_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class StoredValue:
    """A reference to a stored value: its key, its pickle's sha256 and size."""

    key: str
    sha256: str
    size: int


def stash(storage: Storage, prefix: str, blob: bytes) -> StoredValue:
    """Store ``blob`` (a value's pickle, already screened) under its sha256, unless it is
    there already (then only its last-modified time is refreshed, which keeps it from
    `cloudbutton clean`); the reference a task's namespace carries instead of the value."""
    digest = integrity.sha256(blob)
    key = protocol.value_key(prefix, digest)
    refresh_or_put(storage, key, blob)
    return StoredValue(key, digest, len(blob))


def load(ref: StoredValue, storage: Storage | None = None) -> Any:
    """The value ``ref`` names: from this process's cache, else read (from the running
    task's job storage unless ``storage`` is given), verified and unpickled once."""
    with _lock:
        if ref.sha256 in _values:
            return _values[ref.sha256]
        if storage is None:
            task = context.current_task()
            if task is None:
                raise RuntimeError(f"{ref.key} can be loaded inside a task only (or pass storage=)")
            storage = storage_from_description(task["storage"])
        blob = storage.get(ref.key)
        integrity.check_content(blob, ref.sha256, f"the stored value {ref.key}")
        import cloudpickle

        value = _values[ref.sha256] = cloudpickle.loads(blob)
        return value


# The job storage a worker is reading a function blob from (see ``reading_from``).
_reading: threading.local = threading.local()


@contextlib.contextmanager
def reading_from(storage: Storage, prefix: str) -> Iterator[None]:
    """While a worker unpickles a function blob: where the large values it names are."""
    _reading.where = (storage, prefix)
    try:
        yield
    finally:
        _reading.where = None


def load_digest(digest: str) -> Any:
    """Unpickling a function blob whose global was stored apart (``is_large``): the value,
    loaded once per process (the blob names it by its sha256 only)."""
    where = getattr(_reading, "where", None)
    if where is None:
        raise RuntimeError(f"a stored value ({digest[:16]}…) is loaded by a worker reading its function")
    storage, prefix = where
    return load(StoredValue(protocol.value_key(prefix, digest), digest, 0), storage)


def cell_of(digest: str) -> Any:
    """A closure's cell holding a stored value (``load_digest``)."""
    return types.CellType(load_digest(digest))


def is_large(obj: Any, limit: int = protocol.LARGE_VALUE_BYTES) -> bool:
    """Whether ``obj`` is a bytes, bytearray or numpy array over ``limit`` bytes (its size
    is known without pickling). Values of any other type are measured by pickling them
    (``job_modules``): a by-value function's globals, defaults and closure values."""
    t = type(obj)
    if t is bytes or t is bytearray:
        return len(obj) > limit
    return t.__module__ == "numpy" and t.__name__ == "ndarray" and obj.nbytes > limit


def resolve(namespace: dict[str, Any]) -> dict[str, Any]:
    """``namespace`` with every ``StoredValue`` replaced by its value."""
    if not any(isinstance(v, StoredValue) for v in namespace.values()):
        return namespace
    return {k: load(v) if isinstance(v, StoredValue) else v for k, v in namespace.items()}
