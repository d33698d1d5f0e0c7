"""Large inputs without copies on the local backend: buffers out of band in host memory.

A numpy array's buffer (pickle protocol 5's ``PickleBuffer``), ``bytes`` or ``bytearray``
of at least ``THRESHOLD`` bytes in a local job's inputs is not pickled into the job's
``data.pickle``: the host writes it once into an anonymous memory file of its own
(``memfd_create``), and the pickle holds a reference to it (its pid, fd, name, offset,
length). A worker maps that file copy-on-write through ``/proc/<host pid>/fd/<fd>`` and
unpickles from the mapping: a numpy array is a view of it (writable, its writes private to
the task, as an unpickled copy's would be), ``bytes``/``bytearray`` are built from it.

The memory file never has a name in a file system: it is freed when the host closes it
(the job ended with no failed item, or the payloads that name it were released) or when
the host process dies in any way, SIGKILL included: nothing can be left in /dev/shm.
A worker checks the file it opened is the one named (its name holds a random token), so a
reused pid or fd number is refused rather than read. The references travel inside the job's
inputs, which the worker verifies like any other input bytes.
"""
from __future__ import annotations

import io
import mmap
import os
import pickle
import secrets
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

THRESHOLD = 1 << 20  # as joblib's default max_nbytes ("1M")
_TAG = "cloudbutton-oob"

_current = threading.local()  # the HostBuffers of the job being pickled in this thread


def available() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class HostBuffers:
    """One job's out-of-band buffers: an anonymous memory file, made when the first buffer
    comes, written as the inputs are pickled."""

    def __init__(self) -> None:
        self.name = f"cloudbutton-{secrets.token_hex(8)}"
        self.fd = -1
        self.size = 0
        self.count = 0
        self._lock = threading.Lock()
        self._closer: weakref.finalize[Any, Any] | None = None

    def add(self, data: memoryview) -> tuple[int, int]:
        """Store ``data`` (C-contiguous); returns its (offset, length)."""
        with self._lock:
            if self._closer is None:
                self.fd = os.memfd_create(self.name, getattr(os, "MFD_CLOEXEC", 1))
                self._closer = weakref.finalize(self, os.close, self.fd)
            elif not self._closer.alive:
                raise ValueError("these shared buffers have been released")
            offset = self.size
            view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
            done = 0
            while done < view.nbytes:
                done += os.pwrite(self.fd, view[done:], offset + done)
            self.size += view.nbytes
            self.count += 1
            return offset, view.nbytes

    def ref(self, kind: str, data: memoryview) -> tuple[Any, ...]:
        offset, length = self.add(data)
        return (_TAG, kind, os.getpid(), self.fd, self.name, offset, length)

    @property
    def closed(self) -> bool:
        return self._closer is not None and not self._closer.alive

    def close(self) -> None:
        """Free the memory (workers that still map it keep their mapping until they drop it)."""
        if self._closer is not None:
            self._closer()


@contextmanager
def collecting(buffers: HostBuffers | None) -> Iterator[None]:
    """While active (in this thread), ``persistent_id`` sends large buffers to ``buffers``."""
    previous = getattr(_current, "buffers", None)
    _current.buffers = buffers
    try:
        yield
    finally:
        _current.buffers = previous


def active() -> HostBuffers | None:
    return getattr(_current, "buffers", None)


def persistent_id(obj: Any) -> tuple[Any, ...] | None:
    """The reference that replaces ``obj`` in a pickle, or None to pickle it as usual."""
    buffers = active()
    if buffers is None:
        return None
    t = type(obj)
    if t is pickle.PickleBuffer:
        try:
            view = obj.raw()
        except BufferError:  # not contiguous: pickled as usual
            return None
        if view.nbytes >= THRESHOLD:
            return buffers.ref("buffer", view)
    elif (t is bytes or t is bytearray) and len(obj) >= THRESHOLD:
        return buffers.ref(t.__name__, memoryview(obj))
    return None


# Worker side ---------------------------------------------------------------------------
class OutOfBandError(OSError):
    """An out-of-band input cannot be read: the host that held it has ended."""


_maps: dict[tuple[int, int, str], mmap.mmap] = {}  # this invocation's mappings


def forget_maps() -> None:
    """Drop this invocation's mappings (arrays that still view one keep it alive)."""
    _maps.clear()


def _mapping(pid: int, fd: int, name: str) -> mmap.mmap:
    key = (pid, fd, name)
    found = _maps.get(key)
    if found is None:
        path = f"/proc/{int(pid)}/fd/{int(fd)}"
        try:
            if os.readlink(path) != f"/memfd:{name} (deleted)":
                raise FileNotFoundError(path)
            with open(path, "rb") as f:
                found = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as exc:
            raise OutOfBandError(
                f"an input of this task lived in the memory of host process {pid}, which no "
                f"longer holds it (the process ended, or released the job): {exc}") from None
        _maps[key] = found
    return found


def _load(pid_tuple: Any) -> Any:
    if (type(pid_tuple) is not tuple or len(pid_tuple) != 7 or pid_tuple[0] != _TAG):
        raise pickle.UnpicklingError(f"unknown persistent id {pid_tuple!r:.80}")
    _tag, kind, pid, fd, name, offset, length = pid_tuple
    m = _mapping(pid, fd, str(name))
    if offset < 0 or length < 0 or offset + length > len(m):
        raise pickle.UnpicklingError(f"an out-of-band input of {length} bytes at {offset} lies "
                                     f"outside its memory file ({len(m)} bytes)")
    view = memoryview(m)[offset:offset + length]
    if kind == "buffer":
        return view
    if kind == "bytes":
        return bytes(view)
    if kind == "bytearray":
        return bytearray(view)
    raise pickle.UnpicklingError(f"unknown out-of-band kind {kind!r:.40}")


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return _load(pid)


def loads(raw: Any, _plain: Callable[[Any], Any] = pickle.loads) -> Any:
    """``pickle.loads(raw)``, and for an input that names out-of-band buffers, the same
    with them mapped (the plain path first: most inputs name none)."""
    try:
        return _plain(raw)
    except pickle.UnpicklingError as exc:
        if "persistent" not in str(exc):
            raise
    return _Unpickler(io.BytesIO(raw)).load()
