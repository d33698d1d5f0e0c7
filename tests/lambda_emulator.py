"""A local Lambda data plane for tests: runs the *deployed* zip through AWS's awslambdaric.

- ``ForwardingProxy``: an HTTP reverse proxy (to moto) with a fault hook; used as the
  S3 endpoint that injects 500/503, and as the fallback of the emulator's endpoint.
- ``LambdaEmulator``: serves ``POST /2015-03-31/functions/{name}/invocations``
  (``X-Amz-Invocation-Type: Event`` -> 202) and forwards every other Lambda API
  call to moto, so one ``endpoints.lambda`` URL serves deploy and invoke. The
  function's code, handler, layers, environment, timeout and async retry config
  are read from moto's control plane (what ``cloudbutton deploy`` created).
- ``Sandbox``: one concurrency slot = one ``python -m awslambdaric <handler>``
  process fed by its own small Runtime API server; warm reuse, cold start when
  the code or configuration changed, killed at the function timeout.
- ``Faults``: drop / duplicate / throttle (429 + retryAfterSeconds) / latency /
  kill-mid-task, with counters so tests can check the faults really happened.

Runtime processes get dummy credentials through their environment (the
"execution role"); events never carry any.
"""
from __future__ import annotations

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

    def handle_error(self, request, client_address):
        # Killed runtimes and closed client connections are part of the game here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _serve(handler_cls, **attrs) -> _Server:
    handler = type(handler_cls.__name__, (handler_cls,), attrs)
    server = _Server(("127.0.0.1", 0), handler)
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
        self.lock = threading.Lock()
        self.server = _serve(_ProxyHandler, proxy=self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, h: _ProxyHandler, body: bytes):
        with self.lock:
            self.requests += 1
            self.methods[h.command] = self.methods.get(h.command, 0) + 1
            fault = self.rng.random() < self.error_rate
            after = self.rng.random() < 0.5
            code = self.rng.choice((500, 503))
            if fault:
                self.injected += 1
        if fault and not after:
            return self._error(h, code)
        status, headers, data = forward(self.target, h.command, h.path, h.headers, body)
        if fault:
            return self._error(h, code)
        relay(h, status, headers, data)

    @staticmethod
    def _error(h, code):
        kind = "InternalError" if code == 500 else "SlowDown"
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
                 kill=0.0, kill_after=(0.01, 0.1), seed=7):
        self.drop, self.duplicate, self.throttle = drop, duplicate, throttle
        self.retry_after, self.latency, self.kill, self.kill_after = retry_after, latency, kill, kill_after
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"accepted": 0, "dropped": 0, "duplicated": 0, "throttled": 0, "killed": 0}

    def roll(self, p: float) -> bool:
        with self.lock:
            return p > 0 and self.rng.random() < p

    def count(self, what: str, n: int = 1):
        with self.lock:
            self.counts[what] += n


# Function state from moto's control plane ---------------------------------------------
class FunctionSpec:
    def __init__(self, fn, backend, root: str):
        self.name = fn.function_name
        self.arn = fn.function_arn
        self.handler = fn.handler
        self.runtime = fn.run_time
        self.package_type = getattr(fn, "package_type", "Zip")
        self.timeout = float(fn.timeout)
        self.memory = int(fn.memory_size)
        self.env = dict(fn.environment_vars or {})
        cfgs = getattr(fn, "event_invoke_config", []) or []
        self.max_retries = cfgs[0].config.get("MaximumRetryAttempts", 2) if cfgs else 2
        self.code_sha = fn.code_sha_256
        layer_arns = [ly["Arn"] for ly in (fn.layers or [])]
        self.key = (self.code_sha, self.handler, self.runtime, self.timeout, self.memory,
                    tuple(sorted(self.env.items())), tuple(layer_arns))
        if self.package_type != "Zip":
            self.task_root, self.layer_dirs = None, []
            return
        self.task_root = _unzip(fn.code_bytes, os.path.join(root, "code", _safe(self.code_sha)))
        self.layer_dirs = []
        for arn in layer_arns:
            lv = backend.layers_versions_by_arn(arn)
            self.layer_dirs.append(_unzip(lv.code_bytes, os.path.join(root, "layers", _safe(lv.code_sha_256))))


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", s)[:64]


def _unzip(data: bytes, dest: str) -> str:
    if not os.path.isdir(dest):
        tmp = f"{dest}.{uuid.uuid4().hex}"
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


class Invocation:
    def __init__(self, spec: FunctionSpec, payload: bytes, request_id: str, attempt: int = 0):
        self.spec, self.payload, self.request_id, self.attempt = spec, payload, request_id, attempt
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
        self.server = _serve(_RuntimeAPI, sandbox=self)
        self.port = self.server.server_address[1]
        self.log = open(os.path.join(emulator.root, f"sandbox-{index}.log"), "ab")
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
    def _start(self, spec: FunctionSpec):
        self._kill()
        self.inbox = queue.Queue(maxsize=1)
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        pythonpath = [spec.task_root] + [os.path.join(d, "python") for d in spec.layer_dirs]
        tmp = os.path.join(self.emu.root, f"tmp-{self.index}")
        os.makedirs(tmp, exist_ok=True)
        env.update(spec.env)
        env.update(self.emu.role_env)
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.port}",
            "LAMBDA_TASK_ROOT": spec.task_root, "_HANDLER": spec.handler,
            "PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONUNBUFFERED": "1",
            "AWS_LAMBDA_FUNCTION_NAME": spec.name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
            "AWS_REGION": self.emu.region, "AWS_DEFAULT_REGION": self.emu.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}", "HOME": tmp, "TMPDIR": tmp,
        })
        self.proc = subprocess.Popen([sys.executable, "-m", "awslambdaric", spec.handler],
                                     cwd=spec.task_root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.spec_key = spec.key
        self.init_error = None
        self.cold_starts += 1
        self.emu.count("cold_starts")

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
            try:
                inv = self.emu.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._run(inv)
            except Exception as exc:  # keep the slot alive; record for debugging
                self.emu.errors.append(repr(exc))
        self._kill()

    def _run(self, inv: Invocation):
        spec = inv.spec
        if self.proc is None or self.proc.poll() is not None or self.spec_key != spec.key:
            self._start(spec)
        self.current = inv
        self.inbox.put(inv)
        proc = self.proc
        # Wait for the runtime to pick it up (its init counts against the timeout, as on Lambda).
        deadline = time.time() + spec.timeout
        while not inv.taken.wait(0.05):
            if proc.poll() is not None or time.time() > deadline:
                self._drain()
                return self._failed(inv, "init failed" if proc.poll() is not None else "init timeout")
        deadline = time.time() + spec.timeout
        kill_at = None
        if self.emu.faults.roll(self.emu.faults.kill):
            lo, hi = self.emu.faults.kill_after
            kill_at = time.time() + random.uniform(lo, hi)
        while not inv.done.wait(0.01):
            now = time.time()
            if kill_at is not None and now >= kill_at:
                self.emu.faults.count("killed")
                self._kill()
                return self._failed(inv, "killed")
            if proc.poll() is not None:
                return self._failed(inv, f"runtime exited with {proc.returncode}")
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
        relay(self, *forward(self.emu.moto_target, self.command, self.path, self.headers, body))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _any


class LambdaEmulator:
    def __init__(self, moto_url: str, root: str, region: str = "us-east-1", concurrency: int = 4,
                 faults: Faults | None = None, role_env: dict | None = None):
        u = urllib.parse.urlsplit(moto_url)
        self.moto_target = (u.hostname, u.port)
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.region = region
        self.faults = faults or Faults()
        self.role_env = dict(role_env or ROLE_ENV)
        self.queue: queue.Queue = queue.Queue()
        self.stopped = False
        self.errors: list[str] = []
        self.payloads: list[bytes] = []  # every accepted event, for the credential scan
        self.results: list[tuple[str, str, bytes]] = []  # (request id, kind, body)
        self.counts = {"cold_starts": 0, "timeouts": 0, "invocations_run": 0, "async_retries": 0}
        self._lock = threading.Lock()
        self._specs: dict[tuple, FunctionSpec] = {}
        self.sandboxes = [Sandbox(self, i) for i in range(concurrency)]
        self.server = _serve(_InvokeAPI, emu=self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

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
        key = (fn.function_arn, fn.code_sha_256, fn.last_modified)
        with self._lock:
            spec = self._specs.get(key)
            if spec is None:
                spec = self._specs[key] = FunctionSpec(fn, backend, self.root)
        return spec

    def handle_invoke(self, h: _InvokeAPI, name: str, body: bytes):
        faults = self.faults
        if faults.latency:
            time.sleep(faults.latency)
        spec = self._spec(name.split(":")[-1] if name.startswith("arn:") else name)
        if spec is None:
            return self._error(h, 404, "ResourceNotFoundException", f"Function not found: {name}")
        if spec.package_type != "Zip":
            return self._error(h, 400, "InvalidRuntimeException", "the emulator runs zip functions only")
        want = f"python{sys.version_info.major}.{sys.version_info.minor}"
        if spec.runtime != want:
            return self._error(h, 400, "InvalidRuntimeException",
                               f"runtime {spec.runtime} not available here (only {want})")
        itype = h.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if itype != "Event":
            return self._error(h, 400, "InvalidParameterValueException",
                               "the emulator supports InvocationType=Event only")
        if len(body) > 256 * 1024:
            return self._error(h, 413, "RequestEntityTooLargeException", "payload over 256 KB")
        if faults.roll(faults.throttle):
            faults.count("throttled")
            info = {"Type": "User", "message": "Rate Exceeded.",
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                    "retryAfterSeconds": str(faults.retry_after)}
            return h._reply(429, json.dumps(info).encode(), {
                "Content-Type": "application/json", "x-amzn-ErrorType": "TooManyRequestsException"})
        request_id = str(uuid.uuid4())
        faults.count("accepted")
        with self._lock:
            self.payloads.append(body)
        if faults.roll(faults.drop):
            faults.count("dropped")
        else:
            copies = 1
            if faults.roll(faults.duplicate):
                copies = faults.rng.choice((2, 3))
                faults.count("duplicated")
            for _ in range(copies):
                self.queue.put(Invocation(spec, body, request_id))
        h._reply(202, b"", {"x-amzn-RequestId": request_id})

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
            again = Invocation(inv.spec, inv.payload, inv.request_id, inv.attempt + 1)
            threading.Timer(0.5, self.queue.put, args=(again,)).start()

    def idle(self) -> bool:
        return self.queue.empty() and all(s.current is None for s in self.sandboxes)

    def close(self):
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()
        for s in self.sandboxes:
            s.thread.join(timeout=5)
            s.close()
