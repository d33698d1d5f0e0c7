"""Sending ``InvocationType=Event`` invokes of the worker function.

Two invokers with one interface (``invoke(payload, deadline)`` raises ``Throttled``,
``Rejected`` or ``InfrastructureError``; returns once Lambda accepted the event; an
endpoint that does not answer is retried, a few seconds per try, never past
``deadline``):

- ``FastInvoker``: signed HTTP requests over keep-alive connections, one per
  sending thread. botocore's own SigV4 signer signs them (``SigV4Signer``),
  ``AWS_CA_BUNDLE`` (or the profile's ``ca_bundle``) verifies TLS, and each try
  has a short timeout, so an endpoint that never answers fails fast and is
  retried. Why not ``client.invoke``: botocore spends about 1.5 ms of CPU per
  call (hooks, endpoint rules, header objects, parsing), so 1,000 invocations
  cost well over a second of GIL time; this path signs and writes the request
  in one send (about 0.1 ms).
- ``Boto3Invoker``: ``client.invoke`` with botocore's standard retries, used
  behind an HTTP(S) proxy (boto3 knows how to use one) or when
  ``lambda.fast_invoke`` is off.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
from typing import Any, Protocol

from ... import config as _config
from ...errors import InfrastructureError


class Throttled(Exception):
    """Lambda refused the event for now (429); try again after ``retry_after`` s if known."""

    def __init__(self, retry_after: float | None, message: str):
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(Exception):
    """A non-retryable answer (bad function name, payload too large, no permission...)."""


class Invoker(Protocol):
    def invoke(self, payload: bytes, deadline: float | None = None) -> None:
        """Send one event, retrying no later than ``deadline`` (epoch s); raise Throttled,
        Rejected or InfrastructureError."""


class SigV4Signer:
    """botocore's own SigV4 signer (``SigV4Auth`` over an ``AWSRequest``) for one
    service/region; credentials are frozen per call, so refreshable ones stay fresh.
    About 50-80 µs a call: well inside the invoke budget."""

    def __init__(self, credentials: Any, region: str, service: str):
        self._creds = credentials
        self.region, self.service = region, service

    def headers(self, method: str, host: str, path: str, headers: dict[str, str], body: bytes,
                scheme: str = "https") -> dict[str, str]:
        """``headers`` plus Host, X-Amz-Date, X-Amz-Content-SHA256 when botocore adds it,
        the session token and Authorization."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method=method, url=f"{scheme}://{host}{path}", data=body, headers=headers)
        SigV4Auth(self._creds.get_frozen_credentials(), self.service, self.region).add_auth(req)
        out = {str(k): str(v) for k, v in req.headers.items()}
        out.setdefault("Host", host)
        return out


def proxy_for(url: str) -> str | None:
    """The proxy the environment routes ``url`` through (``HTTPS_PROXY``, ``NO_PROXY``...)."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return str(proxy)
    return None


def ca_bundle(session: Any) -> str | None:
    """The CA bundle botocore would use: the profile's ``ca_bundle`` or ``AWS_CA_BUNDLE``."""
    get = getattr(session, "get_config_variable", None) or \
        getattr(getattr(session, "_session", None), "get_config_variable", None)
    value = get("ca_bundle") if get is not None else None
    return str(value) if value else (os.environ.get("AWS_CA_BUNDLE") or None)


class FastInvoker:
    """Signed ``Invoke`` requests over keep-alive connections, one per thread (see the
    module docstring). Retries mirror botocore's standard mode: bounded attempts with
    exponential backoff and jitter on connection errors and 5xx."""

    MAX_ATTEMPTS = 5

    def __init__(self, session: Any, region: str, endpoint_url: str, function: str,
                 timeout_s: float = 5.0):
        creds = session.get_credentials()
        if creds is None:
            raise RuntimeError("no AWS credentials found (AWS_PROFILE, ~/.aws, environment or "
                               "instance role); see `cloudbutton status`")
        url = urllib.parse.urlsplit(endpoint_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        self._host_header = url.netloc
        self._base = f"{url.scheme}://{url.netloc}"
        self._path = (f"{url.path.rstrip('/')}/2015-03-31/functions/"
                      f"{urllib.parse.quote(function, safe='')}/invocations")
        self._signer = SigV4Signer(creds, region, "lambda")
        self._scheme = url.scheme
        self._timeout = timeout_s  # per try: an endpoint that never answers fails fast, then retries
        self._cafile = ca_bundle(session)
        self._local = threading.local()

    def _sock(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                import ssl

                ctx = ssl.create_default_context(cafile=self._cafile)
                sock = ctx.wrap_socket(sock, server_hostname=self._host)
            self._local.sock = sock
            self._local.buf = b""
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _roundtrip(self, payload: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        headers = self._signer.headers("POST", self._host_header, self._path, {
            "X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}, payload,
            scheme=self._scheme)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock = self._sock()
        sock.settimeout(max(0.05, timeout))  # connect and each read of this try
        sock.sendall(f"POST {self._path} HTTP/1.1\r\n{head}Content-Length: {len(payload)}\r\n\r\n"
                     .encode() + payload)
        buf: bytes = self._local.buf
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the endpoint")
            buf += chunk
        raw_head, _, rest = buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            raise http.client.HTTPException("chunked responses are not expected from Invoke")
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-response")
            rest += chunk
        body, self._local.buf = rest[:n], rest[n:]
        if hdrs.get("connection", "").lower() == "close":
            self._drop()
        return status, hdrs, body

    def invoke(self, payload: bytes, deadline: float | None = None) -> None:
        """Send one Event invoke; a try that gets no answer within the per-try timeout is
        retried (backoff) up to MAX_ATTEMPTS times and never past ``deadline``."""
        started = time.time()
        for attempt in range(self.MAX_ATTEMPTS):
            left = None if deadline is None else deadline - time.time()
            try:
                if left is not None and left <= 0:
                    raise TimeoutError("the task's deadline passed")
                status, headers, body = self._roundtrip(
                    payload, self._timeout if left is None else min(self._timeout, left))
            except (OSError, ValueError, IndexError, http.client.HTTPException) as exc:
                self._drop()
                late = deadline is not None and time.time() + backoff(attempt) >= deadline
                if attempt + 1 == self.MAX_ATTEMPTS or late:
                    raise InfrastructureError(
                        f"could not reach Lambda at {self._base}: {exc} ({attempt + 1} tries in "
                        f"{time.time() - started:.1f} s, {self._timeout:g} s each at most)") from exc
                time.sleep(backoff(attempt))
                continue
            if status in (200, 202, 204):
                return
            kind, message, info = parse_error(headers, body)
            if status == 429 or kind == "TooManyRequestsException":
                raise Throttled(retry_after(info, headers), message)
            if status >= 500 and attempt + 1 < self.MAX_ATTEMPTS:
                time.sleep(backoff(attempt))
                continue
            raise Rejected(f"Lambda refused the invocation: HTTP {status} {kind}: {message}")


class Boto3Invoker:
    """``client.invoke`` with botocore's standard retries (slower per call, see FastInvoker)."""

    def __init__(self, cfg: _config.Config, session: Any, function: str, threads: int):
        # A few seconds per try (connect and answer), like the fast path: botocore's
        # default of 60 s each would leave a task waiting minutes on a silent endpoint.
        t = cfg.lambda_.invoke_timeout
        self._client = cfg.client("lambda", session, max_pool_connections=threads,
                                  connect_timeout=t, read_timeout=t)
        self._function = function

    def invoke(self, payload: bytes, deadline: float | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.invoke(FunctionName=self._function, InvocationType="Event", Payload=payload)
        except ClientError as err:
            resp: dict[str, Any] = dict(err.response)
            if error_code(err) == "TooManyRequestsException":
                raise Throttled(retry_after(resp, resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})),
                                str(err)) from None
            raise Rejected(f"Lambda refused the invocation: {err}") from None
        except BotoCoreError as err:
            raise InfrastructureError(f"could not reach Lambda: {err}") from err


def error_code(err: BaseException) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def backoff(attempt: int) -> float:
    # botocore standard mode: random jitter up to base * 2^attempt, capped at 20 s.
    return random.random() * min(20.0, 0.05 * 2.0 ** attempt)


def parse_error(headers: dict[str, str], body: bytes) -> tuple[str, str, dict[str, Any]]:
    try:
        info = json.loads(body or b"{}")
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    kind = (headers.get("x-amzn-errortype", "") or info.get("__type", "") or info.get("Type", "")
            ).split(":")[0]
    message = info.get("message") or info.get("Message") or body[:200].decode("utf-8", "replace")
    return kind, str(message), info


def retry_after(info: dict[str, Any], headers: dict[str, str] | None) -> float | None:
    for value in (info.get("retryAfterSeconds"), (headers or {}).get("retry-after")):
        try:
            if value not in (None, ""):
                return max(0.0, float(str(value)))
        except (TypeError, ValueError):
            pass
    return None
