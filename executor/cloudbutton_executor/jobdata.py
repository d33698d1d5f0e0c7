"""A job's inputs in storage: ``data.pickle`` and its index, verifiable block by block.

Every job stores its inputs before its first invocation, so that a host attaching
after a kernel restart can send what was never sent (small inputs still ride
inline in the events too: a worker then needs no GET). ``data.pickle`` is the
items' pickles end to end; ``data.index`` (JSON) holds each item's size and
item-aligned blocks of at most ``BLOCK_BYTES`` (whole tasks, for a fixed
chunksize) with their sha256. The job's sealed manifest names the index by its
sha256, so every block can be checked before anything in it is unpickled: a
worker that reads a byte range gets the digests of the blocks covering it in its
event; an attaching host checks the blocks it reads to send items inline.

The one pass of sha256 over the inputs is what this costs (about 1 GB/s).
"""
from __future__ import annotations

import array
import base64
import bisect
import hashlib
import itertools
import json
import sys
import zlib
from collections.abc import Sequence
from typing import Any

from . import integrity, protocol, serialize
from .errors import IntegrityError
from .storage import Storage

BLOCK_BYTES = 256 * 1024  # a task reading from storage fetches at most about this much extra
_CACHE_BYTES = 64 * 2 ** 20  # verified blocks an attaching host keeps for inline events


def _sizes_text(sizes: array.array[int]) -> str:
    data = sizes if sys.byteorder == "little" else _swapped(sizes)
    return base64.b64encode(zlib.compress(data.tobytes(), 6)).decode()


def _sizes_from_text(text: str) -> array.array[int]:
    sizes = array.array("Q")
    sizes.frombytes(zlib.decompress(base64.b64decode(text)))
    return sizes if sys.byteorder == "little" else _swapped(sizes)


def _swapped(a: array.array[int]) -> array.array[int]:
    b = array.array("Q", a)
    b.byteswap()
    return b


class JobInputs:
    """The items' byte layout in ``data.pickle`` and its blocks; the bytes themselves come
    from the payloads in memory (the submitting host) or from storage, verified."""

    def __init__(self, sizes: array.array[int], blocks: list[tuple[int, int, str]],
                 payloads: Sequence[serialize.Payload] | None = None):
        self.n = len(sizes)
        self.offsets = array.array("Q", itertools.accumulate(sizes, initial=0))
        self.sizes = sizes
        self.blocks = blocks                      # (first item, stop item, sha256)
        self._block_starts = [a for a, _b, _d in blocks]
        self.payloads = payloads
        self._source: tuple[Storage, str] | None = None  # (storage, data key) when loaded
        self._cache: dict[int, bytes] = {}
        self._cached = 0

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    # Making the index ----------------------------------------------------------------------
    @classmethod
    def from_payloads(cls, payloads: Sequence[serialize.Payload], chunksize: int | str) -> JobInputs:
        """The index of ``payloads``: blocks end on task boundaries for a fixed chunksize,
        on item boundaries otherwise; each is hashed once (``upload`` hashes them)."""
        sizes = array.array("Q", map(len, payloads))
        step = chunksize if isinstance(chunksize, int) else 1
        inputs = cls(sizes, [], payloads)
        offsets, blocks = inputs.offsets, inputs.blocks
        a = 0
        n = len(payloads)
        while a < n:
            b = min(n, a + step)  # at least one task
            # Then whole tasks (the last may be short) while the block stays small: up to
            # the last item boundary within BLOCK_BYTES of the block's start.
            far = bisect.bisect_right(offsets, offsets[a] + BLOCK_BYTES, b) - 1
            if far >= n:
                b = n
            elif far > b:
                b += (far - b) // step * step
            blocks.append((a, b, ""))  # hashed by upload()
            a = b
        inputs._block_starts = [a for a, _b, _d in blocks]
        return inputs

    def _hash_blocks(self) -> None:
        assert self.payloads is not None
        payloads = self.payloads
        for k, (a, b, _none) in enumerate(self.blocks):
            h = hashlib.sha256()
            if self.size(a, b) <= BLOCK_BYTES:
                h.update(serialize.join(payloads[a:b]))
            else:  # one big task: its parts as they are, without joining them
                for part in serialize.flatten(payloads[a:b]):
                    h.update(part)
            self.blocks[k] = (a, b, h.hexdigest())

    def index_document(self) -> bytes:
        return json.dumps({"v": 1, "n": self.n, "bytes": self.nbytes,
                           "sizes": _sizes_text(self.sizes),
                           "blocks": [list(b) for b in self.blocks]},
                          separators=(",", ":")).encode()

    def upload(self, storage: Storage, prefix: str, job_id: str) -> dict[str, Any]:
        """Store ``data.pickle`` (from its parts, no joined copy) and ``data.index``;
        returns what the manifest records about them."""
        assert self.payloads is not None
        # (Hashing in a thread while writing measured no faster on two busy cores.)
        self._hash_blocks()
        storage.put_parts(protocol.data_key(prefix, job_id), serialize.joined_runs(self.payloads))
        index = self.index_document()
        storage.put(protocol.data_index_key(prefix, job_id), index)
        return {"bytes": self.nbytes, "n": self.n, "index_sha256": integrity.sha256(index)}

    @classmethod
    def load(cls, storage: Storage, prefix: str, job_id: str, recorded: dict[str, Any]) -> JobInputs:
        """The inputs of a stored job, its index checked against the (verified) manifest's
        record of it; items are then read from storage block by block, verified."""
        raw = storage.get(protocol.data_index_key(prefix, job_id))
        integrity.check_content(raw, recorded["index_sha256"], f"the input index of job {job_id}")
        doc = json.loads(raw)
        inputs = cls(_sizes_from_text(doc["sizes"]), [tuple(b) for b in doc["blocks"]])
        if inputs.n != recorded.get("n", inputs.n) or inputs.nbytes != recorded["bytes"]:
            raise IntegrityError(f"the input index of job {job_id} disagrees with its manifest")
        inputs._source = (storage, protocol.data_key(prefix, job_id))
        return inputs

    # Reading --------------------------------------------------------------------------------
    def size(self, a: int, b: int) -> int:
        return int(self.offsets[b] - self.offsets[a])

    def covering(self, a: int, b: int) -> list[tuple[int, int, str]]:
        """``(byte start, byte stop, sha256)`` of the blocks that hold items [a, b)."""
        first = bisect.bisect_right(self._block_starts, a) - 1
        out = []
        for ia, ib, digest in self.blocks[first:]:
            if ia >= b:
                break
            out.append((int(self.offsets[ia]), int(self.offsets[ib]), digest))
        return out

    def item_bytes(self, a: int, b: int) -> bytes:
        """The pickles of items [a, b), end to end: from memory, or from storage once the
        blocks that hold them are verified."""
        if self.payloads is not None:
            return serialize.join(self.payloads[a:b])
        assert self._source is not None
        first = bisect.bisect_right(self._block_starts, a) - 1
        parts = []
        for k in range(first, len(self.blocks)):
            ia, ib, _digest = self.blocks[k]
            if ia >= b:
                break
            parts.append(self._block(k))
        blob = b"".join(parts)
        base = int(self.offsets[self.blocks[first][0]])
        return blob[int(self.offsets[a]) - base:int(self.offsets[b]) - base]

    def _block(self, k: int) -> bytes:
        hit = self._cache.get(k)
        if hit is not None:
            return hit
        assert self._source is not None
        storage, key = self._source
        ia, ib, digest = self.blocks[k]
        data = storage.get(key, int(self.offsets[ia]), int(self.offsets[ib]))
        integrity.check_content(data, digest, f"block {k} of {key}")
        if self._cached + len(data) > _CACHE_BYTES:
            self._cache.clear()
            self._cached = 0
        self._cache[k] = data
        self._cached += len(data)
        return data
