"""Short reprs of a job's inputs, for views that never unpickle (the Jupyter panel).

The host computes them when it submits a map, from the values it is about to ship, and
stores them once beside the manifest (``protocol.inputs_shown_key``), sealed like it. The
panel reads them as JSON text: an input is shown, never rebuilt, so a tampered object can
at worst show a wrong string (the panel holds no key and says its figures are unverified).
"""
from __future__ import annotations

import itertools
import reprlib
from collections.abc import Iterable
from typing import Any

from . import protocol

class _BoundedRepr(reprlib.Repr):
    """reprlib has no rule for bytes-like objects and would repr a 100 MB input whole:
    only its head is shown, with its length."""

    def repr_bytes(self, x: bytes | bytearray, level: int) -> str:
        half = self.maxstring // 3  # room for the length within the repr's bound
        return repr(x) if len(x) <= half else f"{x[:half]!r}… ({len(x):,} bytes)"

    repr_bytearray = repr_bytes


def _repr() -> reprlib.Repr:
    r = _BoundedRepr()  # attributes, not keywords: Python 3.11's takes none
    r.maxlevel = 2
    r.maxtuple = r.maxlist = r.maxarray = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = 4
    r.maxstring = r.maxother = protocol.INPUT_REPR_CHARS
    r.maxlong = 40
    return r


_REPR = _repr()


def short_repr(value: Any) -> str:
    """At most ``INPUT_REPR_CHARS`` characters; a repr that raises is named by its type."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a user's __repr__ may fail: the job must not
        text = f"<{type(value).__qualname__} object>"
    limit = protocol.INPUT_REPR_CHARS
    return text if len(text) <= limit else text[:limit - 1] + "…"


# Types whose reprlib rendering is their plain repr whenever that is short enough.
_PLAIN = frozenset({int, float, bool, str, type(None)})
_PLAIN_CHARS = min(_REPR.maxlong, _REPR.maxstring, _REPR.maxother, protocol.INPUT_REPR_CHARS)


def reprs(items: Iterable[Any]) -> list[str]:
    """Short reprs of the first ``INPUT_REPRS_MAX`` items. A 1-tuple is the one argument
    its call gets (``fn(*t)``; a ``%%cloud map`` cell's item travels so): shown bare."""
    head = list(itertools.islice(items, protocol.INPUT_REPRS_MAX))
    if set(map(type, head)) <= _PLAIN:
        # Every map pays this before its first task: a head of numbers or short strings
        # (the common case) is repr'd in C, ~20x faster than reprlib item by item.
        texts = list(map(repr, head))
        if max(map(len, texts), default=0) <= _PLAIN_CHARS:
            return texts
    return [short_repr(x[0] if type(x) is tuple and len(x) == 1 else x) for x in head]


def document(job_id: str, shown: list[str]) -> dict[str, Any]:
    return {"v": protocol.PROTOCOL_VERSION, "job_id": job_id, "reprs": shown}


def read(doc: Any, job_id: str) -> list[str]:
    """The reprs of a stored document (read unverified by the panel): only strings, each
    bounded, and only if the document says it is this job's."""
    if not isinstance(doc, dict) or doc.get("job_id") != job_id or not isinstance(doc.get("reprs"), list):
        return []
    limit = protocol.INPUT_REPR_CHARS
    return [x[:limit] if isinstance(x, str) else "?" for x in doc["reprs"][:protocol.INPUT_REPRS_MAX]]
