"""The process side of the local backend: a tiny Lambda-like runtime.

Each worker process loops: read one event from stdin, run ``worker.handler``
on it with the invocation's memory limit and a fresh scratch dir as its /tmp,
write the handler's response. The parent enforces the timeout by killing the
process, so a runaway task can never hang the job.

Wire format (both directions): 4-byte big-endian length, then JSON. A runtime's first
frame is empty: it is ready (interpreter up, handler imported) and waits for events.
"""
from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

_HEADER = struct.Struct(">I")
_random = random.Random()


class RuntimeProcess:
    """A runtime process seen from its supervisor (the local backend's slots, the
    Lambda handler's supervisor): send it events, receive its responses, notice
    when it dies. While a response is awaited, its resident memory is sampled, so
    a death by SIGKILL can say whether memory was the likely cause."""

    SAMPLE_S = 0.5

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: str, stderr: Any):
        self.popen: subprocess.Popen[bytes] = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=cwd,
            start_new_session=True)
        assert self.popen.stdout is not None and self.popen.stdin is not None
        self.stdin = self.popen.stdin
        self.out_fd = self.popen.stdout.fileno()
        os.set_blocking(self.out_fd, False)  # recv reads first, and waits only if nothing came
        self._buf = b""
        self.doomed = False  # killed by a cancel: never to be handed another event
        self.ready = False  # its empty first frame came: started and imported
        self.peak_rss_mb = 0.0  # the most resident memory seen while it ran an event

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, event: dict[str, Any]) -> None:
        self.stdin.write(encode_message(event))
        self.stdin.flush()

    def recv(self, deadline: float, tick: Callable[[], None] | None = None) -> dict[str, Any] | None:
        """The response, or None if the process died; raises TimeoutError at the deadline.
        ``tick`` (if given) is called about every ``SAMPLE_S`` while waiting."""
        header = _HEADER
        self.peak_rss_mb = 0.0
        while True:
            if len(self._buf) >= header.size:
                (n,) = header.unpack_from(self._buf)
                if n == 0:  # the runtime's "ready": no response
                    self._buf = self._buf[header.size:]
                    self.ready = True
                    continue
                if len(self._buf) >= header.size + n:
                    body = self._buf[header.size:header.size + n]
                    self._buf = self._buf[header.size + n:]
                    response: dict[str, Any] = _decode(body.decode())
                    return response
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError
            try:  # a reply already written costs no select (a busy host finds most so)
                chunk = os.read(self.out_fd, 1 << 16)
            except BlockingIOError:
                ready, _, _ = select.select([self.out_fd], [], [], min(remaining, self.SAMPLE_S))
                if not ready:  # a long wait: sample its memory (and let the supervisor look around)
                    self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.popen.pid))
                    if tick is not None:
                        tick()
                continue
            if not chunk:
                return None
            self._buf += chunk

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the runtime has started and imported; False if
        it died first or is still starting. Before its first event only: a runtime answers
        nothing else until it has an event."""
        deadline = time.time() + timeout
        while not self.ready:
            if len(self._buf) >= _HEADER.size:
                if _HEADER.unpack_from(self._buf)[0] != 0:
                    return False  # not a runtime of this protocol: recv will tell
                self._buf = self._buf[_HEADER.size:]
                self.ready = True
                break
            remaining = deadline - time.time()
            if remaining <= 0:
                return False
            if not select.select([self.out_fd], [], [], remaining)[0]:
                return False
            try:
                chunk = os.read(self.out_fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return False  # died while starting: the next recv says how
            self._buf += chunk
        return True

    def kill(self) -> int:
        try:
            self.popen.kill()
        except ProcessLookupError:
            pass
        return self.popen.wait()

    def close(self) -> None:
        try:
            self.stdin.close()
        except Exception:
            pass
        try:
            self.popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()


def seconds_since_process_start() -> float | None:
    """Seconds since this process started (Linux: its start in clock ticks after boot,
    against the uptime now); None where that cannot be read."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 3))
    except Exception:
        return None


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


# How a runtime ends itself when its task ignores a cancel (see ``worker._CancelWatch``).
CANCELLED_EXIT_CODE = 75

# A runtime whose resident memory came this close to its limit and was then killed by
# SIGKILL was most likely killed for its memory (Lambda, the system's OOM killer).
NEAR_MEMORY_LIMIT = 0.9


def describe_exit(returncode: int, peak_rss_mb: float = 0.0, memory_mb: int | None = None) -> str:
    """Why a runtime process ended mid-task, in words. Memory is named only when it is
    the likely cause: a SIGKILL after its memory came near the limit."""
    if returncode == CANCELLED_EXIT_CODE:
        return "worker process stopped: its job was cancelled"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        text = f"worker process was killed by {name}"
        if (returncode == -signal.SIGKILL and memory_mb and peak_rss_mb
                and peak_rss_mb >= NEAR_MEMORY_LIMIT * memory_mb):
            text += (f", most likely out of memory (it used {peak_rss_mb:.0f} MB of its "
                     f"{memory_mb} MB)")
        return text
    return f"worker process exited with code {returncode} before finishing the task"


def read_message(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(header)
    body = stream.read(n)
    return _decode(body.decode())


# One encoder for every message: json.dumps with options builds a new one per call
# (~2.5 µs of each event and each response).
_encode = json.JSONEncoder(separators=(",", ":")).encode
# And one decoder, given text: json.loads of bytes first guesses their encoding.
_decode = json.JSONDecoder().decode


def encode_message(obj: Any) -> bytes:
    body = _encode(obj).encode()
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


_hard_as: int | None = None  # RLIMIT_AS's hard limit: read once (only this process lowers it)


def _set_memory_limit(memory_mb: int | None) -> None:
    """The invocation's memory limit (RLIMIT_AS), or none between invocations. Two calls per
    invocation: the resource module and the hard limit are looked up once per process."""
    global _hard_as
    if resource is None:  # pragma: no cover - not POSIX
        return
    if _hard_as is None:
        _hard_as = resource.getrlimit(resource.RLIMIT_AS)[1]
    hard = _hard_as
    want = resource.RLIM_INFINITY if not memory_mb else int(memory_mb) * 1024 * 1024
    if hard != resource.RLIM_INFINITY and (want == resource.RLIM_INFINITY or want > hard):
        want = hard
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def _die_with_parent() -> None:
    """Lambda's semantics: invocations do not outlive what runs them. A local worker is
    killed when its host process dies (Linux), instead of finishing its task unseen."""
    try:
        import ctypes

        parent = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call took effect
            os._exit(1)
    except (OSError, AttributeError):  # not Linux: the worker ends at its next read
        pass


def main() -> None:
    _die_with_parent()
    events = sys.stdin.buffer
    # Our replies go to the original stdout; anything the task's C code prints
    # to fd 1 goes to stderr instead of corrupting the reply stream.
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)

    from .worker import handler

    replies.write(_HEADER.pack(0))  # ready: the supervisor may now prefer this process
    home = os.getcwd()
    # Not tempfile.gettempdir(): it probes by writing, and with a full /tmp it would end this
    # process before any event (a vague crash) or fall back to another directory. A scratch
    # dir that cannot be made is the invocation's setup failure, reported by the handler.
    scratch_root = (os.environ.get("CLOUDBUTTON_SCRATCH") or os.environ.get("TMPDIR")
                    or ("/tmp" if os.name == "posix" else tempfile.gettempdir()))
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
    setup_error: OSError | None = None
    if scratch is None:
        try:
            scratch = tempfile.mkdtemp(prefix="invocation-", dir=scratch_root)
        except OSError as exc:  # a full or missing /tmp: the task's status says so
            setup_error = OSError(exc.errno, f"no scratch dir (/tmp) for the invocation in "
                                  f"{scratch_root}: {exc.strerror or exc}")
    if scratch is not None:
        os.chdir(scratch)
        os.environ["TMPDIR"] = scratch
        tempfile.tempdir = scratch
    response: dict[str, Any]
    try:
        _set_memory_limit(event.get("memory_mb"))
        # A supervisor inside Lambda says when the invocation must have stopped.
        left = (event["stop_at"] - time.time()) if event.get("stop_at") \
            else (event.get("timeout") or 900)
        response = handler(event, Context(left, event.get("memory_mb")), setup_error=setup_error)
    except BaseException as exc:  # an infrastructure failure of the handler itself
        response = {"task": event.get("task"), "state": "handler_error",
                    "error": f"{type(exc).__name__}: {exc}"}
    finally:
        _set_memory_limit(None)  # the runtime itself must not run out between invocations
        os.chdir(home)
        tempfile.tempdir = None
        # An invocation that left its scratch dir empty hands an equally fresh
        # one to the next (rmtree + mkdtemp cost more than a small task).
        if scratch is not None and not _is_empty_dir(scratch):
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
