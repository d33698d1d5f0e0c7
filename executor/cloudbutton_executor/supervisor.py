"""The handler Lambda calls: each invocation runs in a task process it watches.

Lambda's runtime process (awslambdaric) calls ``handler``; the task runs in a child
process, the same tiny runtime the local backend uses (``local_runtime``, which
calls the one worker handler, ``worker.handler``), kept warm across invocations.
If that process dies mid-task (a segfault, ``os._exit``, the out-of-memory killer, a
signal) or runs past the invocation's time, the supervisor reports it at once: a
sealed crash report (``protocol.crash_key``) that the host reads with the statuses
and turns into a retry or the task's end, with the reason, in seconds instead of
at the timeout plus a grace. A task stopped because its job was cancelled
(``local_runtime.CANCELLED_EXIT_CODE``) is reported as nothing: its job is over.

Only a death of the whole execution environment (Lambda's own failures) still
leaves the host to its deadlines and backups.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from . import integrity, local_runtime, protocol
from .local_runtime import RuntimeProcess

# Kept from Lambda's deadline: the task stops this much earlier to store what finished
# (its own alarm), and the supervisor stops a task that did not, a bit later.
TASK_MARGIN_S = 0.5
KILL_MARGIN_S = 0.25

# A crash report should be written in well under a second, so the storage client is
# made ahead, in the background, on the first invocation (it costs about 40 MB, so only
# where the function has memory to spare).
PREWARM_MIN_MEMORY_MB = 512

_process: RuntimeProcess | None = None
_invocations = 0
_storages: dict[tuple[tuple[str, Any], ...], Any] = {}
_storages_lock = threading.Lock()


# Seconds from the runtime's start to this module's import: the part of Lambda's INIT
# phase we can see, reported by the container's first (cold) invocation.
_INIT_S = local_runtime.seconds_since_process_start()


def _spawn() -> RuntimeProcess:
    # The child sees exactly this runtime's sys.path (the task root, the layers, the
    # runtime's own packages), whatever flags this interpreter was started with.
    boot = (f"import sys; sys.path[:] = {sys.path!r}; "
            "from cloudbutton_executor.local_runtime import main; main()")
    return RuntimeProcess([sys.executable, "-I", "-S", "-c", boot], env=dict(os.environ),
                          cwd=os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd(), stderr=None)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    global _process, _invocations
    started = time.time()
    cold = _invocations == 0
    _invocations += 1
    memory = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 0)
    if cold and memory >= PREWARM_MIN_MEMORY_MB:
        threading.Thread(target=_storage_for, args=(event["storage"],), daemon=True,
                         name="cloudbutton-prewarm").start()
    remaining = (context.get_remaining_time_in_millis() / 1000.0
                 if context is not None and hasattr(context, "get_remaining_time_in_millis")
                 else float(event.get("timeout") or 900))
    # An absolute time: the task process may take a while to start (a cold one imports).
    task = dict(event, stop_at=started + remaining - TASK_MARGIN_S,
                runtime={"cold": cold, "init_s": _INIT_S if cold else None})
    if _process is None or _process.popen.poll() is not None:
        _process = _spawn()
    proc = _process
    try:
        proc.send(task)
        response = proc.recv(started + remaining - KILL_MARGIN_S)
    except TimeoutError:
        proc.kill()
        _process = None
        limit = float(event.get("timeout") or remaining)
        return _report(event, "timeout",
                       f"task {event['task']} did not stop within its timeout of {limit:g} s "
                       "(the function's remaining time) and was killed", started)
    except OSError:  # the process was gone before it took the event
        response = None
    if response is None:
        peak = proc.peak_rss_mb
        code = proc.kill()
        _process = None
        if code == local_runtime.CANCELLED_EXIT_CODE:
            return {"task": event["task"], "state": "cancelled"}
        why = local_runtime.describe_exit(code, peak, event.get("memory_mb"))
        kind = "oom" if "out of memory" in why else "died"
        return _report(event, kind, f"task {event['task']}: {why}", started)
    if response.get("state") == "handler_error":
        # The handler itself failed (e.g. its status write was refused): nothing says so
        # but this report, as the local backend says it (WorkerDiedError), at once.
        return _report(event, "died", f"task {event['task']}: worker handler failed: "
                       f"{response.get('error')}", started)
    return response


def _storage_for(desc: dict[str, Any]) -> Any:
    """The storage of ``desc``, its client made (made once per container)."""
    from .storage import S3Storage, storage_from_description

    key = tuple(sorted(desc.items()))
    with _storages_lock:
        storage = _storages.get(key)
        if storage is None:
            storage = _storages[key] = storage_from_description(desc)
    if isinstance(storage, S3Storage):
        storage.client  # noqa: B018 - makes the client now (the property is lazy)
    return storage


def _report(event: dict[str, Any], kind: str, message: str, started: float) -> dict[str, Any]:
    """Store a sealed crash report for this attempt (first write wins)."""
    storage = _storage_for(event["storage"])
    attempt = int(event.get("attempt", 0))
    ckey = protocol.crash_key(event["prefix"], event["job_id"], event["task"], attempt)
    report = {"v": protocol.PROTOCOL_VERSION, "job_id": event["job_id"], "task": event["task"],
              "attempt": attempt, "kind": kind, "message": message,
              "stats": {"host_submit": event.get("host_submit"), "worker_start": started,
                        "reported": time.time()}}
    sealed = integrity.seal(bytes.fromhex(event["auth"]),
                            protocol.object_name(event["prefix"], ckey), report)
    written = storage.put_if_absent(ckey, sealed)
    sys.stderr.write(f"cloudbutton: {message}\n")
    return {"task": event["task"], "state": "crashed", "kind": kind, "written": written}
