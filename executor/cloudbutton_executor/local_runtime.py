"""The process side of the local backend: a tiny Lambda-like runtime.

Each worker process loops: read one event from stdin, run ``worker.handler``
on it with the invocation's memory limit and a fresh scratch dir as its /tmp,
write the handler's response. The parent enforces the timeout by killing the
process, so a runaway task can never hang the job.

Wire format (both directions): 4-byte big-endian length, then JSON.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

_HEADER = struct.Struct(">I")
_random = random.Random()


def read_message(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(header)
    body = stream.read(n)
    return json.loads(body)


def encode_message(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


class Context:
    """The subset of Lambda's context object that handlers use."""

    def __init__(self, timeout_s: float, memory_mb: int | None):
        self.aws_request_id = f"{_random.getrandbits(128):032x}"  # uuid4's entropy, no syscall
        self.function_name = "cloudbutton-local"
        self.memory_limit_in_mb = memory_mb
        self._deadline = time.time() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _set_memory_limit(memory_mb: int | None) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = resource.RLIM_INFINITY if not memory_mb else int(memory_mb) * 1024 * 1024
    if hard != resource.RLIM_INFINITY and (want == resource.RLIM_INFINITY or want > hard):
        want = hard
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def main() -> None:
    events = sys.stdin.buffer
    # Our replies go to the original stdout; anything the task's C code prints
    # to fd 1 goes to stderr instead of corrupting the reply stream.
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)

    from .worker import handler

    home = os.getcwd()
    scratch_root = os.environ.get("CLOUDBUTTON_SCRATCH") or tempfile.gettempdir()
    scratch = None
    try:
        while True:
            event = read_message(events)
            if event is None:
                return
            scratch = _serve(event, handler, replies, home, scratch_root, scratch)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _serve(event: dict[str, Any], handler: Callable[..., dict[str, Any]], replies: IO[bytes],
           home: str, scratch_root: str, scratch: str | None) -> str | None:
    """Run one invocation; returns the (empty) scratch dir the next one may reuse."""
    if scratch is None:
        scratch = tempfile.mkdtemp(prefix="invocation-", dir=scratch_root)
    os.chdir(scratch)
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    response: dict[str, Any]
    try:
        _set_memory_limit(event.get("memory_mb"))
        response = handler(event, Context(event.get("timeout") or 900, event.get("memory_mb")))
    except BaseException as exc:  # an infrastructure failure of the handler itself
        response = {"task": event.get("task"), "state": "handler_error",
                    "error": f"{type(exc).__name__}: {exc}"}
    finally:
        _set_memory_limit(None)  # the runtime itself must not run out between invocations
        os.chdir(home)
        tempfile.tempdir = None
        # An invocation that left its scratch dir empty hands an equally fresh
        # one to the next (rmtree + mkdtemp cost more than a small task).
        if not _is_empty_dir(scratch):
            shutil.rmtree(scratch, ignore_errors=True)
            scratch = None
    replies.write(encode_message(response))
    return scratch


def _is_empty_dir(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None and not os.path.islink(path)
    except OSError:
        return False


if __name__ == "__main__":
    main()
