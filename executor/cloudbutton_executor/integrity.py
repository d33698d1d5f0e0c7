"""Integrity of what comes back from storage: nothing is trusted before it is verified.

Whoever can write to the bucket could otherwise plant a function blob that workers
run, or a status whose pickled result the host unpickles (code in the user's
kernel, which holds their credentials). So:

- content-addressed objects (``functions/<sha256>.pickle``, blocks of
  ``data.pickle``) are checked against their sha256 before anything loads them;
- what a job's workers and host write (statuses, crash reports, the manifest,
  the dispatch record) is sealed with an HMAC-SHA256 under a per-job key, and
  large results are named by their sha256 inside their sealed status;
- the per-job key travels only inside invoke events (to the workers of that job),
  never in storage. It is derived (HKDF-SHA256) from the job id and a host key
  kept in ``~/.cloudbutton/host.key`` (mode 0600, made on first use;
  ``$CLOUDBUTTON_KEY_FILE`` elsewhere), so ``attach`` after a kernel restart can
  verify the job again.

A sealed document stays plain JSON (the Jupyter panel reads it without the key):
``{"mac":"<hex>",...}``, the MAC taken over the rest of the document and the name
of the object it was written as (a status copied to another task's key fails).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from typing import Any

from .errors import IntegrityError

log = logging.getLogger("cloudbutton.integrity")

KEY_FILE_ENV = "CLOUDBUTTON_KEY_FILE"
_HKDF_SALT = b"cloudbutton job key v1"
_MAC_HEAD = b'{"mac":"'
_MAC_HEX = 64

_host_key: tuple[str, bytes] | None = None
_host_key_lock = threading.Lock()


# Keys -------------------------------------------------------------------------------------
def key_file() -> str:
    return os.path.expanduser(os.environ.get(KEY_FILE_ENV) or os.path.join("~", ".cloudbutton",
                                                                           "host.key"))


def host_key() -> bytes:
    """This host's secret (32 random bytes), made on first use; only its owner may read it."""
    global _host_key
    path = key_file()
    with _host_key_lock:
        if _host_key is not None and _host_key[0] == path:
            return _host_key[1]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            try:  # first writer wins: two kernels starting at once end with one key
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(os.urandom(32).hex().encode() + b"\n")
            except FileExistsError:
                pass
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read().strip()
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by other users; its mode is now 0600", path)
        try:
            key = bytes.fromhex(text.decode())
        except ValueError:
            key = b""
        if len(key) < 16:
            raise IntegrityError(f"{path} does not hold a host key (64 hex digits); move it away "
                                 "to make a new one (jobs sealed with the old one cannot be attached)")
        _host_key = (path, key)
        return key


def job_key(job_id: str) -> bytes:
    """The key that seals job ``job_id``'s objects: HKDF-SHA256 (RFC 5869) of the host key."""
    prk = hmac.digest(_HKDF_SALT, host_key(), "sha256")
    return hmac.digest(prk, job_id.encode() + b"\x01", "sha256")


# Sealed JSON documents --------------------------------------------------------------------
def _mac(key: bytes, name: str, body: bytes) -> bytes:
    return hmac.new(key, name.encode() + b"\x00" + body, "sha256").hexdigest().encode()


# One encoder for every sealed document: json.dumps with options builds one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode  # given text: json.loads of bytes guesses their encoding


def seal(key: bytes, name: str, doc: dict[str, Any]) -> bytes:
    """``doc`` as JSON, sealed for storage under ``name`` (its key below the prefix)."""
    body = _encode(doc).encode()
    if not body.startswith(b"{") or body == b"{}":
        raise ValueError("only a non-empty JSON object can be sealed")
    return _MAC_HEAD + _mac(key, name, body) + b'",' + body[1:]


def open_sealed(key: bytes, name: str, raw: bytes, what: str = "object") -> dict[str, Any]:
    """The document ``raw`` read from ``name``, once its seal verifies; else IntegrityError
    (nothing of it is parsed before)."""
    head = len(_MAC_HEAD)
    if (not raw.startswith(_MAC_HEAD) or raw[head + _MAC_HEX:head + _MAC_HEX + 2] != b'",'
            or not hmac.compare_digest(raw[head:head + _MAC_HEX],
                                       _mac(key, name, b"{" + raw[head + _MAC_HEX + 2:]))):
        raise IntegrityError(f"{what} {name} is a tampered or foreign object: its seal does not "
                             "verify with this job's key")
    doc: dict[str, Any] = _decode("{" + str(raw[head + _MAC_HEX + 2:], "utf-8"))
    return doc


def unsealed(raw: bytes) -> dict[str, Any]:
    """A sealed document's content WITHOUT verifying it: for readers that hold no key and
    unpickle nothing (the Jupyter panel, ``cloudbutton jobs``); their figures are unverified."""
    doc: dict[str, Any] = json.loads(raw)
    doc.pop("mac", None)
    return doc


# Content addresses --------------------------------------------------------------------------
def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def check_content(data: bytes | memoryview, digest: str, what: str) -> None:
    """Raise IntegrityError unless ``data`` has the sha256 ``digest`` it is named by."""
    if not hmac.compare_digest(sha256(data), digest):
        raise IntegrityError(f"{what} is a tampered or foreign object: its content does not "
                             f"match its sha256 {digest[:16]}…")
