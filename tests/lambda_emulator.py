"""A local Lambda data plane for tests: runs the *deployed* zip and layers through AWS's
awslambdaric, in sandboxes that see only what Lambda would.

- ``ForwardingProxy``: an HTTP reverse proxy (to moto) with a fault hook; used as the
  S3 endpoint that injects 500/503, and as the fallback of the emulator's endpoint.
- ``LambdaEmulator``: serves ``POST /2015-03-31/functions/{name}/invocations``
  (``X-Amz-Invocation-Type: Event`` -> 202, payloads over the async limit -> 413),
  ``GET /2016-08-19/account-settings/`` (its concurrency), and forwards every other
  Lambda API call to moto, so one ``endpoints.lambda`` URL serves deploy and invoke.
  The function's code, handler, runtime, architecture, layers, memory, /tmp size,
  environment, timeout and async config (retries, maximum event age) are read from
  moto's control plane (what ``cloudbutton deploy`` created).
- Async semantics: accepted events wait in one queue for a free concurrency slot
  (as many slots as the account concurrency); an event older than the function's
  ``MaximumEventAgeInSeconds`` when a slot frees up is discarded, never run.
- ``Sandbox``: one concurrency slot = one bare interpreter (``python -I -S``, see
  ``lambda_sandbox_boot.py``) whose ``sys.path`` holds only the standard library, the
  runtime dir (awslambdaric and the boto3/botocore the Lambda runtime bundles), the
  unpacked function zip (task root) and the unpacked layers (an /opt-like dir); the
  memory limit as RLIMIT_AS, the vCPUs Lambda gives that memory as CPU affinity, a
  size-capped tmpfs as scratch dir and read-only code (in a private mount namespace
  when the OS allows it). Warm reuse, cold start when the code or configuration
  changed, killed at the function timeout.
- Container images: ``push_image(uri, context)`` stands in for ``docker build`` +
  ``docker push``: it builds a build context's Dockerfile as far as it can without
  docker (FROM an AWS Lambda Python base image, COPY into the task root, CMD the
  handler) and registers it under the URI. A PackageType=Image function then runs
  in the same sandboxes with what the base image gives (the runtime dir: awslambdaric
  and the bundled SDK) and the image's task root; creating a function from an image
  never pushed is refused, as Lambda refuses a missing ECR image. The same push is
  served over HTTP (``REGISTRY_PATH``) for a stand-in ``docker`` in another process.
- ``Faults``: drop / duplicate / throttle (429 + retryAfterSeconds) / latency /
  kill-mid-task, seeded, with counters so tests can check the faults really happened.
- Anything unexpected inside the emulator (a slot's exception, a server handler's
  error, a runtime that dies on its own) lands in ``errors``; the test fixtures fail
  the test that caused it.

Runtime processes get dummy credentials through their environment (the
"execution role"); events never carry any.
"""
from __future__ import annotations

import collections
import hashlib
import http.client
import http.server
import io
import json
import os
import queue
import random
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import zipfile

# An emulator is not AWS: it runs the one zip runtime it was built for (the host's Python),
# whatever AWS's runtime calendar (packaging.RUNTIMES) says about that runtime on the day the
# tests run. Deploys against it declare that here, once: aws_fixtures.config_dict puts this
# value in every emulator config as `lambda.runtime_calendar`. The calendar's refusals and
# warnings are tested against its dates with an injected "today" (test_lambda_runtimes.py).
RUNTIME_CALENDAR = "waive"

# The emulator's stand-in for an ECR registry: what a ``docker push`` would send (see
# ``registry_push``); not an AWS API.
REGISTRY_PATH = "/_emulator/images"

# Lambda's documented limits the emulator enforces (developer guide, "Lambda quotas").
ASYNC_PAYLOAD_LIMIT = 1024 * 1024     # asynchronous invocation payload (was 256 KB until 2025)
DEFAULT_EVENT_AGE_S = 6 * 3600        # MaximumEventAgeInSeconds when none is configured
MB_PER_VCPU = 1769                    # Lambda gives one vCPU per 1,769 MB of memory
HERE = os.path.dirname(os.path.abspath(__file__))

ACCOUNT = "123456789012"
ROLE_ENV = {  # the runtime's "execution role" (dummy values the leak scan looks for)
    "AWS_ACCESS_KEY_ID": "ASIAEMULATORROLE0001",
    "AWS_SECRET_ACCESS_KEY": "EmulatorRoleSecretKeyDoNotLeak0000000001",
    "AWS_SESSION_TOKEN": "EmulatorRoleSessionTokenDoNotLeak",
}


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    on_error = None  # called with a description of an unexpected handler exception

    def handle_error(self, request, client_address):
        # Killed runtimes and closed client connections are part of the game here.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        if self.on_error is not None:
            import traceback

            self.on_error(f"{type(self.RequestHandlerClass).__name__} handler: "
                          f"{''.join(traceback.format_exception(exc))[-2000:]}")
        else:
            super().handle_error(request, client_address)


def _serve(handler_cls, on_error=None, **attrs) -> _Server:
    handler = type(handler_cls.__name__, (handler_cls,), attrs)
    server = _Server(("127.0.0.1", 0), handler)  # port 0: the OS picks it, and it stays bound
    server.on_error = on_error
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                     name=f"{handler_cls.__name__}-{server.server_address[1]}").start()
    return server


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


# Reverse proxy with faults --------------------------------------------------------------
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def forward(target: tuple[str, int], method: str, path: str, headers, body: bytes):
    conn = http.client.HTTPConnection(*target, timeout=60)
    try:
        hdrs = {k: v for k, v in headers.items() if k.lower() not in _HOP}
        hdrs["Host"] = f"{target[0]}:{target[1]}"
        conn.request(method, path, body=body if body or method in ("PUT", "POST") else None,
                     headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], data
    finally:
        conn.close()


def relay(h, status: int, headers, data: bytes) -> None:
    """Send an upstream answer back through request handler ``h``."""
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if data and h.command != "HEAD":
        h.wfile.write(data)


class _ProxyHandler(_Quiet):
    proxy = None  # set by ForwardingProxy

    def _any(self):
        body = self._body()
        self.proxy.handle(self, body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _any


class ForwardingProxy:
    """Forwards to ``target``; ``error_rate`` of requests get a 500/503 instead (half of
    them before reaching the target, half after it acted: both happen on real S3)."""

    def __init__(self, target_url: str, error_rate: float = 0.0, seed: int = 1):
        u = urllib.parse.urlsplit(target_url)
        self.target = (u.hostname, u.port)
        self.error_rate = error_rate
        self.rng = random.Random(seed)
        self.injected = 0
        self.requests = 0
        self.methods: dict[str, int] = {}
        # An attacker with write access to the bucket: GETs of a key ending with one of
        # these suffixes return the planted bytes instead (``tamper_for``: only for requests
        # signed with that access key id, e.g. the workers' execution role).
        self.tamper: dict[str, bytes] = {}
        self.tamper_for: str | None = None
        self.tampered = 0
        self.log: list[tuple[str, str, str]] | None = None  # (access key id, method, key) if set
        # A bucket policy (or IAM) that refuses writes: PUTs of a key ending with one of
        # these suffixes get 403 AccessDenied (``deny_for``: only those signed with that
        # access key id).
        self.deny_puts: tuple[str, ...] = ()
        self.deny_for: str | None = None
        self.lock = threading.Lock()
        self.server = _serve(_ProxyHandler, proxy=self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self):
        """No faults, no tampering, no request log."""
        with self.lock:
            self.error_rate = 0.0
            self.tamper = {}
            self.tamper_for = None
            self.log = None
            self.deny_puts = ()
            self.deny_for = None

    @staticmethod
    def _who_and_key(h) -> tuple[str, str]:
        m = re.search(r"Credential=([^/]+)/", h.headers.get("Authorization", ""))
        path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
        return (m.group(1) if m else ""), path.lstrip("/").partition("/")[2]

    def handle(self, h: _ProxyHandler, body: bytes):
        who, key = self._who_and_key(h)
        with self.lock:
            self.requests += 1
            self.methods[h.command] = self.methods.get(h.command, 0) + 1
            fault = self.rng.random() < self.error_rate
            after = self.rng.random() < 0.5
            code = self.rng.choice((500, 503))
            if fault:
                self.injected += 1
            if self.log is not None:
                self.log.append((who, h.command, key))
            planted = next((v for k, v in self.tamper.items() if key and key.endswith(k)), None) \
                if h.command == "GET" and (self.tamper_for is None or who == self.tamper_for) else None
            if planted is not None:
                self.tampered += 1
        if planted is not None:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
            if m:
                planted = planted[int(m.group(1)):int(m.group(2)) + 1 if m.group(2) else None]
            return h._reply(200, planted, {"Content-Type": "application/octet-stream"})
        if h.command == "PUT" and key and key.endswith(self.deny_puts) \
                and (self.deny_for is None or who == self.deny_for):
            return self._error(h, 403)
        if fault and not after:
            return self._error(h, code)
        status, headers, data = forward(self.target, h.command, h.path, h.headers, body)
        if fault:
            return self._error(h, code)
        relay(h, status, headers, data)

    @staticmethod
    def _error(h, code):
        kind = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied"}[code]
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{kind}</Code>'
                f'<Message>injected by the test proxy</Message></Error>').encode()
        h._reply(code, body if h.command != "HEAD" else b"", {"Content-Type": "application/xml"})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# Faults -----------------------------------------------------------------------------
class Faults:
    """Probabilities per accepted invocation (0..1) and what they did."""

    def __init__(self, drop=0.0, duplicate=0.0, throttle=0.0, retry_after=0.2, latency=0.0,
                 kill=0.0, kill_after=(0.01, 0.1), hang=0.0, hang_s=60.0, kill_task=0.0, seed=7):
        self.drop, self.duplicate, self.throttle = drop, duplicate, throttle
        self.retry_after, self.latency, self.kill, self.kill_after = retry_after, latency, kill, kill_after
        # hang: the invoke endpoint takes the request and never answers (for hang_s);
        # kill_task: the task process inside the execution environment is killed (SIGKILL,
        # what an out-of-memory kill does), the runtime itself survives.
        self.hang, self.hang_s, self.kill_task = hang, hang_s, kill_task
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"accepted": 0, "dropped": 0, "duplicated": 0, "throttled": 0, "killed": 0,
                       "hung": 0, "tasks_killed": 0}

    def roll(self, p: float) -> bool:
        with self.lock:
            return p > 0 and self.rng.random() < p

    def count(self, what: str, n: int = 1):
        with self.lock:
            self.counts[what] += n


# Function state from moto's control plane ---------------------------------------------
class FunctionSpec:
    def __init__(self, fn, backend, root: str, images: dict | None = None):
        self.name = fn.function_name
        self.arn = fn.function_arn
        self.handler = fn.handler
        self.runtime = fn.run_time
        self.package_type = getattr(fn, "package_type", "Zip")
        self.timeout = float(fn.timeout)
        self.memory = int(fn.memory_size)
        self.tmp_mb = int(getattr(fn, "ephemeral_storage", 512) or 512)
        self.arch = (getattr(fn, "architectures", None) or ["x86_64"])[0]
        self.env = dict(fn.environment_vars or {})
        cfgs = getattr(fn, "event_invoke_config", []) or []
        # moto appends each put: the last one is the configuration in force.
        conf = cfgs[-1].config if cfgs else {}
        self.max_retries = conf.get("MaximumRetryAttempts", 2)
        self.max_event_age = float(conf.get("MaximumEventAgeInSeconds", DEFAULT_EVENT_AGE_S))
        self.code_sha = fn.code_sha_256
        layer_arns = [ly["Arn"] for ly in (fn.layers or [])]
        self.image = None
        if self.package_type == "Image":
            # What the image's base gives (the runtime's Python, awslambdaric, its SDK) is the
            # emulator's runtime dir; the image's task root is what its Dockerfile copied in.
            self.image = (images or {}).get((fn.code or {}).get("ImageUri"))
            self.opt = None
            if self.image is not None:
                self.task_root, self.runtime = self.image.task_root, self.image.runtime
                command = (getattr(fn.image_config, "cmd", None) or [])
                self.handler = command[0] if command else self.image.handler
            else:
                self.task_root = None
        self.key = (self.code_sha, self.handler, self.runtime, self.timeout, self.memory, self.tmp_mb,
                    tuple(sorted(self.env.items())), tuple(layer_arns),
                    self.image.digest if self.image is not None else None)
        self._unpacked = threading.Lock()
        self._pending = None
        if self.package_type != "Zip":
            return
        # Lambda extracts every layer, in order, into one /opt (later layers win). Unpacked by
        # the first sandbox that starts the function (``prepare``), not in the invoke request:
        # Lambda accepts an async event at once, however big the layers.
        layers = [backend.layers_versions_by_arn(arn) for arn in layer_arns]
        self.task_root = os.path.join(root, "code", _safe(self.code_sha))
        shas = "-".join(lv.code_sha_256 for lv in layers)
        self.opt = os.path.join(root, "opt", _safe(shas)) if layers else None
        self._pending = (fn.code_bytes, [lv.code_bytes for lv in layers])

    def prepare(self) -> None:
        """Unpack the function zip and its layers (once, read-only)."""
        with self._unpacked:
            if self._pending is None:
                return
            code, blobs = self._pending
            _unzip([code], self.task_root)
            if self.opt:
                _unzip(blobs, self.opt)
            self._pending = None


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", s)[:64] + ("" if len(s) <= 64 else uuid.uuid5(uuid.NAMESPACE_OID, s).hex[:12])


def _unzip(blobs: list[bytes], dest: str) -> str:
    """Unpack ``blobs`` in order into ``dest`` (once), file modes kept, then read-only."""
    if not os.path.isdir(dest):
        tmp = f"{dest}.{uuid.uuid4().hex}"
        os.makedirs(tmp)
        for data in blobs:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    path = zf.extract(info, tmp)
                    mode = (info.external_attr >> 16) & 0o777
                    if mode and not info.is_dir():
                        os.chmod(path, mode)
        _read_only(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _read_only(root: str) -> None:
    """Lambda's code dirs are read-only (also enforced by a read-only bind mount when
    the sandbox runs in its own mount namespace, since file modes do not stop root)."""
    for dirpath, dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & 0o555)
        os.chmod(dirpath, 0o555)


def _writable(root: str) -> None:
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)


def namespaces_available() -> bool:
    """Whether a sandbox can have its own mount namespace (root, or a permissive kernel)."""
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True) \
        if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


class Invocation:
    def __init__(self, spec: FunctionSpec, payload: bytes, request_id: str, attempt: int = 0,
                 enqueued_at: float | None = None):
        self.spec, self.payload, self.request_id, self.attempt = spec, payload, request_id, attempt
        self.enqueued_at = time.time() if enqueued_at is None else enqueued_at  # event age counts from acceptance
        self.taken = threading.Event()
        self.done = threading.Event()
        self.outcome = None  # ("response"|"error", body)


# One concurrency slot -----------------------------------------------------------------
class _RuntimeAPI(_Quiet):
    sandbox = None

    def do_GET(self):
        if self.path.rstrip("/") != "/2018-06-01/runtime/invocation/next":
            return self._reply(404)
        inv = self.sandbox.next_invocation()
        if inv is None:  # shutting down: the runtime is about to be killed anyway
            return self._reply(500, b"{}", {"Content-Type": "application/json"})
        deadline_ms = int((time.time() + inv.spec.timeout) * 1000)
        # awslambdaric's native client needs 200 + application/json here (else SIGSEGV).
        self._reply(200, inv.payload, {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": inv.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": inv.spec.arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}",
        })
        inv.taken.set()

    def do_POST(self):
        body = self._body()
        m = re.fullmatch(r"/2018-06-01/runtime/invocation/([^/]+)/(response|error)", self.path)
        if m:
            self.sandbox.finish(m.group(1), m.group(2), body)
            return self._reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})
        if self.path == "/2018-06-01/runtime/init/error":
            self.sandbox.init_error = body
            return self._reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})
        self._reply(404)


class Sandbox:
    def __init__(self, emulator: "LambdaEmulator", index: int):
        self.emu = emulator
        self.index = index
        self.inbox: queue.Queue = queue.Queue(maxsize=1)
        self.current: Invocation | None = None
        self.proc: subprocess.Popen | None = None
        self.spec_key = None
        self.init_error = None
        self.cold_starts = 0
        self.cpus: list[int] = []
        self.server = _serve(_RuntimeAPI, on_error=emulator.error, sandbox=self)
        self.port = self.server.server_address[1]
        self.log_path = os.path.join(emulator.root, f"sandbox-{index}.log")
        self.log = open(self.log_path, "ab")
        self.tmp = os.path.join(emulator.root, f"tmp-{index}")
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"sandbox-{index}")
        self.thread.start()

    # Runtime API side
    def next_invocation(self) -> Invocation | None:
        # Each runtime process generation has its own inbox: a killed runtime's pending
        # /next must not take the invocation meant for its successor.
        inbox = self.inbox
        while not self.emu.stopped and inbox is self.inbox:
            try:
                return inbox.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def finish(self, request_id: str, kind: str, body: bytes):
        inv = self.current
        if inv is not None and inv.request_id == request_id:
            inv.outcome = (kind, body)
            inv.done.set()

    # Lifecycle
    def _cpus(self, spec: FunctionSpec) -> list[int]:
        cores = self.emu.host_cores
        n = max(1, min(len(cores), -(-spec.memory // MB_PER_VCPU)))
        first = (self.index * n) % len(cores)
        return [cores[(first + k) % len(cores)] for k in range(n)]

    def _place(self, spec: FunctionSpec) -> None:
        """Run this invocation on the cores the other running sandboxes use least: Lambda
        gives each execution environment its own vCPUs, which on a small host is the
        closest we get (the runtime's thread counts were fixed by its affinity at start)."""
        cores = sorted(self.emu.host_cores)
        n = max(1, min(len(cores), -(-spec.memory // MB_PER_VCPU)))
        with self.emu._lock:
            use = {c: 0 for c in cores}
            for other in self.emu.sandboxes:
                if other is not self and other.current is not None:
                    for c in other.cpus:
                        use[c] = use.get(c, 0) + 1
            self.cpus = sorted(sorted(cores, key=lambda c: (use[c], c))[:n])
        try:
            os.sched_setaffinity(self.proc.pid, self.cpus)
        except OSError:
            pass

    def _start(self, spec: FunctionSpec):
        self._kill()
        spec.prepare()
        self.inbox = queue.Queue(maxsize=1)
        if os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)  # a fresh execution environment
        os.makedirs(self.tmp, mode=0o1777, exist_ok=True)
        emu = self.emu
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        # A quirk of this machine's processors, not of Lambda: older OpenBLAS builds need it.
        env.update({k: os.environ[k] for k in emu.passthrough_env if k in os.environ})
        env.update(spec.env)
        env.update(emu.role_env)
        readonly = [spec.task_root, emu.runtime_dir] + ([spec.opt] if spec.opt else [])
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.port}",
            "LAMBDA_TASK_ROOT": spec.task_root, "LAMBDA_RUNTIME_DIR": emu.runtime_dir,
            "_HANDLER": spec.handler, "PYTHONUNBUFFERED": "1",
            "AWS_LAMBDA_FUNCTION_NAME": spec.name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
            "AWS_REGION": emu.region, "AWS_DEFAULT_REGION": emu.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}", "HOME": self.tmp, "TMPDIR": self.tmp,
            "CB_EMULATOR_SANDBOX": json.dumps({
                "task_root": spec.task_root, "opt": [spec.opt] if spec.opt else [],
                "runtime_dir": emu.runtime_dir, "handler": spec.handler, "memory_mb": spec.memory,
                "tmp": self.tmp, "tmp_mb": spec.tmp_mb, "readonly": readonly,
                "isolate": emu.isolate, "cpus": self._cpus(spec)}),
        })
        self.proc = subprocess.Popen([emu.python, "-I", "-S", os.path.join(HERE, "lambda_sandbox_boot.py")],
                                     cwd=spec.task_root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.spec_key = spec.key
        self.init_error = None
        self.cold_starts += 1
        emu.count("cold_starts")

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def _loop(self):
        while not self.emu.stopped:
            inv = self.emu.next_event()
            if inv is None:
                continue
            try:
                self._run(inv)
            except Exception:  # keep the slot alive; the test that caused it fails
                import traceback

                self.emu.error(f"sandbox {self.index}: {traceback.format_exc()[-2000:]}")
                self.current = None
        self._kill()

    @staticmethod
    def _kill_children(pid: int) -> int:
        """SIGKILL the processes the runtime started (the task process): what the kernel's
        out-of-memory killer does to the biggest process of an execution environment."""
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            return 0
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(children)

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 1500))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _run(self, inv: Invocation):
        spec = inv.spec
        if self.proc is None or self.proc.poll() is not None or self.spec_key != spec.key:
            self._start(spec)
        self.current = inv
        self._place(spec)
        self.inbox.put(inv)
        proc = self.proc
        # Wait for the runtime to pick it up (its init counts against the timeout, as on Lambda).
        deadline = time.time() + spec.timeout
        while not inv.taken.wait(0.05):
            if proc.poll() is not None or time.time() > deadline:
                died = proc.poll() is not None
                self._drain()
                self.emu.error(f"sandbox {self.index}: runtime {'exited during init' if died else 'init timeout'}"
                               f" ({self.init_error or b''!r}); log tail:\n{self._log_tail()}")
                return self._failed(inv, "init failed" if died else "init timeout")
        deadline = time.time() + spec.timeout
        kill_at = task_kill_at = None
        faults = self.emu.faults
        if faults.roll(faults.kill):
            lo, hi = faults.kill_after
            with faults.lock:
                kill_at = time.time() + faults.rng.uniform(lo, hi)
        elif faults.roll(faults.kill_task):
            lo, hi = faults.kill_after
            with faults.lock:
                task_kill_at = time.time() + faults.rng.uniform(lo, hi)
        while not inv.done.wait(0.01):
            now = time.time()
            if kill_at is not None and now >= kill_at:
                faults.count("killed")
                self._kill()
                return self._failed(inv, "killed")
            if task_kill_at is not None and now >= task_kill_at:
                task_kill_at = None
                if self._kill_children(proc.pid):
                    faults.count("tasks_killed")
            if proc.poll() is not None:
                code = proc.returncode
                self.proc = None
                if code == -signal.SIGKILL or code == 137:
                    # Out of memory (RLIMIT_AS makes Python raise first; a native allocation can
                    # still take the process down): Lambda reports "Runtime exited", so do we.
                    self.emu.count("runtime_exits")
                else:
                    self.emu.error(f"sandbox {self.index}: runtime exited with {code} mid-invocation; "
                                   f"log tail:\n{self._log_tail()}")
                return self._failed(inv, f"runtime exited with {code}")
            if now > deadline:
                self._kill()  # Lambda ends the invocation at the function timeout
                self.emu.count("timeouts")
                return self._failed(inv, "timeout")
        self.current = None
        kind, body = inv.outcome
        self.emu.record_result(inv, kind, body)
        if kind == "error":
            self.emu.retry_async(inv)

    def _drain(self):
        try:
            self.inbox.get_nowait()
        except queue.Empty:
            pass
        self._kill()

    def _failed(self, inv, why: str):
        self.current = None
        self.emu.record_result(inv, "crash", why.encode())
        self.emu.retry_async(inv)

    def close(self):
        self._kill()
        self.server.shutdown()
        self.server.server_close()
        self.log.close()


# The invoke endpoint ----------------------------------------------------------------------
class _InvokeAPI(_Quiet):
    emu = None

    def _any(self):
        body = self._body()
        m = re.fullmatch(r"/2015-03-31/functions/([^/?]+)/invocations(\?.*)?", self.path)
        if self.command == "POST" and m:
            return self.emu.handle_invoke(self, urllib.parse.unquote(m.group(1)), body)
        if self.command == "GET" and self.path.rstrip("/") == "/2016-08-19/account-settings":
            return self.emu.account_settings(self)
        if self.command == "POST" and self.path == REGISTRY_PATH:
            return self.emu.registry_push(self, body)
        if (self.command == "POST" and self.path.rstrip("/") == "/2015-03-31/functions") or \
                (self.command == "PUT" and re.fullmatch(r"/2015-03-31/functions/[^/]+/code", self.path)):
            uri = self.emu.image_uri_of(body)
            if uri is not None and uri not in self.emu.images:
                # Lambda checks the image in ECR when the function is created or updated.
                return self.emu._error(self, 400, "InvalidParameterValueException",
                                       f"Source image {uri} does not exist. Provide a valid source image.")
        relay(self, *forward(self.emu.moto_target, self.command, self.path, self.headers, body))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _any


class LambdaEmulator:
    """``runtime_dir``: awslambdaric and the runtime's bundled SDK, installed for ``runtime``
    (see ``build_runtime_dir``); only that runtime's functions can run."""

    def __init__(self, moto_url: str, root: str, runtime_dir: str, runtime: str,
                 region: str = "us-east-1", concurrency: int = 4, faults: Faults | None = None,
                 role_env: dict | None = None, python: str | None = None, isolate: bool | None = None):
        u = urllib.parse.urlsplit(moto_url)
        self.moto_target = (u.hostname, u.port)
        self.root = root
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o755)
        self.runtime_dir = runtime_dir
        self.runtime = runtime
        # The real interpreter behind the venv: with -I -S it sees only its standard library.
        self.python = python or os.path.realpath(sys.executable)
        self.isolate = namespaces_available() if isolate is None else isolate
        self.passthrough_env = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
        self.host_cores = sorted(os.sched_getaffinity(0))
        self.region = region
        self.concurrency = concurrency
        self.faults = faults or Faults()
        self.role_env = dict(role_env or ROLE_ENV)
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.stopped = False
        self.errors: list[str] = []
        self.payloads: list[bytes] = []  # every accepted event, for the credential scan
        self.results: list[tuple[str, str, bytes]] = []  # (request id, kind, body)
        self.counts = {"cold_starts": 0, "timeouts": 0, "invocations_run": 0, "async_retries": 0,
                       "expired": 0, "runtime_exits": 0, "max_queued": 0}
        self._lock = threading.Lock()
        self._specs: dict[tuple, FunctionSpec] = {}
        self.images: dict[str, BuiltImage] = {}  # image URI -> what `docker push` would have sent
        self.sandboxes = [Sandbox(self, i) for i in range(concurrency)]
        self.server = _serve(_InvokeAPI, on_error=self.error, emu=self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def take_errors(self) -> list[str]:
        with self._lock:
            out, self.errors[:] = list(self.errors), []
        return out

    def count(self, what, n=1):
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def reset(self, faults: Faults | None = None):
        self.faults = faults or Faults()
        with self._lock:
            self.payloads.clear()
            self.results.clear()

    def _spec(self, name: str) -> FunctionSpec | None:
        from moto.awslambda.models import lambda_backends

        backend = lambda_backends[ACCOUNT][self.region]
        try:
            fn = backend.get_function(name)
        except Exception:
            return None
        cfgs = getattr(fn, "event_invoke_config", []) or []
        image = self.images.get((fn.code or {}).get("ImageUri"))
        # moto keeps LastModified on configuration updates: the configuration itself is the key.
        key = (fn.function_arn, fn.code_sha_256, fn.last_modified, len(cfgs),
               image.digest if image is not None else None, fn.handler, fn.run_time, fn.timeout,
               fn.memory_size, str(getattr(fn, "ephemeral_storage", None)),
               tuple(sorted((fn.environment_vars or {}).items())),
               tuple(ly["Arn"] for ly in (fn.layers or [])), tuple(fn.image_config.cmd or ()))
        with self._lock:
            spec = self._specs.get(key)
        if spec is None:
            spec = FunctionSpec(fn, backend, self.root, self.images)
            with self._lock:
                self._specs[key] = spec
        return spec

    # Container images: the tests' stand-in for `docker build` + `docker push` to ECR.
    def push_image(self, uri: str, context: str) -> "BuiltImage":
        """Build the image of a build context as far as the emulator can (see
        ``build_image``) and register it under ``uri`` (a later push of the tag replaces it)."""
        image = build_image(context, os.path.join(self.root, "images"))
        with self._lock:
            self.images[uri] = image
        return image

    def registry_push(self, h, body: bytes):
        """``POST REGISTRY_PATH`` {"uri", "context"}: ``push_image`` over HTTP, for a
        stand-in ``docker push`` running in another process."""
        try:
            req = json.loads(body)
            image = self.push_image(req["uri"], req["context"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return self._error(h, 400, "InvalidImage", f"{type(exc).__name__}: {exc}")
        return h._reply(200, json.dumps({"digest": image.digest}).encode(),
                        {"Content-Type": "application/json"})

    @staticmethod
    def image_uri_of(body: bytes) -> str | None:
        """The ImageUri of a CreateFunction or UpdateFunctionCode request, if any."""
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return None
        code = req.get("Code", req) if isinstance(req, dict) else {}
        uri = code.get("ImageUri") if isinstance(code, dict) else None
        return uri if isinstance(uri, str) else None

    def account_settings(self, h):
        """GetAccountSettings: moto has none; the data plane knows its concurrency."""
        body = {"AccountLimit": {"ConcurrentExecutions": self.concurrency,
                                 "UnreservedConcurrentExecutions": self.concurrency,
                                 "CodeSizeUnzipped": 262144000, "CodeSizeZipped": 52428800,
                                 "TotalCodeSize": 80530636800},
                "AccountUsage": {"FunctionCount": len({s.name for s in self._specs.values()}),
                                 "TotalCodeSize": 0}}
        h._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def handle_invoke(self, h: _InvokeAPI, name: str, body: bytes):
        faults = self.faults
        if faults.latency:
            time.sleep(faults.latency)
        if faults.roll(faults.hang):
            faults.count("hung")
            deadline = time.time() + faults.hang_s
            while time.time() < deadline and not self.stopped:
                time.sleep(0.05)
            h.close_connection = True  # never answered
            return
        spec = self._spec(name.split(":")[-1] if name.startswith("arn:") else name)
        if spec is None:
            return self._error(h, 404, "ResourceNotFoundException", f"Function not found: {name}")
        if spec.package_type == "Image" and spec.image is None:
            return self._error(h, 400, "InvalidParameterValueException",
                               f"image {spec.name} was never pushed to this emulator")
        if spec.runtime != self.runtime:
            return self._error(h, 400, "InvalidRuntimeException",
                               f"runtime {spec.runtime} not available here (only {self.runtime})")
        machine = {"x86_64": "x86_64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        if spec.arch != machine:
            return self._error(h, 400, "InvalidRuntimeException",
                               f"this emulator runs {machine} functions, not {spec.arch}")
        itype = h.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if itype != "Event":
            return self._error(h, 400, "InvalidParameterValueException",
                               "the emulator supports InvocationType=Event only")
        if len(body) > ASYNC_PAYLOAD_LIMIT:
            return self._error(h, 413, "RequestEntityTooLargeException",
                               f"{len(body)} byte payload is over the {ASYNC_PAYLOAD_LIMIT} byte limit")
        if faults.roll(faults.throttle):
            faults.count("throttled")
            info = {"Type": "User", "message": "Rate Exceeded.",
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                    "retryAfterSeconds": str(faults.retry_after)}
            return h._reply(429, json.dumps(info).encode(), {
                "Content-Type": "application/json", "x-amzn-ErrorType": "TooManyRequestsException"})
        with faults.lock:
            request_id = str(uuid.UUID(int=faults.rng.getrandbits(128), version=4))
        faults.count("accepted")
        with self._lock:
            self.payloads.append(body)
        if faults.roll(faults.drop):
            faults.count("dropped")
        else:
            copies = 1
            if faults.roll(faults.duplicate):
                with faults.lock:
                    copies = faults.rng.choice((2, 3))
                faults.count("duplicated")
            for _ in range(copies):
                self.enqueue(Invocation(spec, body, request_id))
        h._reply(202, b"", {"x-amzn-RequestId": request_id})

    # The async queue: events wait for a free slot, up to their maximum age.
    def enqueue(self, inv: Invocation) -> None:
        with self._cond:
            self._queue.append(inv)
            if len(self._queue) > self.counts["max_queued"]:
                self.counts["max_queued"] = len(self._queue)
            self._cond.notify()

    def next_event(self) -> Invocation | None:
        with self._cond:
            while not self._queue and not self.stopped:
                self._cond.wait(0.2)
                if not self._queue:
                    return None
            if self.stopped:
                return None
            inv = self._queue.popleft()
        if time.time() - inv.enqueued_at > inv.spec.max_event_age:
            self.count("expired")  # Lambda discards it (or sends it to an on-failure destination)
            return None
        return inv

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    @staticmethod
    def _error(h, status, kind, message):
        h._reply(status, json.dumps({"Type": "User", "message": message}).encode(),
                 {"Content-Type": "application/json", "x-amzn-ErrorType": kind})

    def record_result(self, inv, kind, body):
        with self._lock:
            self.results.append((inv.request_id, kind, body))
            self.counts["invocations_run"] += 1

    def retry_async(self, inv: Invocation):
        """Lambda retries failed async invocations up to MaximumRetryAttempts (default 2)."""
        if inv.attempt < inv.spec.max_retries:
            self.count("async_retries")
            again = Invocation(inv.spec, inv.payload, inv.request_id, inv.attempt + 1, inv.enqueued_at)
            timer = threading.Timer(0.5, self.enqueue, args=(again,))
            timer.daemon = True
            timer.start()

    def idle(self) -> bool:
        return self.queued() == 0 and all(s.current is None for s in self.sandboxes)

    def close(self):
        self.stopped = True
        with self._cond:
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        for s in self.sandboxes:
            s.thread.join(timeout=5)
            s.close()
        for sub in ("code", "opt", "images"):
            if os.path.isdir(os.path.join(self.root, sub)):
                _writable(os.path.join(self.root, sub))


class BuiltImage:
    def __init__(self, task_root: str, runtime: str, handler: str, digest: str):
        self.task_root, self.runtime, self.handler, self.digest = task_root, runtime, handler, digest


_BASE_IMAGE = re.compile(r"public\.ecr\.aws/lambda/python:(3\.\d+)")
_TASK_ROOT = ("${LAMBDA_TASK_ROOT}", "${LAMBDA_TASK_ROOT}/", "/var/task", "/var/task/")


def build_image(context: str, images_root: str) -> BuiltImage:
    """An image from a build context, for a Dockerfile the emulator can run without docker:
    FROM one of AWS's Lambda Python base images (its equivalent here: the standard library,
    awslambdaric and the bundled SDK of the emulator's runtime dir), COPY into the task root
    (a directory's contents or a file, as docker copies them), CMD the handler. Any other
    instruction is refused: the emulator cannot pretend to have run it."""
    with open(os.path.join(context, "Dockerfile"), encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("#")]
    runtime = handler = None
    copies = []
    for line in lines:
        op, _, rest = line.partition(" ")
        args = [a for a in rest.split() if not a.startswith("--platform")]
        if op == "FROM":
            m = _BASE_IMAGE.fullmatch(args[0]) if len(args) == 1 else None
            if m is None:
                raise ValueError(f"the emulator runs images FROM public.ecr.aws/lambda/python:X only, not {rest!r}")
            runtime = f"python{m.group(1)}"
        elif op == "COPY":
            if len(args) < 2 or args[-1] not in _TASK_ROOT:
                raise ValueError(f"the emulator copies into the task root only: COPY {rest}")
            copies += args[:-1]
        elif op == "CMD":
            cmd = json.loads(rest)
            if not (isinstance(cmd, list) and len(cmd) == 1 and isinstance(cmd[0], str)):
                raise ValueError(f"CMD must name the handler: {rest}")
            handler = cmd[0]
        else:
            raise ValueError(f"the emulator cannot build {op} instructions (no docker here): {line}")
    if runtime is None or handler is None:
        raise ValueError(f"{context}/Dockerfile needs a FROM and a CMD")
    digest = hashlib.sha256()
    staging = os.path.join(images_root, uuid.uuid4().hex)
    task = os.path.join(staging, "task")
    os.makedirs(task)
    for src in copies:
        full = os.path.normpath(os.path.join(context, src))
        if not full.startswith(os.path.abspath(context)) or not os.path.exists(full):
            raise ValueError(f"COPY {src}: not in the build context {context}")
        if os.path.isdir(full):
            shutil.copytree(full, task, dirs_exist_ok=True, symlinks=True)
        else:
            shutil.copy2(full, task)
    for dirpath, dirs, files in os.walk(task):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            digest.update(os.path.relpath(p, task).encode())
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    _read_only(task)
    return BuiltImage(task, runtime, handler, digest.hexdigest())


def build_runtime_dir(runtime: str, cache_root: str) -> str:
    """The runtime's own files, for the emulator's sandboxes: awslambdaric (the host's
    version) and the boto3/botocore the Lambda runtime bundles, installed from the
    package registry by the project's packaging code (wheels cached in ``cache_root``)."""
    import importlib.metadata as md

    from cloudbutton_executor import packaging

    machine = {"x86_64": "x86_64", "aarch64": "arm64"}[os.uname().machine]
    want = dict(packaging.runtime_info(runtime).sdk, awslambdaric=md.version("awslambdaric"))
    key = hashlib.sha256(json.dumps([runtime, machine, sorted(want.items())]).encode()).hexdigest()[:16]
    dest = os.path.join(cache_root, "runtimes", f"{runtime}-{machine}-{key}")
    if os.path.isdir(dest):
        return dest
    tmp = f"{dest}.{uuid.uuid4().hex}"
    packaging.resolve(want, runtime, machine, tmp, cache=os.path.join(cache_root, "wheels"))
    packaging.strip_tree(tmp)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
