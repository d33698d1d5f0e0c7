"""One task's slice of a storage object: what a data-driven map hands its function as ``obj``.

A ``DataPartition`` is plain data (where the object is, which bytes are the task's);
the host makes them from one listing, and each travels to its task in the task's
inputs (a few hundred bytes, never credentials). ``obj.data_stream`` opens the
slice on the worker, streaming it with ranged GETs (S3) or reads (a local file),
the first time it is asked for.

Text is split at line boundaries as Lithops does: a chunk ``[start, stop)`` owns
every line that *starts* inside it. Its reader skips the partial line it starts
in (unless the byte before ``start`` ends a line), and reads on past ``stop`` to
the end of the line that straddles it, so that every line is read by exactly one
task whatever the chunk size, and no task reads more than its chunk and one line.
"""
from __future__ import annotations

import io
import threading
import time
from typing import Any, BinaryIO

from . import context
from .storage import S3Storage

BLOCK = 1 << 20        # bytes read from the source at a time
LOOKAHEAD = 64 * 1024  # the first GET reaches this far past the chunk, for its last line


class DataPartition:
    """A chunk ``[start, stop)`` of an object (Lithops' ``CloudObject`` as a map's ``obj``).

    ``bucket``/``key`` name an S3 object; ``path`` a local file (then ``bucket`` is
    None and ``key`` is the path too). ``part`` counts from 1 to ``total_parts`` within
    its object; ``data_byte_range`` is ``(first byte, last byte)``, inclusive, as in
    Lithops. ``newline`` is the line separator the chunk is aligned to (None: exact
    byte ranges).
    """

    __slots__ = ("source", "bucket", "key", "path", "size", "start", "stop", "part", "total_parts",
                 "newline", "_stream", "_lock")

    def __init__(self, source: dict[str, Any], *, bucket: str | None, key: str, path: str | None,
                 size: int, start: int, stop: int, part: int, total_parts: int,
                 newline: str | None):
        # How to reach it: {"kind": "s3", region, endpoint_url[, profile]} or {"kind": "file"}.
        self.source = source
        self.bucket = bucket
        self.key = key
        self.path = path
        self.size = size
        self.start = start
        self.stop = stop
        self.part = part
        self.total_parts = total_parts
        self.newline = newline
        self._stream: io.BufferedReader | None = None
        self._lock = threading.Lock()

    # What Lithops' objects show ---------------------------------------------------------
    @property
    def data_byte_range(self) -> tuple[int, int]:
        return (self.start, self.stop - 1)

    @property
    def chunk_size(self) -> int:
        return self.stop - self.start

    @property
    def url(self) -> str:
        return self.path if self.path is not None else f"s3://{self.bucket}/{self.key}"

    @property
    def data_stream(self) -> io.BufferedReader:
        """The chunk's bytes as a binary file (``read()``, ``readline()``, iteration),
        opened on first use; the same stream every time it is asked for."""
        with self._lock:
            if self._stream is None:
                raw = ChunkReader(_opener(self), self.size, self.start, self.stop, self.newline)
                self._stream = io.BufferedReader(raw, buffer_size=BLOCK)
            return self._stream

    def __repr__(self) -> str:
        return (f"<DataPartition {self.url} part {self.part}/{self.total_parts} "
                f"bytes {self.start}-{self.stop - 1} of {self.size}>")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataPartition) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((self.url, self.start, self.stop))

    # Pickled as its plain fields: the stream is the worker's own -----------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._stream = None
        self._lock = threading.Lock()


# Where a chunk's bytes come from ---------------------------------------------------------
_clients: dict[tuple[Any, ...], S3Storage] = {}  # one S3 client per bucket and service, per process
_clients_lock = threading.Lock()


def s3_for(source: dict[str, Any], bucket: str) -> S3Storage:
    """This process's storage for ``bucket`` of the S3 service ``source`` describes."""
    key = (bucket, source.get("region"), source.get("endpoint_url"), source.get("profile"))
    with _clients_lock:
        st = _clients.get(key)
        if st is None:
            st = _clients[key] = S3Storage(bucket, region=source.get("region"),
                                           endpoint_url=source.get("endpoint_url"),
                                           profile=source.get("profile"))
        return st


def _opener(p: DataPartition) -> Any:
    """``open(a, b)`` -> a file-like object streaming bytes [a, b) of the partition's object."""
    if p.source.get("kind") == "file":
        assert p.path is not None
        path = p.path

        def open_file(a: int, b: int) -> BinaryIO:
            f = open(path, "rb")  # noqa: SIM115 - ChunkReader closes it
            f.seek(a)
            return f
        return open_file
    assert p.bucket is not None
    st = s3_for(p.source, p.bucket)
    key = p.key
    return lambda a, b: st.open_range(key, a, b)


class _Cursor:
    """Sequential reads of an object from ``pos`` on, through ranged opens: the first
    reaches ``end``; later ones (rarely needed: a line longer than the lookahead) grow."""

    def __init__(self, opener: Any, size: int, pos: int, end: int):
        self._open = opener
        self.size = size
        self.pos = pos
        self._end = min(size, end)
        self._src: BinaryIO | None = None
        self._step = LOOKAHEAD

    def read(self, n: int) -> bytes:
        if self.pos >= self.size or n <= 0:
            return b""
        began = time.perf_counter()
        if self.pos >= self._end or self._src is None:
            if self._src is not None:
                self._src.close()
                self._step *= 4  # a long line: take bigger steps
                self._end = min(self.size, self.pos + self._step)
            self._src = self._open(self.pos, self._end)
        assert self._src is not None
        data = self._src.read(min(n, self._end - self.pos))
        context.count_read(len(data), time.perf_counter() - began)  # the task's read throughput
        if not data:  # the object is shorter than its listing said
            self.size = self.pos
            return b""
        self.pos += len(data)
        return bytes(data)

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


class ChunkReader(io.RawIOBase):
    """The bytes of chunk ``[start, stop)`` of an object of ``size`` bytes, aligned to
    lines when ``newline`` is given (see the module docstring)."""

    def __init__(self, opener: Any, size: int, start: int, stop: int, newline: str | None):
        nl = newline.encode() if newline else None
        if nl is not None and len(nl) != 1:
            raise ValueError(f"newline must be one character, got {newline!r}")
        self._nl = nl
        self._start, self._stop = start, min(stop, size)
        first = start - 1 if nl is not None and start > 0 else start
        self._cur = _Cursor(opener, size, first, self._stop + (LOOKAHEAD if nl is not None else 0))
        self._phase = "start"
        self._buf = b""
        self._off = 0
        self._last = b""  # the last byte handed out

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while self._off >= len(self._buf):
            if not self._more():
                return 0
        n = min(len(view), len(self._buf) - self._off)
        view[:n] = self._buf[self._off:self._off + n]
        self._off += n
        return n

    def readall(self) -> bytes:
        parts = [self._buf[self._off:]]
        self._off = len(self._buf)
        while self._more():
            parts.append(self._buf)
            self._off = len(self._buf)
        return b"".join(parts)

    def close(self) -> None:
        self._cur.close()
        super().close()

    def _give(self, data: bytes) -> None:
        self._buf, self._off = data, 0
        if data:
            self._last = data[-1:]

    def _more(self) -> bool:
        """Put the next bytes of the chunk in the buffer; False once it is all read."""
        cur, nl = self._cur, self._nl
        if self._phase == "start":
            self._phase = "body"
            if nl is not None and self._start > 0 and cur.read(1) != nl:
                # The chunk starts inside a line, which the previous chunk reads: skip to
                # the first line that starts inside this chunk (before its last byte).
                while True:
                    block = cur.read(min(BLOCK, self._stop - 1 - cur.pos))
                    if not block:
                        self._phase = "done"  # no line starts here
                        return False
                    i = block.find(nl)
                    if i >= 0:
                        self._give(block[i + 1:])
                        return True
            return self._more()
        if self._phase == "body":
            block = cur.read(min(BLOCK, self._stop - cur.pos))
            if block:
                self._give(block)
                return True
            self._phase = "tail"
        if self._phase == "tail":
            if nl is None or self._last in (nl, b"") or cur.pos >= cur.size:
                self._phase = "done"
                return False
            block = cur.read(BLOCK)  # the rest of the line that straddles the chunk's end
            i = block.find(nl)
            if i >= 0:
                self._phase = "done"
                block = block[:i + 1]
            elif not block:
                self._phase = "done"
                return False
            self._give(block)
            return True
        return False
