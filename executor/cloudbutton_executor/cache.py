"""The per-item result cache, kept in the job's storage (S3 on Lambda).

A job run with ``cache=True`` looks up each item before anything is sent, and
only computes the items it does not find: new ones, changed ones, and those
that failed before (failures are never cached). What it computes is added.

Keys (sha256, 64 hex digits, never truncated):

- the function's identity: its pickle as cloudpickle makes it (without code
  objects' file names: a notebook cell's code lives in
  ``/tmp/ipykernel_<pid>/<hash>.py`` and the pid changes with every kernel), with a
  ``%%cloud`` cell's label left out (``In[5]`` changes with every run). So
  it covers the code of the function and of everything it calls by value,
  the values it captured (a cell's captured names, closures, globals), your
  local modules' code; plus the installed version of every module it imports
  (``job_modules`` finds them) and the Python version;
- an item's key: the function's identity and the item's pickled bytes.

Storage: ``<prefix>/cache/<function identity>/<job id>-<n>.entry``, one object
per job and flush (at most one a second, and one when the job ends), never one
per item. An entry is a sealed JSON header (``integrity.seal``: HMAC-SHA256
under a key derived from this host's key), a newline, then the result blobs of
the tasks it covers exactly as their workers stored them; the header names each
blob's sha256 and which of its items succeeded, with their original timings
and stdout. A lookup lists the function's entries, verifies each header's seal
and each blob's sha256, and only then unpickles a blob. An entry that does not
verify (written by another host key, or tampered with) is skipped: it is a miss.

Another machine sharing the bucket reuses the entries only if it holds the same
host key (``~/.cloudbutton/host.key``, or ``$CLOUDBUTTON_KEY_FILE``): copy that
file (mode 0600) to it. Without it its lookups miss and it writes entries of
its own.

Results that cannot be trusted to repeat (random numbers without a seed, the
time, anything read from the network or a file that changes) are cached like
any other: caching them is the user's choice.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import hmac
import json
import logging
import pickle
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import cloudpickle

from . import accounting, integrity, protocol, serialize
from .errors import IntegrityError
from .interrupt import block_interrupts
from .storage import NotFound, Storage

log = logging.getLogger("cloudbutton.cache")

FLUSH_S = 1.0  # a running job writes what it computed at most this often
_KEY_LABEL = b"cloudbutton result cache v1"
_HEAD_END = b"\n"  # a sealed JSON document has no raw newline: the header ends at the first


# Keys ---------------------------------------------------------------------------------------
def cache_key() -> bytes:
    """The key that seals cache entries: HKDF-SHA256 of the host key, for the cache."""
    prk = hmac.digest(b"cloudbutton cache", integrity.host_key(), "sha256")
    return hmac.digest(prk, _KEY_LABEL + b"\x01", "sha256")


class _IdentityPickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no types
    """Pickles a function as cloudpickle does (which leaves out code objects' file names),
    minus a cell's label, which changes between runs of the same code."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj).__name__ == "CellTask" and type(obj).__module__ == "cloudbutton_executor.cell":
            return _cell_identity, (obj.code, obj.namespace, obj.name, obj.mode, obj.assigned)
        return super().reducer_override(obj)


def _cell_identity(*fields: Any) -> tuple[Any, ...]:  # pragma: no cover - never unpickled
    return fields


def module_versions(modules: Iterable[str]) -> dict[str, str]:
    """The installed version of each module (its distribution's, else ``__version__``)."""
    from importlib import metadata

    try:
        dists = metadata.packages_distributions()
    except Exception:  # pragma: no cover - broken metadata
        dists = {}
    out = {}
    for name in sorted(set(modules)):
        version = None
        for dist in dists.get(name, ()):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        if version is None:
            version = str(getattr(sys.modules.get(name), "__version__", "") or "unknown")
        out[name] = version
    return out


def function_identity(fn: Any, modules: Iterable[str]) -> str:
    """The cache identity of ``fn`` (see the module docstring)."""
    import io

    buf = io.BytesIO()
    with serialize._local_modules_by_value():
        _IdentityPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
    h = hashlib.sha256(buf.getvalue())
    h.update(json.dumps({"python": list(sys.version_info[:2]),
                         "modules": module_versions(modules)}, sort_keys=True).encode())
    return h.hexdigest()


def item_keys(identity: str, payloads: Sequence[serialize.Payload]) -> list[str]:
    """Each item's cache key: sha256 of the function's identity and the item's pickle."""
    head = identity.encode() + b"\x00"
    out = []
    for p in payloads:
        h = hashlib.sha256(head)
        if isinstance(p, (bytes, bytearray, memoryview)):
            h.update(p)
        else:
            for part in serialize.flatten([p]):
                h.update(part)
        out.append(h.hexdigest())
    return out


def prefix_of(prefix: str, identity: str | None = None) -> str:
    root = f"{prefix}/cache/"
    return root if identity is None else f"{root}{identity}/"


# Entries ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Hit:
    value: Any
    info: dict[str, Any]  # job_id, task, stats (original timings), stdout


def _entry(key: bytes, name: str, header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    return integrity.seal(key, name, header) + _HEAD_END + b"".join(blobs)


def _open_entry(key: bytes, name: str, raw: bytes) -> tuple[dict[str, Any], bytes]:
    end = raw.find(_HEAD_END)
    if end < 0:
        raise IntegrityError(f"the cache entry {name} has no header")
    header = integrity.open_sealed(key, name, raw[:end], "the cache entry")
    return header, raw[end + 1:]


class ResultCache:
    """One function's cached results in one storage."""

    def __init__(self, storage: Storage, prefix: str, identity: str):
        self.storage = storage
        self.prefix = prefix
        self.identity = identity
        self.key = cache_key()
        self.lookup_s = 0.0  # time the last lookup took (for the benchmark and the widget)

    def lookup(self, keys: Sequence[str]) -> dict[int, Hit]:
        """The cached results of the items whose keys are ``keys``, by position."""
        t0 = time.perf_counter()
        wanted: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            wanted.setdefault(k, []).append(i)
        hits: dict[int, Hit] = {}
        names = self.storage.list(prefix_of(self.prefix, self.identity))
        if names:
            from .dispatch import FETCH_THREADS

            # A pool for this lookup alone (as the dispatcher's polls): no thread outlives it.
            with cf.ThreadPoolExecutor(max_workers=min(len(names), FETCH_THREADS),
                                       thread_name_prefix="cloudbutton-cache",
                                       initializer=block_interrupts) as pool:
                raws = list(pool.map(self._get, names))
            for name, raw in zip(names, raws, strict=True):
                if raw is not None:
                    self._take(name, raw, wanted, hits)
        self.lookup_s = time.perf_counter() - t0
        return hits

    def _get(self, name: str) -> bytes | None:
        try:
            return self.storage.get(name)
        except NotFound:  # cleared meanwhile
            return None

    def _take(self, name: str, raw: bytes, wanted: dict[str, list[int]],
              hits: dict[int, Hit]) -> None:
        try:
            header, body = _open_entry(self.key, protocol.object_name(self.prefix, name), raw)
            if header.get("identity") != self.identity:
                raise IntegrityError(f"the cache entry {name} is another function's")
        except (IntegrityError, ValueError) as err:
            log.warning("cache: skipping %s: %s", name, err)
            return
        for part in header.get("parts") or ():
            ok = [k for k in part["ok"] if part["keys"][k] in wanted
                  and any(i not in hits for i in wanted[part["keys"][k]])]
            if not ok:
                continue
            blob = body[part["off"]:part["off"] + part["len"]]
            try:
                integrity.check_content(blob, part["sha256"], f"a result in the cache entry {name}")
            except IntegrityError as err:
                log.warning("cache: skipping part of %s: %s", name, err)
                continue
            outcomes = pickle.loads(blob)
            times = part.get("times") or []
            for k in ok:
                stats = dict(part.get("stats") or {})
                if k < len(times):
                    stats["compute_start"], stats["compute_done"] = times[k]
                info = {"job_id": header.get("job_id"), "task": part.get("task"),
                        "stats": stats, "stdout": (part.get("stdout") or {}).get(str(k), "")}
                for i in wanted[part["keys"][k]]:
                    hits.setdefault(i, Hit(outcomes[k][1], info))


class CacheWriter:
    """Adds what a job computes to the cache: its tasks' result blobs as stored, batched
    into one entry object per flush."""

    def __init__(self, storage: Storage, prefix: str, identity: str, job_id: str,
                 keys: Sequence[str]):
        self.storage = storage
        self.prefix = prefix
        self.identity = identity
        self.job_id = job_id
        self.keys = keys
        self.key = cache_key()
        self.written = 0  # entry objects written
        self._parts: list[tuple[dict[str, Any], bytes]] = []
        self._seq = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, status: dict[str, Any], blob: bytes, ok: Sequence[int]) -> None:
        """A task's verified status, its result blob, and the positions of its items that
        succeeded (relative to the task's first item)."""
        if not ok:
            return
        tid = status["task"]
        a, b = protocol.task_range(tid)
        cols = protocol.item_columns(status)
        stats = {k: v for k, v in (status.get("stats") or {}).items()
                 if k in ("host_submit", "worker_start", "setup_done", "compute_done",
                          "result_stored", "cold_start", "init_s", "peak_mem_mb")}
        known = protocol.item_times(cols)
        times = [list(known[k]) if k < len(known) else [None, None] for k in range(b - a)]
        stdout = {str(int(i) - a): text for i, text in (cols.get("stdout") or {}).items()}
        part = {"task": tid, "keys": list(self.keys[a:b]), "ok": list(ok), "stats": stats,
                "times": times, "stdout": stdout, "sha256": integrity.sha256(blob), "len": len(blob)}
        with self._lock:
            self._parts.append((part, blob))

    def flush(self, force: bool = False) -> bool:
        """Write what was added since the last flush (if ``FLUSH_S`` passed, or ``force``)."""
        with self._lock:
            if not self._parts or (not force and time.monotonic() - self._last < FLUSH_S):
                return False
            parts, self._parts = self._parts, []
            self._last = time.monotonic()
            self._seq += 1
            seq = self._seq
        off = 0
        for part, blob in parts:
            part["off"] = off
            off += len(blob)
        name = f"{prefix_of(self.prefix, self.identity)}{self.job_id}-{seq:06d}.entry"
        header = {"v": 1, "identity": self.identity, "job_id": self.job_id, "created": time.time(),
                  "parts": [p for p, _ in parts]}
        self.storage.put(name, _entry(self.key, protocol.object_name(self.prefix, name), header,
                                      [blob for _, blob in parts]))
        self.written += 1
        return True


# Earlier runs' timings (for a billed job's estimate) ----------------------------------------
def timings_key(prefix: str, identity: str) -> str:
    return f"{prefix}/timings/{identity}.json"


def write_timings(storage: Storage, prefix: str, identity: str, usage: accounting.Usage,
                  items: int, wall_s: float) -> None:
    """What computing ``items`` items of this function used (a finished job leaves it)."""
    key = timings_key(prefix, identity)
    doc = {"v": 1, "identity": identity, "items": items, "wall_s": wall_s,
           "usage": dataclasses.asdict(usage)}
    storage.put(key, integrity.seal(cache_key(), protocol.object_name(prefix, key), doc))


def read_timings(storage: Storage, prefix: str,
                 identity: str) -> tuple[accounting.Usage, int, float] | None:
    """``(usage, items, wall seconds per invocation)`` of the last run of this function,
    verified; None if there is none (or it does not verify)."""
    key = timings_key(prefix, identity)
    try:
        doc = integrity.open_sealed(cache_key(), protocol.object_name(prefix, key),
                                    storage.get(key), "the timings")
    except NotFound:
        return None
    except IntegrityError as err:
        log.warning("cache: %s", err)
        return None
    if doc.get("identity") != identity or not doc.get("items"):
        return None
    return accounting.Usage(**doc["usage"]), int(doc["items"]), float(doc.get("wall_s") or 0.0)


# Listing and clearing -----------------------------------------------------------------------
def list_functions(storage: Storage, prefix: str) -> list[dict[str, Any]]:
    """Each cached function: its identity, how many entry objects, the newest job."""
    root = prefix_of(prefix)
    out: dict[str, dict[str, Any]] = {}
    for name in storage.list(root):
        identity, _, entry = name[len(root):].partition("/")
        if not entry.endswith(".entry"):
            continue
        row = out.setdefault(identity, {"identity": identity, "entries": 0, "newest_job": ""})
        row["entries"] += 1
        row["newest_job"] = max(row["newest_job"], entry.rsplit("-", 1)[0])
    return sorted(out.values(), key=lambda r: r["newest_job"], reverse=True)


def clear(storage: Storage, prefix: str, identity: str | None = None) -> int:
    """Delete the cache (of one function, if ``identity``); returns how many objects."""
    if identity is not None and not protocol.is_digest(identity):
        raise ValueError(f"not a cache identity (64 hex digits): {identity!r}")
    return storage.delete_prefix(prefix_of(prefix, identity))


def format_listing(rows: Sequence[dict[str, Any]]) -> str:
    """``list_functions``' rows as the text ``%cloud cache list`` and ``cloudbutton cache
    list`` print."""
    if not rows:
        return "the result cache is empty"
    lines = [f"{'FUNCTION IDENTITY':<64}  {'ENTRIES':>7}  NEWEST JOB"]
    lines += [f"{r['identity']:<64}  {r['entries']:>7}  {r['newest_job']}" for r in rows]
    return "\n".join(lines)
