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
import http.client
import io
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .. import config as _config
from .. import packaging
from ..errors import InfrastructureError, MissingPackageError, VersionMismatchError
from ..storage import S3Storage
from .base import Backend, BackendLimits, JobFit

# Runs each invocation in a supervised task process (``supervisor``), which runs the one
# worker handler, ``worker.handler``: a crash is reported at once.
HANDLER = "cloudbutton_executor.supervisor.handler"
VERSIONS_ENV = "CLOUDBUTTON_VERSIONS"
CODE_ENV = "CLOUDBUTTON_CODE_SHA256"
MANIFEST_ENV = "CLOUDBUTTON_MANIFEST_SHA256"  # what was deployed: see deployment_key()
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


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# IAM -------------------------------------------------------------------------
def trust_policy() -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def data_prefix(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` named at deploy (``--data``) as ``(bucket, "prefix/")``: a
    folder (``""`` for the whole bucket); never a wildcard, so a policy names it exactly."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"--data takes s3://bucket/prefix, got {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ValueError(f"--data {url!r}: {bucket!r} is not an S3 bucket name "
                         "(3-63 lowercase letters, digits, . and -)")
    if any(c in prefix for c in "*?$"):
        raise ValueError(f"--data {url!r}: a data prefix names objects exactly (no * ? or $)")
    return bucket, (prefix.rstrip("/") + "/") if prefix.strip("/") else ""


def data_statements(urls: Iterable[str], partition: str = "aws") -> list[dict]:
    """Read and list access to the data prefixes named at deploy, and nothing more: a
    data-driven map's tasks read their chunks there (GET; HEAD needs the same right)."""
    by_bucket: dict[str, list[str]] = {}
    for url in urls:
        bucket, prefix = data_prefix(url)
        if prefix not in by_bucket.setdefault(bucket, []):
            by_bucket[bucket].append(prefix)
    out: list[dict] = []
    if by_bucket:
        out.append({"Sid": "DataRead", "Effect": "Allow", "Action": "s3:GetObject",
                    "Resource": [f"arn:{partition}:s3:::{b}/{p}*" for b, ps in sorted(by_bucket.items())
                                 for p in sorted(ps)]})
    for i, (bucket, prefixes) in enumerate(sorted(by_bucket.items())):
        out.append({"Sid": f"DataList{i}", "Effect": "Allow", "Action": "s3:ListBucket",
                    "Resource": f"arn:{partition}:s3:::{bucket}",
                    "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in sorted(prefixes)]}}})
    return out


def data_urls(policy: dict | None) -> list[str]:
    """The data prefixes a deployed policy grants (kept by a deploy that names none)."""
    urls = []
    for st in (policy or {}).get("Statement", []):
        if st.get("Sid") == "DataRead":
            res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            urls += ["s3://" + r.split(":::", 1)[1][:-1] for r in res]
    return urls


def access_policy(bucket: str, prefix: str, region: str, account: str, function: str,
                  partition: str = "aws", data: Iterable[str] = ()) -> dict:
    """Least privilege: read objects under ``prefix/``; write only what workers write (a
    task's status, result and crash reports, under ``jobs/*/tasks/``), so a task cannot
    replace a function blob, another job's inputs or a manifest; delete nothing; list
    only that prefix (so a missing key reads as missing, not forbidden); the function's
    own log group; read and list the ``data`` prefixes named at deploy."""
    logs = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadUnderPrefix", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*"},
        {"Sid": "WriteTaskOutputs", "Effect": "Allow", "Action": "s3:PutObject",
         "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/jobs/*/tasks/*"},
        {"Sid": "ListPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:{partition}:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
        {"Sid": "Logs", "Effect": "Allow", "Action": "logs:CreateLogGroup",
         "Resource": f"{logs}:*"},
        {"Sid": "LogStreams", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": f"{logs}:log-stream:*"},
        *data_statements(data, partition),
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

    def run(self, *, memory=None, timeout=None, requirements=None, image_uri=None, sync=False,
            modules=(), arch=None, image=False, data=None) -> list:
        cfg = self.cfg
        for url in data or ():
            data_prefix(url)  # a bad --data stops the deploy before anything changes
        if memory is not None:
            cfg.lambda_.memory = int(memory)
        if timeout is not None:
            cfg.lambda_.timeout = int(timeout)
        if arch is not None:
            cfg.lambda_.architecture = arch
        _config.validate(cfg)
        runtime, arch = packaging.runtime_for_host(), cfg.lambda_.architecture
        pins = self.wanted_pins(runtime, sync, modules, requirements)
        account, partition = self.account()
        bucket = cfg.bucket or default_bucket(account, self.region)
        self.bucket = bucket
        self.ensure_bucket(bucket)
        role_arn = self.ensure_role(bucket, account, partition, data)
        if pins is None:  # neither --sync nor --requirements: keep what is deployed
            layer = self.current_layer()
        elif pins:
            layer = self.ensure_layer(pins, runtime, arch, force_image=image)
        else:
            layer = None
        if layer is not None and layer.get("image"):
            image_uri = self.ensure_image(layer, runtime, arch)
            layer = dict(layer, arn=None)
        manifest = self.deployment_manifest(runtime, arch, layer, image_uri)
        self.ensure_function(role_arn, [layer["arn"]] if layer and layer.get("arn") else [], image_uri,
                             manifest_sha=self.put_manifest(manifest))
        self.ensure_async_config()
        return self.actions

    # Packages -------------------------------------------------------------------
    def wanted_pins(self, runtime, sync, modules, requirements) -> dict | None:
        """The distributions the layer must hold, pinned: None to keep what is deployed."""
        if not sync and not requirements and not modules:
            return None
        pins = {}
        if sync or modules:
            wanted = set(modules or ()) | (packaging.recorded_modules() if sync else set())
            dists, unknown = packaging.module_distributions(wanted)
            for mod in unknown:
                self._did("skipped", f"module {mod}", "no installed distribution provides it")
            pins.update(packaging.host_pins(sorted({d for ds in dists.values() for d in ds}), runtime))
        if requirements:
            pins.update(packaging.read_requirements(requirements))
        return dict(sorted(pins.items()))

    def _manifest_key(self, name: str) -> str:
        return f"{self.cfg.prefix}/deployments/{name}"

    def current_layer(self) -> dict | None:
        """The layer of the deployed function's manifest (a plain deploy keeps it)."""
        try:
            conf = self.cfg.client("lambda", self.session).get_function_configuration(
                FunctionName=self.cfg.lambda_.function_name)
        except Exception:
            return None
        env = conf.get("Environment", {}).get("Variables", {})
        manifest = read_manifest(self._s3(), self.bucket, self.cfg.prefix, self.cfg.lambda_.function_name,
                                 env.get(MANIFEST_ENV))
        layer = (manifest or {}).get("layer")
        if layer and layer.get("arn") in [ly["Arn"] for ly in conf.get("Layers", [])]:
            self._did("unchanged", f"layer {layer['arn'].rsplit(':', 2)[-2]}:{layer['arn'].rsplit(':', 1)[-1]}",
                      "kept (deploy --sync or --requirements replaces it)")
            return dict(layer, modules=manifest.get("modules", {}), pins=manifest.get("pins", {}),
                        fallbacks=manifest.get("fallbacks", {}))
        return None

    def _s3(self):
        return self.cfg.client("s3", self.session)

    def ensure_layer(self, pins: dict, runtime: str, arch: str, force_image=False) -> dict:
        """A layer with ``pins`` for the runtime, content-addressed by the pin set: an
        unchanged environment finds its layer and builds nothing."""
        lam = self.cfg.client("lambda", self.session)
        key = packaging.pin_key(pins, runtime, arch)
        name = self.cfg.layer_name
        s3 = self._s3()
        info_key = self._manifest_key(f"layers/{key}.json")
        if not force_image:
            for page in lam.get_paginator("list_layer_versions").paginate(LayerName=name):
                for lv in page.get("LayerVersions", []):
                    if lv.get("Description") == f"cloudbutton {key}":
                        info = _get_json(s3, self.bucket, info_key)
                        if info is not None and info.get("key") == key:
                            self._did("unchanged", f"layer {name}:{lv['Version']}",
                                      f"{len(info['pins'])} packages")
                            return dict(info, arn=lv["LayerVersionArn"])
        self._did("building", f"layer for {runtime} {arch}", ", ".join(f"{n}=={v}" for n, v in pins.items()))
        layer = packaging.build_layer(pins, runtime, arch, log=lambda m: self._did("warning", m))
        info = {"key": key, "runtime": runtime, "arch": arch, "pins": layer.resolution.resolved,
                "requested": pins, "fallbacks": layer.resolution.fallbacks, "modules": layer.manifest,
                "zip_bytes": len(layer.zip), "unzipped_bytes": layer.unzipped_bytes,
                "build_s": round(layer.build_s, 1)}
        total = layer.unzipped_bytes + len(build_function_zip())
        if force_image or total > packaging.UNZIPPED_LIMIT_BYTES:
            biggest = ", ".join(f"{n} {b / 1e6:.0f} MB" for n, b in layer.biggest)
            if not force_image:
                self._did("too big", f"layer for {runtime}",
                          f"{total / 1e6:.0f} MB unzipped with the function, over Lambda's "
                          f"{packaging.UNZIPPED_LIMIT_BYTES / 1e6:.0f} MB; biggest: {biggest}")
            return dict(info, image=True)
        if len(layer.zip) > packaging.DIRECT_UPLOAD_BYTES:
            # Over the direct-upload limit: Lambda takes the zip from S3.
            zkey = self._manifest_key(f"layers/{key}.zip")
            s3.put_object(Bucket=self.bucket, Key=zkey, Body=layer.zip)
            content = {"S3Bucket": self.bucket, "S3Key": zkey}
            how = f"through s3://{self.bucket}/{zkey}"
        else:
            content = {"ZipFile": layer.zip}
            how = "direct upload"
        lv = lam.publish_layer_version(LayerName=name, Description=f"cloudbutton {key}",
                                       Content=content, CompatibleRuntimes=[runtime],
                                       CompatibleArchitectures=[arch])
        s3.put_object(Bucket=self.bucket, Key=info_key, Body=json.dumps(info, sort_keys=True).encode())
        self._did("created", f"layer {name}:{lv['Version']}",
                  f"{len(layer.zip) / 1e6:.1f} MB zip, {layer.unzipped_bytes / 1e6:.0f} MB unzipped, "
                  f"{how}, built in {layer.build_s:.0f} s")
        return dict(info, arn=lv["LayerVersionArn"])

    def ensure_image(self, layer: dict, runtime: str, arch: str) -> str:
        """The container-image path: a Dockerfile with the same pins on the public Lambda
        base image, built and pushed to ECR when a docker daemon answers; else the exact
        commands are printed and the deploy stops (the function is not changed)."""
        tag = layer["key"][:16]
        build_dir = os.path.join(os.path.dirname(_config.config_path()), "image",
                                 self.cfg.lambda_.function_name)
        os.makedirs(build_dir, exist_ok=True)
        docker_text, reqs = packaging.dockerfile(layer["pins"], runtime, arch)
        for fname, data in (("Dockerfile", docker_text), ("requirements.txt", reqs)):
            with open(os.path.join(build_dir, fname), "w", encoding="utf-8") as f:
                f.write(data)
        with open(os.path.join(build_dir, "function.zip"), "wb") as f:
            f.write(build_function_zip())
        account, _ = self.account()
        repo = self.cfg.lambda_.function_name
        registry = f"{account}.dkr.ecr.{self.region}.amazonaws.com"
        uri = f"{registry}/{repo}:{tag}"
        platform = "linux/amd64" if arch == "x86_64" else "linux/arm64"
        commands = [
            f"cd {build_dir}",
            f"aws ecr create-repository --repository-name {repo} --region {self.region}  # once",
            f"aws ecr get-login-password --region {self.region} | docker login --username AWS "
            f"--password-stdin {registry}",
            f"docker build --platform {platform} -t {uri} .",
            f"docker push {uri}",
            f"cloudbutton deploy --image-uri {uri}",
        ]
        if not _docker_available():
            raise ImageRequired(
                f"the packages need the container-image path; no docker daemon answers here, so "
                f"build and push it yourself (Dockerfile, requirements.txt and function.zip are in "
                f"{build_dir}):\n  " + "\n  ".join(commands), build_dir=build_dir, commands=commands)
        self._push_image(build_dir, repo, registry, uri, platform)
        self._did("created", f"image {uri}", f"{len(layer['pins'])} packages")
        return uri

    def _push_image(self, build_dir, repo, registry, uri, platform):
        ecr = self.cfg.client("ecr", self.session)
        try:
            ecr.create_repository(repositoryName=repo)
        except ecr.exceptions.RepositoryAlreadyExistsException:
            pass
        token = ecr.get_authorization_token()["authorizationData"][0]
        user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
        for cmd, stdin in ((["docker", "login", "--username", user, "--password-stdin", registry], password),
                           (["docker", "build", "--platform", platform, "-t", uri, build_dir], None),
                           (["docker", "push", uri], None)):
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()[-2000:]}")

    def deployment_manifest(self, runtime, arch, layer, image_uri) -> dict:
        lam = self.cfg.lambda_
        out = {"function": lam.function_name, "runtime": runtime, "architecture": arch,
               "memory": lam.memory, "timeout": lam.timeout, "image_uri": image_uri,
               "runtime_sdk": packaging.runtime_info(runtime)["sdk"],
               "modules": {}, "pins": {}, "fallbacks": {}, "layer": None}
        if layer:
            out.update(modules=layer["modules"], pins=layer["pins"], fallbacks=layer.get("fallbacks", {}),
                       layer={k: layer.get(k) for k in ("arn", "key", "zip_bytes", "unzipped_bytes")})
        return out

    def put_manifest(self, manifest: dict) -> str:
        """Store what is deployed where the host reads it with one GET; its sha256 goes
        into the function's environment, so a host verifies what it reads."""
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        sha = hashlib.sha256(body).hexdigest()
        key = self._manifest_key(f"{manifest['function']}-{sha[:16]}.json")
        s3 = self._s3()
        try:
            s3.head_object(Bucket=self.bucket, Key=key)
        except Exception:
            s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return sha

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

    def ensure_role(self, bucket: str, account: str, partition: str,
                    data: Iterable[str] | None = None) -> str:
        """The worker's role and its policy; ``data``: the data prefixes it may read (None:
        those the deployed policy grants already)."""
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
        try:
            have = _policy_doc(iam.get_role_policy(RoleName=name, PolicyName=self.POLICY_NAME)
                               ["PolicyDocument"])
        except iam.exceptions.NoSuchEntityException:
            have = None
        want = access_policy(bucket, self.cfg.prefix, self.region, account,
                             self.cfg.lambda_.function_name, partition,
                             data=data_urls(have) if data is None else data)
        if have != want:
            iam.put_role_policy(RoleName=name, PolicyName=self.POLICY_NAME,
                                PolicyDocument=json.dumps(want))
            self._did("created" if have is None else "updated", f"IAM policy {self.POLICY_NAME}",
                      f"s3://{bucket}/{self.cfg.prefix}/* and /aws/lambda/{self.cfg.lambda_.function_name}"
                      + "".join(f", read s3://{u[5:]}" for u in data_urls(want)))
        else:
            self._did("unchanged", f"IAM policy {self.POLICY_NAME}")
        return role["Arn"]

    def _wanted_config(self, role_arn: str, layers: list, image_uri, manifest_sha=None) -> dict:
        lam = self.cfg.lambda_
        v = host_versions()
        env = {VERSIONS_ENV: encode_versions(v), CODE_ENV: executor_code_sha256()}
        if manifest_sha:
            env[MANIFEST_ENV] = manifest_sha
        want = {"Role": role_arn, "MemorySize": lam.memory, "Timeout": lam.timeout,
                "Description": f"cloudbutton worker ({encode_versions(v)})",
                "Environment": {"Variables": env}}
        if not image_uri:
            want.update({"Runtime": f"python{v['python']}", "Handler": HANDLER, "Layers": layers})
        return want

    def ensure_function(self, role_arn: str, layers: list, image_uri=None, manifest_sha=None) -> None:
        lam = self.cfg.client("lambda", self.session)
        name = self.cfg.lambda_.function_name
        want = self._wanted_config(role_arn, layers, image_uri, manifest_sha)
        code = None if image_uri else build_function_zip()
        try:
            current = lam.get_function(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            current = None
        if current is None:
            kwargs = dict(want, FunctionName=name, Architectures=[self.cfg.lambda_.architecture],
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
        arch = self.cfg.lambda_.architecture
        if (conf.get("Architectures") or ["x86_64"]) != [arch]:
            code_changed = True  # the architecture is set with the code (UpdateFunctionCode)
        if code_changed:
            kwargs = {"ImageUri": image_uri} if image_uri else {"ZipFile": code}
            kwargs["Architectures"] = [arch]
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
        """No Lambda retries (the client owns them) and a short maximum event age: an
        event queued behind the concurrency limit for longer than a job can wait for it
        is discarded instead of running (and billing) after the job ended."""
        lam = self.cfg.client("lambda", self.session)
        name = self.cfg.lambda_.function_name
        want = {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": max_event_age(self.cfg.lambda_.timeout)}
        try:
            current = lam.get_function_event_invoke_config(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            current = None
        detail = ", ".join(f"{k}={v}" for k, v in want.items())
        if current is not None and all(current.get(k) == v for k, v in want.items()):
            self._did("unchanged", "async invoke config", detail)
            return
        if current is not None:
            lam.delete_function_event_invoke_config(FunctionName=name)
        lam.put_function_event_invoke_config(FunctionName=name, **want)
        self._did("set", "async invoke config", detail)

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
           image_uri=None, sync=False, modules=(), arch=None, image=False, out=None,
           data=None) -> list:
    """``cloudbutton deploy``: returns the (verb, what, detail) actions taken. ``data``: the
    ``s3://bucket/prefix`` the workers may read besides the project's prefix (None: keep
    what is deployed; [] : none)."""
    return Deployer(cfg or _config.load(), out=out).run(
        memory=memory, timeout=timeout, requirements=requirements, image_uri=image_uri, sync=sync,
        modules=modules, arch=arch, image=image, data=data)


def max_event_age(timeout_s: int) -> int:
    """How long a queued async event may wait for a slot: the job's host gives a task
    timeout + grace before it declares it lost, so an older event is of no use
    (Lambda's bounds: 60 s to 6 h)."""
    return int(min(21600, max(60, 2 * timeout_s + 60)))


class ImageRequired(RuntimeError):
    """The packages do not fit in layers (or --image was asked) and no docker daemon
    answers: the message holds the exact commands to build and push the image."""

    def __init__(self, message, build_dir=None, commands=()):
        super().__init__(message)
        self.build_dir = build_dir
        self.commands = list(commands)


def _docker_available() -> bool:
    import shutil

    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _get_json(s3, bucket, key):
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception:
        return None


def read_manifest(s3, bucket, prefix, function, sha) -> dict | None:
    """The deployment manifest whose sha256 the function's environment names, verified."""
    if not sha:
        return None
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/deployments/{function}-{sha[:16]}.json")["Body"].read()
    except Exception:
        return None
    if hashlib.sha256(body).hexdigest() != sha:
        return None  # not what was deployed: never trusted
    return json.loads(body)


# Invocation ------------------------------------------------------------------
class _Throttled(Exception):
    def __init__(self, retry_after: float | None, message: str):
        super().__init__(message)
        self.retry_after = retry_after


class _Rejected(Exception):
    """A non-retryable answer (bad function name, payload too large, no permission...)."""


class SigV4Signer:
    """botocore's own SigV4 signer (``SigV4Auth`` over an ``AWSRequest``) for one
    service/region; credentials are frozen per call, so refreshable ones stay fresh.
    About 50-80 µs a call: well inside the invoke budget."""

    def __init__(self, credentials, region: str, service: str):
        self._creds = credentials
        self.region, self.service = region, service

    def headers(self, method: str, host: str, path: str, headers: dict, body: bytes,
                scheme: str = "https") -> dict:
        """``headers`` plus Host, X-Amz-Date, X-Amz-Content-SHA256 when botocore adds it,
        the session token and Authorization."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method=method, url=f"{scheme}://{host}{path}", data=body, headers=headers)
        SigV4Auth(self._creds.get_frozen_credentials(), self.service, self.region).add_auth(req)
        out = dict(req.headers.items())
        out.setdefault("Host", host)
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

    def __init__(self, session, region: str, endpoint_url: str, function: str, timeout_s: float = 5.0):
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
        self._scheme = url.scheme
        self._timeout = timeout_s  # per try: an endpoint that never answers fails fast, then retries
        # The CA bundle botocore would use (AWS_CA_BUNDLE, the profile's ca_bundle).
        self._cafile = session.get_config_variable("ca_bundle") if hasattr(session, "get_config_variable") \
            else getattr(getattr(session, "_session", None), "get_config_variable", lambda _k: None)("ca_bundle")
        self._local = threading.local()

    def _sock(self):
        sock = getattr(self._local, "sock", None)
        if sock is None:
            import socket

            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                import ssl

                ctx = ssl.create_default_context(cafile=self._cafile or os.environ.get("AWS_CA_BUNDLE") or None)
                sock = ctx.wrap_socket(sock, server_hostname=self._host)
            self._local.sock = sock
            self._local.buf = b""
        return sock

    def _drop(self):
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _roundtrip(self, payload: bytes, timeout: float) -> tuple[int, dict, bytes]:
        headers = self._signer.headers("POST", self._host_header, self._path, {
            "X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}, payload,
            scheme=self._scheme)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock = self._sock()
        sock.settimeout(max(0.05, timeout))  # connect and each read of this try
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

    def invoke(self, payload: bytes, deadline: float | None = None) -> None:
        """Send one Event invoke; a try that gets no answer within ``invoke_timeout`` is
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
                late = deadline is not None and time.time() + _backoff(attempt) >= deadline
                if attempt + 1 == self.MAX_ATTEMPTS or late:
                    raise InfrastructureError(
                        f"could not reach Lambda at {self._base}: {exc} ({attempt + 1} tries in "
                        f"{time.time() - started:.1f} s, {self._timeout:g} s each at most)") from exc
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
            default_memory_mb=lam.memory, auto_batch_target_s=1.0, architecture=lam.architecture)
        self._threads = lam.invoke_threads
        self._pool = ThreadPoolExecutor(max_workers=lam.invoke_threads, thread_name_prefix="cloudbutton-invoke")
        self._invoker = None
        self._invoker_lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._count_lock = threading.Lock()
        self._ready_at = 0.0
        self._conf: dict | None = None
        self._manifests: dict[str, dict | None] = {}
        self._s3 = None
        self._warned: set[str] = set()
        self._concurrency: int | None = None
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
                                                     self.function_name, self.config.lambda_.invoke_timeout)
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
            # An endpoint that does not answer is retried until the task's own deadline
            # (a few seconds per try): a task never waits on a silent endpoint for longer.
            deadline = (event.get("host_submit") or time.time()) + float(event.get("timeout") or 0) \
                + self.config.lambda_.deadline_grace
            attempt = 0
            while True:
                if event["job_id"] in self._cancelled:
                    return
                try:
                    inv.invoke(payload, deadline)
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
        arch = (conf.get("Architectures") or [None])[0]
        self._limits = dataclasses.replace(
            self._limits, max_timeout_s=float(conf.get("Timeout") or self._limits.max_timeout_s or 900),
            default_memory_mb=int(conf.get("MemorySize") or self._limits.default_memory_mb),
            architecture=arch or self._limits.architecture)
        self._conf = conf
        self._ready_at = time.time()

    def deployment(self) -> dict | None:
        """What was deployed (runtime, architecture, memory, the layer's modules), from the
        manifest the function's environment names and verifies; cached by its sha256."""
        conf = self._conf or self.deployed_configuration() or {}
        sha = conf.get("Environment", {}).get("Variables", {}).get(MANIFEST_ENV)
        if not sha:
            return None
        if sha not in self._manifests:
            if self._s3 is None:
                self._s3 = self.config.client("s3", self.session)
            bucket = getattr(self.storage, "bucket", None) or resolve_bucket(self.config, self.session)
            self._manifests[sha] = read_manifest(self._s3, bucket, self.prefix, self.function_name, sha)
        return self._manifests[sha]

    def check_job(self, *, modules=(), memory_mb=None, timeout=None) -> JobFit:
        """Pre-flight, before anything is uploaded: the deployed function can run this job as
        asked (versions, the modules it imports, memory, timeout). Returns the job's memory
        and timeout; raises naming what differs and the command that fixes it."""
        self.check_ready()
        conf = self._conf
        memory, limit = int(conf.get("MemorySize") or 0), int(self._limits.max_timeout_s or 900)
        if memory_mb is not None and int(memory_mb) != memory:
            # One function, one MemorySize: Lambda fixes memory (and the CPU share that comes
            # with it) at deploy time. Changing it per job would reconfigure the function under
            # every other running job, so a different size is refused, not silently ignored.
            raise ValueError(
                f"memory {memory_mb} MB: the Lambda function {self.function_name} is deployed with "
                f"{memory} MB, and Lambda fixes memory per function. Omit --memory to use {memory} MB, "
                f"or redeploy with `cloudbutton deploy --memory {int(memory_mb)}`")
        if timeout is not None and float(timeout) > limit:
            raise ValueError(
                f"timeout {timeout:g} s: the Lambda function {self.function_name} stops every "
                f"invocation at {limit} s; use a shorter timeout or redeploy with "
                f"`cloudbutton deploy --timeout {min(900, int(-(-float(timeout) // 1)))}`")
        modules = set(modules or ())
        if modules:
            packaging.record_modules(modules)  # what `cloudbutton deploy --sync` will deploy
            problems, warnings = self.module_problems(modules)
            if problems:
                raise MissingPackageError(
                    f"the deployed Lambda function {self.function_name} cannot run this job: "
                    + "; ".join(problems) + ". Run `cloudbutton deploy --sync` in this environment "
                    "(it deploys the packages your jobs import, at this host's versions)")
            for w in warnings:
                if w not in self._warned:
                    self._warned.add(w)
                    print(f"cloudbutton: {w}", file=sys.stderr)
        self._cap_inflight()
        return {"memory_mb": memory, "timeout": float(timeout) if timeout is not None else float(limit)}

    def module_problems(self, modules) -> tuple[list, list]:
        """(refusals, warnings) for each module the job imports, against the manifest."""
        import importlib.metadata as md

        manifest = self.deployment() or {}
        deployed = manifest.get("modules") or {}
        fallbacks = manifest.get("fallbacks") or {}
        dists, _unknown = packaging.module_distributions(modules)
        problems, warnings = [], []
        V = packaging._packaging().version.Version
        for mod in sorted(modules):
            host_dists = dists.get(mod) or []
            if not host_dists:
                continue  # no distribution on this host: it cannot be synced either
            dist = host_dists[0]
            if dist in packaging.PROVIDED:
                continue  # comes with the runtime (boto3...) or with our zip
            try:
                host_v = md.version(dist)
            except md.PackageNotFoundError:
                continue
            have = deployed.get(mod)
            if have is None:
                problems.append(f"module {mod} ({dist} {host_v} on this host) is not deployed")
                continue
            dep_v = have["version"]
            try:
                same = V(dep_v).release[:2] == V(host_v).release[:2]
            except Exception:
                same = dep_v == host_v
            if dep_v == host_v or same:
                continue
            fb = fallbacks.get(have["dist"])
            if fb and fb.get("host") == host_v:
                warnings.append(f"{mod}: this host has {dist} {host_v}, the Lambda runtime {dep_v}, "
                                f"the closest release with a wheel for it ({fb.get('reason')})")
                continue
            problems.append(f"module {mod}: this host has {dist} {host_v}, the deployed runtime {dep_v}")
        return problems, warnings

    def account_concurrency(self) -> int | None:
        """Concurrent executions this function may use: its reserved concurrency, else the
        account's unreserved pool (GetAccountSettings); None if it cannot be read."""
        if self._concurrency is None:
            lam = self.config.client("lambda", self.session)
            limit = None
            try:
                reserved = lam.get_function_concurrency(FunctionName=self.function_name)
                limit = reserved.get("ReservedConcurrentExecutions")
            except Exception:
                pass
            if not limit:
                try:
                    acct = lam.get_account_settings()["AccountLimit"]
                    limit = acct.get("UnreservedConcurrentExecutions") or acct.get("ConcurrentExecutions")
                except Exception:
                    limit = None
            self._concurrency = int(limit) if limit else 0
        return self._concurrency or None

    def _cap_inflight(self) -> None:
        limit = self.account_concurrency()
        if limit and self.workers > limit:
            msg = (f"workers={self.workers} is over the concurrency Lambda allows this function "
                   f"({limit}): at most {limit} invocations run at once, so no more are sent at a time")
            if msg not in self._warned:
                self._warned.add(msg)
                print(f"cloudbutton: {msg}", file=sys.stderr)
            self.workers = limit
            self._limits = dataclasses.replace(
                self._limits, concurrency=limit,
                max_inflight=min(self._limits.max_inflight or 2 * limit, 2 * limit))

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
