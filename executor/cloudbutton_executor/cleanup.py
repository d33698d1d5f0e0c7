"""Which content-addressed objects no job needs any more: function blobs and large values.

``functions/<sha256>.pickle`` and ``values/<sha256>.pickle`` are shared between the jobs
that name them, so deleting a job leaves them; ``cloudbutton clean`` then deletes those no
remaining job names. A job names its function blob in its manifest, and its large values
by sha256 inside that blob (``largevalues``): both are read as bytes here, never unpickled.

A job being submitted stores its objects (or refreshes their last-modified time, see
``protocol.CONTENT_REFRESH_S``) before it writes its manifest, so for a moment nothing
names them yet: an object modified within ``protocol.CONTENT_GRACE_S`` is always kept.
"""
from __future__ import annotations

import time
from collections.abc import Collection

from . import catalog, protocol
from .storage import NotFound, Storage


def unreferenced(storage: Storage, prefix: str, *, excluding: Collection[str] = (),
                 now: float | None = None, grace_s: float = protocol.CONTENT_GRACE_S) -> list[str]:
    """Keys of the function blobs and values under ``prefix`` that no job (other than
    those in ``excluding``, about to be deleted) names and that are older than ``grace_s``."""
    cutoff = (time.time() if now is None else now) - grace_s
    old = [key for where in (protocol.functions_prefix(prefix), protocol.values_prefix(prefix))
           for key, modified in storage.iter_modified(where)
           if modified < cutoff and protocol.content_digest(key) is not None]
    if not old:
        return []
    function_keys = set()
    for job_id in catalog.job_ids(storage, prefix):
        if job_id in excluding:
            continue
        m = catalog.manifest(storage, prefix, job_id)
        key = m.get("function_key") if m is not None else None
        if isinstance(key, str):
            function_keys.add(key)
    values = {protocol.content_digest(k): k for k in old
              if k.startswith(protocol.values_prefix(prefix))}
    named = set(function_keys)
    for key in sorted(function_keys) if values else ():
        try:
            blob = storage.get(key)
        except NotFound:
            continue
        for digest in [d for d in values if d is not None and d.encode() in blob]:
            named.add(values.pop(digest))  # the blob names it (largevalues.load_digest)
    return [k for k in old if k not in named]


def refresh_or_put(storage: Storage, key: str, blob: bytes) -> None:
    """Make sure ``key`` holds a recent copy of content-addressed ``blob``: refresh its
    last-modified time if it exists (one request, no bytes sent), else store it."""
    try:
        storage.touch(key)
    except NotFound:
        storage.put(key, blob)
