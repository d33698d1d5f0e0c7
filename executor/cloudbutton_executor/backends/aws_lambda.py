"""AWS Lambda: deploy the worker function, invoke it asynchronously, check versions.

The host talks to three AWS services, all through the standard credential
chain (nothing secret is stored by us or sent to workers):

- S3 (``S3Storage``): the storage protocol of ``protocol.py``.
- Lambda: ``InvocationType="Event"`` invokes of the one worker handler, sent by
  a pool of threads. Workers never call back: the job polls the statuses in S3
  (``poll_interval``) and ends silent invocations by deadline.
- IAM/STS: only at deploy time (role, least-privilege policy, account id).

Lambda delivers async events at least once and may lose them. Duplicates are
harmless (task keys are fixed, first write wins). Lost events are re-sent by
the job as backups once an invocation stays silent well past what its peers
took (``lost_after_s``, ``redeliveries``); a task with no result by the Lambda
timeout + ``deadline_grace_s`` ends as a timeout error.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import http.client
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor

from .. import config as _config
from ..errors import InfrastructureError, VersionMismatchError
from ..storage import S3Storage
from .base import Backend, BackendLimits

HANDLER = "cloudbutton_executor.worker.handler"
VERSIONS_ENV = "CLOUDBUTTON_VERSIONS"
CODE_ENV = "CLOUDBUTTON_CODE_SHA256"
MANAGED_TAG = "cloudbutton"
_READY_TTL_S = 30.0  # how long a successful version check is trusted
CANCEL_CHECK_TTL_S = 2.0


class NotDeployedError(VersionMismatchError):
    """The worker function does not exist (yet) where the config points."""


# Versions ------------------------------------------------------------------
def host_versions() -> dict:
    """What must match between host and worker for pickles and events to travel."""
    import cloudpickle

    from .. import __version__

    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "cloudpickle": cloudpickle.__version__, "executor": __version__}


def encode_versions(v: dict) -> str:
    return ",".join(f"{k}={v[k]}" for k in sorted(v))


def decode_versions(s: str | None) -> dict:
    out = {}
    for part in (s or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def version_problems(deployed: dict, host: dict | None = None) -> list[str]:
    host = host or host_versions()
    return [f"{k}: host {host[k]}, deployed {deployed.get(k, 'unknown')}"
            for k in sorted(host) if deployed.get(k) != host[k]]


# Packaging -------------------------------------------------------------------
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # deterministic zips: same sources, same sha256


def _add_tree(zf: zipfile.ZipFile, root: str, arc_root: str) -> None:
    entries = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in files:
            # Sources only: no bytecode, editor backups or temporary files in the zip.
            if not name.endswith(".py") and name != "py.typed":
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            entries.append((f"{arc_root}/{rel}" if arc_root else rel, full))
    for arc, full in sorted(entries):
        info = zipfile.ZipInfo(arc, date_time=_FIXED_TIME)
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(full, "rb") as f:
            zf.writestr(info, f.read())


def build_function_zip() -> bytes:
    """cloudbutton_executor and its one pinned dependency (cloudpickle, same version as
    the host's); boto3 comes with Lambda's Python runtime."""
    import cloudpickle

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add_tree(zf, pkg, "cloudbutton_executor")
        _add_tree(zf, os.path.dirname(os.path.abspath(cloudpickle.__file__)), "cloudpickle")
    return buf.getvalue()


def executor_code_sha256() -> str:
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add_tree(zf, pkg, "cloudbutton_executor")
    return hashlib.sha256(buf.getvalue()).hexdigest()


def build_layer_zip(requirements: str, python: str | None = None) -> bytes:
    """Extra packages for Lambda's platform, installed under ``python/`` (a layer's layout).
    pip options (index, find-links) come from pip's own config or PIP_* variables."""
    if not os.path.isfile(requirements):
        raise FileNotFoundError(f"requirements file {requirements!r} does not exist")
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="cloudbutton-layer-") as tmp:
        target = os.path.join(tmp, "python")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--platform", "manylinux2014_x86_64", "--implementation", "cp",
               "--python-version", python, "--only-binary=:all:", "--target", target,
               "-r", requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the layer from {requirements} failed:\n"
                               f"{' '.join(cmd)}\n{proc.stderr.strip() or proc.stdout.strip()}")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            _add_tree(zf, target, "python")
        return buf.getvalue()


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# IAM -------------------------------------------------------------------------
def trust_policy() -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


def access_policy(bucket: str, prefix: str, region: str, account: str, function: str,
                  partition: str = "aws") -> dict:
    """Least privilege: objects under ``prefix/`` only, listing only that prefix, and the
    function's own log group."""
    logs = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ObjectsUnderPrefix", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*"},
        {"Sid": "ListPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:{partition}:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
        {"Sid": "Logs", "Effect": "Allow", "Action": "logs:CreateLogGroup",
         "Resource": f"{logs}:*"},
        {"Sid": "LogStreams", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": f"{logs}:log-stream:*"},
    ]}


def _policy_doc(doc) -> dict:
    if isinstance(doc, str):
        doc = json.loads(urllib.parse.unquote(doc))
    return doc


def _error_code(err) -> str:
    return getattr(err, "response", {}).get("Error", {}).get("Code", "")


# Deploy ----------------------------------------------------------------------
class Deployer:
    """Creates or updates, idempotently, everything the Lambda backend needs."""

    POLICY_NAME = "cloudbutton-access"

    def __init__(self, cfg: _config.Config, out=None):
        self.cfg = cfg
        self.session = cfg.session()
        self.region = cfg.resolved_region(self.session)
        self.actions: list[tuple[str, str, str]] = []  # (verb, what, detail)
        self._out = out

    def _did(self, verb, what, detail=""):
        self.actions.append((verb, what, detail))
        if self._out is not None:
            print(f"{verb:>9}  {what}" + (f"  ({detail})" if detail else ""), file=self._out)

    def account(self) -> tuple[str, str]:
        ident = self.cfg.client("sts", self.session).get_caller_identity()
        arn = ident["Arn"]
        return ident["Account"], arn.split(":")[1] if arn.startswith("arn:") else "aws"

    def run(self, *, memory=None, timeout=None, requirements=None, image_uri=None) -> list:
        cfg = self.cfg
        if memory is not None:
            cfg.lambda_.memory = int(memory)
        if timeout is not None:
            cfg.lambda_.timeout = int(timeout)
        _config.validate(cfg)
        account, partition = self.account()
        bucket = cfg.bucket or default_bucket(account, self.region)
        self.ensure_bucket(bucket)
        role_arn = self.ensure_role(bucket, account, partition)
        layers = [self.ensure_layer(requirements)] if requirements else []
        self.ensure_function(role_arn, layers, image_uri)
        self.ensure_async_config()
        return self.actions

    def ensure_bucket(self, bucket: str) -> None:
        s3 = self.cfg.client("s3", self.session)
        try:
            s3.head_bucket(Bucket=bucket)
            self._did("unchanged", f"s3://{bucket}")
            return
        except Exception as err:
            code = _error_code(err)
            if code in ("403", "AccessDenied", "Forbidden"):
                raise RuntimeError(f"bucket {bucket} exists but these credentials cannot use it; "
                                   f"choose another 'bucket:' in {self.cfg.path or _config.config_path()}")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        kwargs = {"Bucket": bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        s3.create_bucket(**kwargs)
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        self._did("created", f"s3://{bucket}", f"region {self.region}")

    def ensure_role(self, bucket: str, account: str, partition: str) -> str:
        iam = self.cfg.client("iam", self.session)
        name = self.cfg.role_name
        try:
            role = iam.get_role(RoleName=name)["Role"]
            if _policy_doc(role.get("AssumeRolePolicyDocument")) != trust_policy():
                iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust_policy()))
                self._did("updated", f"IAM role {name}", "trust policy")
            else:
                self._did("unchanged", f"IAM role {name}")
        except iam.exceptions.NoSuchEntityException:
            role = iam.create_role(
                RoleName=name, AssumeRolePolicyDocument=json.dumps(trust_policy()),
                Description="cloudbutton worker: S3 under its prefix, its own logs",
                Tags=[{"Key": MANAGED_TAG, "Value": "worker-role"}])["Role"]
            self._did("created", f"IAM role {name}")
        want = access_policy(bucket, self.cfg.prefix, self.region, account,
                             self.cfg.lambda_.function_name, partition)
        try:
            have = _policy_doc(iam.get_role_policy(RoleName=name, PolicyName=self.POLICY_NAME)
                               ["PolicyDocument"])
        except iam.exceptions.NoSuchEntityException:
            have = None
        if have != want:
            iam.put_role_policy(RoleName=name, PolicyName=self.POLICY_NAME,
                                PolicyDocument=json.dumps(want))
            self._did("created" if have is None else "updated", f"IAM policy {self.POLICY_NAME}",
                      f"s3://{bucket}/{self.cfg.prefix}/* and /aws/lambda/{self.cfg.lambda_.function_name}")
        else:
            self._did("unchanged", f"IAM policy {self.POLICY_NAME}")
        return role["Arn"]

    def ensure_layer(self, requirements: str) -> str:
        lam = self.cfg.client("lambda", self.session)
        blob = build_layer_zip(requirements)
        sha = hashlib.sha256(blob).hexdigest()
        name = self.cfg.layer_name
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=name):
            for lv in page.get("LayerVersions", []):
                if lv.get("Description") == f"sha256={sha}":
                    self._did("unchanged", f"layer {name}:{lv['Version']}")
                    return lv["LayerVersionArn"]
        runtime = f"python{sys.version_info.major}.{sys.version_info.minor}"
        lv = lam.publish_layer_version(LayerName=name, Description=f"sha256={sha}",
                                       Content={"ZipFile": blob}, CompatibleRuntimes=[runtime],
                                       CompatibleArchitectures=["x86_64"])
        self._did("created", f"layer {name}:{lv['Version']}", f"{len(blob) // 1024} KiB from {requirements}")
        return lv["LayerVersionArn"]

    def _wanted_config(self, role_arn: str, layers: list, image_uri) -> dict:
        lam = self.cfg.lambda_
        v = host_versions()
        want = {"Role": role_arn, "MemorySize": lam.memory, "Timeout": lam.timeout,
                "Description": f"cloudbutton worker ({encode_versions(v)})",
                "Environment": {"Variables": {VERSIONS_ENV: encode_versions(v),
                                              CODE_ENV: executor_code_sha256()}}}
        if not image_uri:
            want.update({"Runtime": f"python{v['python']}", "Handler": HANDLER, "Layers": layers})
        return want

    def ensure_function(self, role_arn: str, layers: list, image_uri=None) -> None:
        lam = self.cfg.client("lambda", self.session)
        name = self.cfg.lambda_.function_name
        want = self._wanted_config(role_arn, layers, image_uri)
        code = None if image_uri else build_function_zip()
        try:
            current = lam.get_function(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            current = None
        if current is None:
            kwargs = dict(want, FunctionName=name, Architectures=["x86_64"],
                          Tags={MANAGED_TAG: "worker"})
            if image_uri:
                kwargs.update(PackageType="Image", Code={"ImageUri": image_uri})
            else:
                kwargs.update(PackageType="Zip", Code={"ZipFile": code})
            self._retry_role_propagation(lambda: lam.create_function(**kwargs))
            self._wait_ready(lam, name)
            self._did("created", f"Lambda function {name}",
                      f"{self.cfg.lambda_.memory} MB, {self.cfg.lambda_.timeout} s, "
                      + (image_uri if image_uri else f"zip {len(code) // 1024} KiB"))
            return
        conf = current["Configuration"]
        if image_uri:
            code_changed = current.get("Code", {}).get("ImageUri") != image_uri
        else:
            code_changed = conf.get("CodeSha256") != b64sha256(code)
        if code_changed:
            kwargs = {"ImageUri": image_uri} if image_uri else {"ZipFile": code}
            lam.update_function_code(FunctionName=name, **kwargs)
            self._wait_ready(lam, name)
            self._did("updated", f"Lambda function {name} code",
                      image_uri or f"sha256 {b64sha256(code)[:12]}...")
        have = {"Role": conf.get("Role"), "MemorySize": conf.get("MemorySize"),
                "Timeout": conf.get("Timeout"), "Description": conf.get("Description"),
                "Environment": {"Variables": conf.get("Environment", {}).get("Variables", {})}}
        if not image_uri:
            have.update({"Runtime": conf.get("Runtime"), "Handler": conf.get("Handler"),
                         "Layers": [ly["Arn"] for ly in conf.get("Layers", [])]})
        changed = sorted(k for k in want if want[k] != have.get(k))
        if changed:
            self._retry_role_propagation(
                lambda: lam.update_function_configuration(FunctionName=name, **want))
            self._wait_ready(lam, name)
            self._did("updated", f"Lambda function {name} configuration", ", ".join(changed))
        elif not code_changed:
            self._did("unchanged", f"Lambda function {name}", f"code sha256 {conf.get('CodeSha256', '')[:12]}...")

    def ensure_async_config(self) -> None:
        lam = self.cfg.client("lambda", self.session)
        name = self.cfg.lambda_.function_name
        try:
            current = lam.get_function_event_invoke_config(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            current = {}
        if current.get("MaximumRetryAttempts") == 0:
            self._did("unchanged", "async invoke config", "MaximumRetryAttempts=0")
            return
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
        self._did("set", "async invoke config", "MaximumRetryAttempts=0 (the client owns retries)")

    @staticmethod
    def _retry_role_propagation(fn, limit_s: float = 60.0):
        # A new IAM role takes seconds to become assumable by Lambda; bounded wait.
        deadline = time.time() + limit_s
        delay = 1.0
        while True:
            try:
                return fn()
            except Exception as err:
                msg = str(err)
                if (_error_code(err) != "InvalidParameterValueException" or "role" not in msg.lower()
                        or time.time() + delay > deadline):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    @staticmethod
    def _wait_ready(lam, name: str, limit_s: float = 300.0) -> None:
        deadline = time.time() + limit_s
        while time.time() < deadline:
            conf = lam.get_function_configuration(FunctionName=name)
            state, update = conf.get("State", "Active"), conf.get("LastUpdateStatus", "Successful")
            if state == "Failed" or update == "Failed":
                raise RuntimeError(f"Lambda function {name} failed to deploy: "
                                   f"{conf.get('StateReason') or conf.get('LastUpdateStatusReason')}")
            if state == "Active" and update in ("Successful", None):
                return
            time.sleep(1.0)
        raise TimeoutError(f"Lambda function {name} did not become active within {limit_s:g} s")


def default_bucket(account: str, region: str) -> str:
    return f"cloudbutton-{account}-{region}"


def resolve_bucket(cfg: _config.Config, session=None) -> str:
    if cfg.bucket:
        return cfg.bucket
    session = session or cfg.session()
    account = cfg.client("sts", session).get_caller_identity()["Account"]
    return default_bucket(account, cfg.resolved_region(session))


def deploy(cfg: _config.Config | None = None, *, memory=None, timeout=None, requirements=None,
           image_uri=None, out=None) -> list:
    """``cloudbutton deploy``: returns the (verb, what, detail) actions taken."""
    return Deployer(cfg or _config.load(), out=out).run(
        memory=memory, timeout=timeout, requirements=requirements, image_uri=image_uri)


# Invocation ------------------------------------------------------------------
class _Throttled(Exception):
    def __init__(self, retry_after: float | None, message: str):
        super().__init__(message)
        self.retry_after = retry_after


class _Rejected(Exception):
    """A non-retryable answer (bad function name, payload too large, no permission...)."""


class SigV4Signer:
    """AWS Signature Version 4 for one service/region, with the daily signing key cached.

    Written from AWS's published algorithm; the tests check it against botocore's
    SigV4Auth. Credentials come from a botocore credential provider (refreshed by it).
    """

    def __init__(self, credentials, region: str, service: str):
        self._creds = credentials
        self.region, self.service = region, service
        self._key_cache: tuple | None = None

    def _key(self, secret: str, date: str) -> bytes:
        cached = self._key_cache
        if cached and cached[0] == (secret, date):
            return cached[1]
        k = ("AWS4" + secret).encode()
        for part in (date, self.region, self.service, "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        self._key_cache = ((secret, date), k)
        return k

    def headers(self, method: str, host: str, path: str, headers: dict, body: bytes,
                amz_date: str | None = None) -> dict:
        """``headers`` plus Host, X-Amz-Date, the session token and Authorization."""
        creds = self._creds.get_frozen_credentials()
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        out = dict(headers, Host=host)
        out["X-Amz-Date"] = amz_date
        if creds.token:
            out["X-Amz-Security-Token"] = creds.token
        signed = sorted((k.lower(), " ".join(str(v).split())) for k, v in out.items())
        names = ";".join(k for k, _ in signed)
        canonical = "\n".join([
            method, urllib.parse.quote(path, safe="/~"), "",
            "".join(f"{k}:{v}\n" for k, v in signed), names, hashlib.sha256(body).hexdigest()])
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        sig = hmac.new(self._key(creds.secret_key, date), to_sign.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={names}, Signature={sig}")
        return out


def _proxy_for(url: str) -> str | None:
    """The proxy the environment routes ``url`` through (``HTTPS_PROXY``, ``NO_PROXY``...)."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


class _FastInvoker:
    """Signed ``Invoke`` requests over keep-alive connections, one per thread.

    Why not ``client.invoke``: botocore spends ~1.5 ms of CPU per call (hooks,
    endpoint rules, header objects, parsing), so 1,000 invocations cost well over
    a second of GIL time; this path signs with SigV4Signer and writes the request
    in one send (~0.1 ms). Retries mirror botocore's standard mode: bounded
    attempts with exponential backoff and jitter on connection errors and 5xx.
    """

    MAX_ATTEMPTS = 5

    def __init__(self, session, region: str, endpoint_url: str, function: str):
        creds = session.get_credentials()
        if creds is None:
            raise RuntimeError("no AWS credentials found (AWS_PROFILE, ~/.aws, environment or "
                               "instance role); see `cloudbutton status`")
        url = urllib.parse.urlsplit(endpoint_url)
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._host_header = url.netloc
        self._base = f"{url.scheme}://{url.netloc}"
        self._path = (f"{url.path.rstrip('/')}/2015-03-31/functions/"
                      f"{urllib.parse.quote(function, safe='')}/invocations")
        self._signer = SigV4Signer(creds, region, "lambda")
        self._local = threading.local()

    def _sock(self):
        sock = getattr(self._local, "sock", None)
        if sock is None:
            import socket

            sock = socket.create_connection((self._host, self._port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
            self._local.sock = sock
            self._local.buf = b""
        return sock

    def _drop(self):
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _roundtrip(self, payload: bytes) -> tuple[int, dict, bytes]:
        headers = self._signer.headers("POST", self._host_header, self._path, {
            "X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}, payload)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock = self._sock()
        sock.sendall(f"POST {self._path} HTTP/1.1\r\n{head}Content-Length: {len(payload)}\r\n\r\n"
                     .encode() + payload)
        buf = self._local.buf
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the endpoint")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
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

    def invoke(self, payload: bytes) -> None:
        for attempt in range(self.MAX_ATTEMPTS):
            try:
                status, headers, body = self._roundtrip(payload)
            except (OSError, ValueError, IndexError, http.client.HTTPException) as exc:
                self._drop()
                if attempt + 1 == self.MAX_ATTEMPTS:
                    raise InfrastructureError(f"could not reach Lambda at {self._base}: {exc}") from exc
                time.sleep(_backoff(attempt))
                continue
            if status in (200, 202, 204):
                return
            kind, message, info = _parse_error(headers, body)
            if status == 429 or kind == "TooManyRequestsException":
                raise _Throttled(_retry_after(info, headers), message)
            if status >= 500 and attempt + 1 < self.MAX_ATTEMPTS:
                time.sleep(_backoff(attempt))
                continue
            raise _Rejected(f"Lambda refused the invocation: HTTP {status} {kind}: {message}")


class _Boto3Invoker:
    """``client.invoke`` with botocore's standard retries (slower per call, see _FastInvoker)."""

    def __init__(self, cfg: _config.Config, session, function: str, threads: int):
        self._client = cfg.client("lambda", session, max_pool_connections=threads)
        self._function = function

    def invoke(self, payload: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.invoke(FunctionName=self._function, InvocationType="Event", Payload=payload)
        except ClientError as err:
            resp = err.response
            if _error_code(err) == "TooManyRequestsException":
                raise _Throttled(_retry_after(resp, resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})),
                                 str(err)) from None
            raise _Rejected(f"Lambda refused the invocation: {err}") from None
        except BotoCoreError as err:
            raise InfrastructureError(f"could not reach Lambda: {err}") from err


def _backoff(attempt: int) -> float:
    # botocore standard mode: random jitter up to base * 2^attempt, capped at 20 s.
    return random.random() * min(20.0, 0.05 * 2 ** attempt)


def _parse_error(headers: dict, body: bytes) -> tuple[str, str, dict]:
    try:
        info = json.loads(body or b"{}")
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    kind = (headers.get("x-amzn-errortype", "") or info.get("__type", "") or info.get("Type", "")
            ).split(":")[0]
    message = info.get("message") or info.get("Message") or body[:200].decode("utf-8", "replace")
    return kind, message, info


def _retry_after(info: dict, headers: dict) -> float | None:
    for value in (info.get("retryAfterSeconds"), (headers or {}).get("retry-after")):
        try:
            if value not in (None, ""):
                return max(0.0, float(value))
        except (TypeError, ValueError):
            pass
    return None


# Lambda's documented limit for an asynchronous invocation's payload.
ASYNC_PAYLOAD_LIMIT_BYTES = 256 * 1024


class LambdaBackend(Backend):
    """Runs events on the deployed worker function; see the module docstring."""

    name = "lambda"

    def __init__(self, workers: int | None = None, storage=None, config=None,
                 config_path: str | None = None, session=None, **options):
        if isinstance(config, dict):
            cfg = _config.from_dict(config)
        elif config is None:
            cfg = _config.load(config_path)
        else:
            cfg = config
        lam_fields = set(_config.LambdaConfig.__dataclass_fields__)
        for key, value in options.items():
            if key in lam_fields:
                setattr(cfg.lambda_, key, value)
            elif key in ("region", "profile", "bucket", "prefix"):
                setattr(cfg, key, value)
            elif key == "endpoints":
                cfg.endpoints = dict(value)
            else:
                raise TypeError(f"unknown option {key!r} for the lambda backend; known: "
                                f"{sorted(lam_fields | {'region', 'profile', 'bucket', 'prefix', 'endpoints', 'config', 'config_path'})}")
        _config.validate(cfg)
        self.config = cfg
        lam = cfg.lambda_
        self.session = session or cfg.session()
        self.region = cfg.resolved_region(self.session)
        self.function_name = lam.function_name
        self.workers = int(workers or lam.workers)
        self.prefix = cfg.prefix
        if storage is None:
            storage = S3Storage(resolve_bucket(cfg, self.session), region=self.region,
                                endpoint_url=cfg.endpoints.get("s3"),
                                max_pool_connections=max(16, lam.invoke_threads), session=self.session)
        self.storage = storage
        # Workers never call back: the dispatcher polls S3 for statuses, bounds deadlines,
        # re-sends events presumed lost, and keeps in-flight invocations near the
        # concurrency so that a silent one is noticed.
        self._limits = BackendLimits(
            concurrency=self.workers, max_timeout_s=lam.timeout,
            payload_limit_bytes=ASYNC_PAYLOAD_LIMIT_BYTES, max_inflight=2 * self.workers,
            can_stop_running=False, calls_back=False, poll_interval_s=lam.poll_interval,
            deadline_grace_s=lam.deadline_grace, lost_after_s=lam.lost_after,
            redeliveries=lam.redeliveries, reports_accepted=True,
            default_memory_mb=lam.memory, auto_batch_target_s=1.0, architecture="x86_64")
        self._threads = lam.invoke_threads
        self._pool = ThreadPoolExecutor(max_workers=lam.invoke_threads, thread_name_prefix="cloudbutton-invoke")
        self._invoker = None
        self._invoker_lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._count_lock = threading.Lock()
        self._ready_at = 0.0
        self.invocations = 0

    @property
    def limits(self) -> BackendLimits:
        return self._limits

    # Invocation -----------------------------------------------------------------
    @property
    def invoker(self):
        if self._invoker is None:
            with self._invoker_lock:
                if self._invoker is None:
                    endpoint = self.config.endpoints.get("lambda") or \
                        self.config.client("lambda", self.session).meta.endpoint_url
                    # The fast path talks to the endpoint directly; behind a proxy (HTTPS_PROXY,
                    # NO_PROXY) boto3 goes, which knows how to use one.
                    if self.config.lambda_.fast_invoke and not _proxy_for(endpoint):
                        self._invoker = _FastInvoker(self.session, self.region, endpoint,
                                                     self.function_name)
                    else:
                        self._invoker = _Boto3Invoker(self.config, self.session, self.function_name,
                                                      self._threads)
        return self._invoker

    def invoke(self, events: list[dict], listener) -> None:
        inv = self.invoker  # fail here (no credentials) rather than in a pool thread
        for event in events:
            self._pool.submit(self._send, inv, event, listener)

    def _send(self, inv, event: dict, listener) -> None:
        try:
            # Warm containers may trust a "not cancelled" answer briefly (one HEAD saved per
            # task); cancel_job stops sending at once, so at most the in-flight window runs.
            payload = json.dumps(dict(event, cancel_check_ttl=CANCEL_CHECK_TTL_S),
                                 separators=(",", ":")).encode()
            give_up = time.time() + self.config.lambda_.throttle_retry_s
            attempt = 0
            while True:
                if event["job_id"] in self._cancelled:
                    return
                try:
                    inv.invoke(payload)
                    with self._count_lock:
                        self.invocations += 1
                    listener.on_accepted(event, time.time())
                    return
                except _Throttled as thr:
                    listener.on_throttled(event, thr.retry_after)
                    # Honour retryAfterSeconds, else exponential backoff; bounded in total.
                    delay = thr.retry_after if thr.retry_after is not None else 0.1 * 2 ** min(attempt, 6)
                    delay *= 1 + 0.25 * random.random()
                    attempt += 1
                    if time.time() + delay > give_up:
                        raise InfrastructureError(
                            f"task {event['task']}: Lambda kept throttling the invocation for "
                            f"{self.config.lambda_.throttle_retry_s:g} s ({thr}); raise the "
                            "function's concurrency limit or lower workers", event["task"]) from None
                    time.sleep(delay)
        except InfrastructureError as err:
            err.task_id = err.task_id or event["task"]
            listener.on_failure(event, err)
        except _Rejected as err:
            listener.on_failure(event, InfrastructureError(f"task {event['task']}: {err}", event["task"]))
        except Exception as err:  # never lose an event silently
            listener.on_failure(event, InfrastructureError(
                f"task {event['task']}: invoking Lambda failed: {err!r}", event["task"]))

    def cancel_job(self, job_id: str) -> None:
        self._cancelled.add(job_id)  # queued sends are skipped; running workers see the marker

    # Readiness and status ---------------------------------------------------------
    def deployed_configuration(self) -> dict | None:
        lam = self.config.client("lambda", self.session)
        try:
            return lam.get_function_configuration(FunctionName=self.function_name)
        except lam.exceptions.ResourceNotFoundException:
            return None

    def check_ready(self) -> None:
        """Refuse to run against a worker whose Python/cloudpickle/executor differ from ours."""
        if time.time() - self._ready_at < _READY_TTL_S:
            return
        conf = self.deployed_configuration()
        if conf is None:
            raise NotDeployedError(
                f"the Lambda function {self.function_name} does not exist in {self.region}: "
                "run `cloudbutton deploy`")
        deployed = decode_versions(conf.get("Environment", {}).get("Variables", {}).get(VERSIONS_ENV))
        problems = version_problems(deployed)
        if problems:
            raise VersionMismatchError(
                f"the deployed Lambda function {self.function_name} runs other versions than this "
                f"host ({'; '.join(problems)}): run `cloudbutton deploy` to update it")
        deployed_timeout = conf.get("Timeout")
        if deployed_timeout:
            self._limits = dataclasses.replace(self._limits, max_timeout_s=float(deployed_timeout))
        self._ready_at = time.time()

    def status(self) -> dict:
        """For `cloudbutton status` and the Jupyter panel; never includes secrets."""
        out = {"backend": "lambda", "region": self.region, "function": self.function_name,
               "bucket": getattr(self.storage, "bucket", None), "prefix": self.prefix,
               "workers": self.workers, "config": self.config.path,
               "host_versions": host_versions()}
        try:
            creds = self.session.get_credentials()
            problem = ""
        except Exception as err:  # e.g. a broken profile or credential process
            creds, problem = None, f": {err}"
        out["credentials"] = creds is not None
        out["credentials_source"] = getattr(creds, "method", None) if creds else None
        if creds is None:
            out.update(ok=False, deployed=None, message="no AWS credentials found (set AWS_PROFILE "
                       f"or configure ~/.aws/credentials){problem}")
            return out
        try:
            conf = self.deployed_configuration()
        except Exception as err:
            out.update(ok=False, deployed=None, message=f"cannot reach Lambda: {err}")
            return out
        if conf is None:
            out.update(ok=False, deployed=False,
                       message=f"{self.function_name} is not deployed: run `cloudbutton deploy`")
            return out
        env = conf.get("Environment", {}).get("Variables", {})
        deployed = decode_versions(env.get(VERSIONS_ENV))
        problems = version_problems(deployed)
        out.update(deployed=True, deployed_versions=deployed, versions_match=not problems,
                   code_matches=env.get(CODE_ENV) == executor_code_sha256(),
                   memory=conf.get("MemorySize"), timeout=conf.get("Timeout"),
                   last_modified=conf.get("LastModified"), ok=not problems)
        out["message"] = ("ready" if not problems else
                          f"versions differ ({'; '.join(problems)}): run `cloudbutton deploy`")
        if not problems and not out["code_matches"]:
            out["message"] = "ready (the host's executor sources differ from the deployed zip; " \
                             "`cloudbutton deploy` updates it)"
        return out

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def lambda_status(config_path: str | None = None) -> dict:
    """``LambdaBackend.status()`` that never raises (for the Jupyter panel and the CLI):
    a missing config, credentials or bucket becomes ``ok: False`` with a message."""
    try:
        cfg = _config.load(config_path)
    except Exception as err:
        return {"backend": "lambda", "ok": False, "credentials": None, "deployed": None,
                "message": str(err)}
    try:
        return LambdaBackend(config=cfg).status()
    except Exception as err:
        return {"backend": "lambda", "ok": False, "credentials": None, "deployed": None,
                "config": cfg.path, "function": cfg.lambda_.function_name, "region": cfg.region,
                "message": f"{type(err).__name__}: {err}"}
