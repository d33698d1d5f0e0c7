"""``cloudbutton deploy``: creates or updates, idempotently, everything the Lambda
backend needs: the bucket, the worker's IAM role, the packages (a layer, or a
container image), the function, and its async invoke configuration.

First it checks the runtime calendar (``packaging.RUNTIMES``): AWS refuses to create,
then to update, zip functions on a deprecated runtime, so the deploy refuses first,
before anything is created or changed, saying when and the two ways out (a container
image on the same Python, or a newer Python); ``lambda.runtime_calendar: waive`` turns
that into a warning for endpoints that are not AWS.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ... import config as _config
from ... import packaging
from . import iam, image
from .function import (CODE_ENV, HANDLER, MANAGED_TAG, MANIFEST_ENV, VERSIONS_ENV, b64sha256,
                       build_function_zip, default_bucket, deployments_key, encode_versions,
                       executor_code_sha256, get_json, host_versions, manifest_key, max_event_age,
                       read_manifest)
from .invoke import error_code

Action = tuple[str, str, str]  # (verb, what, detail)


class ImageRequired(RuntimeError):
    """The packages need the container-image path (too big for layers, or --image) and no
    docker daemon answers: the message holds the exact commands to build, push and deploy
    the image; ``build_dir`` holds its build context."""

    def __init__(self, message: str, build_dir: str | None = None, commands: Iterable[str] = ()):
        super().__init__(message)
        self.build_dir = build_dir
        self.commands = list(commands)


class Deployer:
    """Creates or updates, idempotently, everything the Lambda backend needs."""

    POLICY_NAME = "cloudbutton-access"

    def __init__(self, cfg: _config.Config, out: TextIO | None = None,
                 today: datetime.date | None = None):
        self.cfg = cfg
        self.session = cfg.session()
        self.region = cfg.resolved_region(self.session)
        self.actions: list[Action] = []
        self._out = out
        self.today = today or packaging.utc_today()
        self.bucket = cfg.bucket or ""
        self.existing_type: str | None = None  # the function's package type, once looked up

    def _did(self, verb: str, what: str, detail: str = "") -> None:
        self.actions.append((verb, what, detail))
        if self._out is not None:
            print(f"{verb:>9}  {what}" + (f"  ({detail})" if detail else ""), file=self._out)

    def _lambda(self) -> Any:
        return self.cfg.client("lambda", self.session)

    def _s3(self) -> Any:
        return self.cfg.client("s3", self.session)

    def account(self) -> tuple[str, str]:
        ident = self.cfg.client("sts", self.session).get_caller_identity()
        arn = ident["Arn"]
        return str(ident["Account"]), arn.split(":")[1] if arn.startswith("arn:") else "aws"

    def run(self, *, memory: int | None = None, timeout: int | None = None,
            requirements: str | None = None, image_uri: str | None = None, sync: bool = False,
            modules: Iterable[str] = (), arch: str | None = None,
            image: bool = False, data: Iterable[str] | None = None) -> list[Action]:
        cfg = self.cfg
        for url in data or ():
            iam.data_prefix(url)  # a bad --data stops the deploy before anything changes
        if memory is not None:
            cfg.lambda_.memory = int(memory)
        if timeout is not None:
            cfg.lambda_.timeout = int(timeout)
        if arch is not None:
            cfg.lambda_.architecture = arch
        _config.validate(cfg)
        runtime, arch = packaging.runtime_for_host(), cfg.lambda_.architecture
        self.check_calendar(runtime, image=image or bool(image_uri))
        pins = self.wanted_pins(runtime, sync, modules, requirements)
        account, partition = self.account()
        self.bucket = cfg.bucket or default_bucket(account, self.region)
        self.ensure_bucket(self.bucket)
        role_arn = self.ensure_role(self.bucket, account, partition, data)
        current = self.current_packages()
        # A function's package type is fixed: an image function's packages go into an image.
        as_image = image or bool(image_uri) or self.existing_type == "Image"
        if as_image:
            self.check_package_type("Image")
        if image_uri is None and not image and pins is None and current and current.get("image_uri"):
            image_uri = current["image_uri"]  # a plain deploy keeps the deployed image
        packages: dict[str, Any] | None
        if image_uri:
            packages = self.image_record(image_uri, runtime, arch)
        elif as_image:
            if pins is None:  # the same packages as deployed, now in an image
                pins = dict((current or {}).get("requested") or {})
            image_uri, packages = self.ensure_image(pins, runtime, arch, account, current)
        elif pins is None:  # neither --sync nor --requirements: keep what is deployed
            packages = current if current and current.get("arn") else None
        elif pins:
            packages = self.ensure_layer(pins, runtime, arch)
            if packages is None:  # over the unzipped limit: the image path
                self.check_package_type("Image")
                image_uri, packages = self.ensure_image(pins, runtime, arch, account, current)
        else:
            packages = None
        manifest = self.deployment_manifest(runtime, arch, packages, image_uri)
        layers = [packages["arn"]] if packages and packages.get("arn") and not image_uri else []
        self.ensure_function(role_arn, layers, image_uri, manifest_sha=self.put_manifest(manifest))
        self.ensure_async_config()
        return self.actions

    # The runtime calendar --------------------------------------------------------
    def check_calendar(self, runtime: str, image: bool) -> None:
        """Refuse a zip runtime AWS no longer lets us deploy; warn for a deprecated one. The
        calendar is read before any AWS call; only a refusal costs one read (before anything
        is created or changed): the function may be an image, or, between "create blocked"
        and "update blocked", an existing zip function AWS still lets us update."""
        level, why = packaging.calendar_check(runtime, self.today, image=image)
        if level == "refuse":
            # One read: an image function stays one (never blocked), and between the two block
            # dates an existing zip function on this runtime may still be updated.
            conf = self.function_configuration()
            if conf is not None and conf.get("PackageType") == "Image":
                level, why = packaging.calendar_check(runtime, self.today, image=True)
            elif packaging.runtime_phase(runtime, self.today) == "create blocked":
                exists = conf is not None and conf.get("Runtime") == runtime
                level, why = packaging.calendar_check(runtime, self.today, exists=exists)
        if level == "refuse":
            if self.cfg.lambda_.runtime_calendar == "waive":
                self._did("waived", f"runtime calendar for {runtime}",
                          f"lambda.runtime_calendar: waive; {why}")
                return
            raise packaging.RuntimeBlockedError(
                f"{why}. (If AWS has moved these dates, `lambda.runtime_calendar: waive` in "
                f"{self.cfg.path or _config.config_path()} lets the deploy try.)")
        if level == "warn":
            self._did("warning", f"runtime {runtime}", why)

    def function_configuration(self) -> dict[str, Any] | None:
        lam = self._lambda()
        try:
            conf: dict[str, Any] = lam.get_function_configuration(
                FunctionName=self.cfg.lambda_.function_name)
            return conf
        except lam.exceptions.ResourceNotFoundException:
            return None

    # Packages -------------------------------------------------------------------
    def wanted_pins(self, runtime: str, sync: bool, modules: Iterable[str],
                    requirements: str | None) -> dict[str, str | None] | None:
        """The distributions the layer must hold, pinned: None to keep what is deployed."""
        modules = list(modules or ())
        if not sync and not requirements and not modules:
            return None
        pins: dict[str, str | None] = {}
        if sync or modules:
            wanted = set(modules) | (packaging.recorded_modules() if sync else set())
            dists, unknown = packaging.module_distributions(wanted)
            for mod in unknown:
                self._did("skipped", f"module {mod}", "no installed distribution provides it")
            pins.update(packaging.host_pins(sorted({d for ds in dists.values() for d in ds}), runtime))
        if requirements:
            pins.update(packaging.read_requirements(requirements))
        return dict(sorted(pins.items()))

    def current_packages(self) -> dict[str, Any] | None:
        """The packages of the deployed function (its manifest, verified), with the layer
        ARN or image URI they were deployed as, if that is still what the function runs."""
        lam = self._lambda()
        try:
            fn = lam.get_function(FunctionName=self.cfg.lambda_.function_name)
        except lam.exceptions.ResourceNotFoundException:
            self.existing_type = None
            return None
        conf = fn.get("Configuration", {})
        self.existing_type = conf.get("PackageType", "Zip")
        env = conf.get("Environment", {}).get("Variables", {})
        manifest = read_manifest(self._s3(), self.bucket, self.cfg.prefix,
                                 self.cfg.lambda_.function_name, env.get(MANIFEST_ENV))
        if not manifest:
            return None
        info = dict(manifest.get("layer") or {}, modules=manifest.get("modules", {}),
                    pins=manifest.get("pins", {}), fallbacks=manifest.get("fallbacks", {}),
                    requested=manifest.get("requested") or manifest.get("pins", {}))
        uri = fn.get("Code", {}).get("ImageUri")
        if conf.get("PackageType") == "Image":
            if uri and uri == manifest.get("image_uri"):
                self._did("unchanged", f"image {uri}", "kept (deploy --sync or --image replaces it)")
                return dict(info, image_uri=uri, arn=None)
            return None
        arn = info.get("arn")
        if arn and arn in [ly["Arn"] for ly in conf.get("Layers", [])]:
            self._did("unchanged", f"layer {arn.rsplit(':', 2)[-2]}:{arn.rsplit(':', 1)[-1]}",
                      "kept (deploy --sync or --requirements replaces it)")
            return info
        return None

    def ensure_layer(self, pins: dict[str, str | None], runtime: str,
                     arch: str) -> dict[str, Any] | None:
        """A layer with ``pins`` for the runtime, content-addressed by the pin set: an
        unchanged environment finds its layer and builds nothing. None when the packages
        and the function are over Lambda's unzipped limit (the image path takes them)."""
        lam = self._lambda()
        key = packaging.pin_key(pins, runtime, arch)
        name = self.cfg.layer_name
        s3 = self._s3()
        info_key = deployments_key(self.cfg.prefix, f"layers/{key}.json")
        for page in lam.get_paginator("list_layer_versions").paginate(LayerName=name):
            for lv in page.get("LayerVersions", []):
                if lv.get("Description") == f"cloudbutton {key}":
                    info = get_json(s3, self.bucket, info_key)
                    if info is not None and info.get("key") == key:
                        self._did("unchanged", f"layer {name}:{lv['Version']}",
                                  f"{len(info['pins'])} packages")
                        return dict(info, arn=lv["LayerVersionArn"])
        self._did("building", f"layer for {runtime} {arch}", ", ".join(f"{n}=={v}" for n, v in pins.items()))
        layer = packaging.build_layer(pins, runtime, arch, log=lambda m: self._did("warning", m))
        site = layer.site
        if site.excluded:
            self._did("left out", ", ".join(site.excluded),
                      "the Lambda runtime or the function zip provides them")
        info = dict(site.info(), zip_bytes=len(layer.zip))
        total = site.unzipped_bytes + len(build_function_zip())
        if total > packaging.UNZIPPED_LIMIT_BYTES:
            biggest = ", ".join(f"{n} {b / 1e6:.0f} MB" for n, b in site.biggest)
            self._did("too big", f"layer for {runtime}",
                      f"{total / 1e6:.0f} MB unzipped with the function, over Lambda's "
                      f"{packaging.UNZIPPED_LIMIT_BYTES / 1e6:.0f} MB; biggest: {biggest}; "
                      "taking the container-image path")
            return None
        content: dict[str, Any]
        if len(layer.zip) > packaging.DIRECT_UPLOAD_BYTES:
            # Over the direct-upload limit: Lambda takes the zip from S3.
            zkey = deployments_key(self.cfg.prefix, f"layers/{key}.zip")
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
                  f"{len(layer.zip) / 1e6:.1f} MB zip, {site.unzipped_bytes / 1e6:.0f} MB unzipped, "
                  f"{how}, built in {site.build_s:.0f} s")
        return dict(info, arn=lv["LayerVersionArn"])

    # The container-image path ------------------------------------------------------------
    def image_build_dir(self) -> str:
        return os.path.join(os.path.dirname(_config.config_path()), "image",
                            self.cfg.lambda_.function_name)

    def _image_record_key(self, tag: str) -> str:
        return deployments_key(self.cfg.prefix, f"images/{tag}.json")

    def ensure_image(self, pins: dict[str, str | None], runtime: str, arch: str, account: str,
                     current: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """The image URI and what it holds: the build context written (packages resolved
        like a layer's), its record stored; the deployed image if it has the same tag (same
        packages and function code); else built and pushed to ECR when a docker daemon
        answers, or ImageRequired with the exact commands (the function is not changed)."""
        ctx = image.write_context(self.image_build_dir(), pins, runtime, arch, build_function_zip(),
                                  log=lambda m: self._did("warning", m))
        self._did("unchanged" if ctx.reused else "built", f"image build context {ctx.path}",
                  f"{len(ctx.record['pins'])} packages, tag {ctx.tag}")
        deployed = (current or {}).get("image_uri")
        if deployed and image.uri_tag(deployed) == ctx.tag:
            return deployed, ctx.record
        self._s3().put_object(Bucket=self.bucket, Key=self._image_record_key(ctx.tag),
                              Body=json.dumps(ctx.record, sort_keys=True).encode())
        repository = self.cfg.lambda_.function_name
        if not image.docker_available():
            commands = image.commands(ctx.path, repository, ctx.tag, account, self.region, arch,
                                      *self.redeploy_args())
            raise ImageRequired(
                f"the packages take the container-image path and no docker daemon answers here; "
                f"the build context (Dockerfile on {packaging.runtime_info(runtime).base_image}, "
                f"function/, site-packages/) is in {ctx.path}. Build, push and deploy it with:\n  "
                + "\n  ".join(commands), build_dir=ctx.path, commands=commands)
        uri = image.build_and_push(self.cfg.client("ecr", self.session), ctx.path, repository,
                                   ctx.tag, account, self.region, arch)
        self._did("pushed", f"image {uri}", f"{len(ctx.record['pins'])} packages")
        return uri, ctx.record

    def redeploy_args(self) -> tuple[list[str], list[str]]:
        """The ``cloudbutton`` options (before and after ``deploy``) that make the follow-up
        ``deploy --image-uri`` this deploy's twin: same config, account, region, settings."""
        cfg = self.cfg
        top = []
        if cfg.path and os.path.abspath(cfg.path) != os.path.abspath(_config.config_path()):
            top += ["--config", cfg.path]
        if cfg.profile:
            top += ["--profile", cfg.profile]
        top += ["--region", self.region]
        lam = cfg.lambda_
        return top, ["--memory", str(lam.memory), "--timeout", str(lam.timeout),
                     "--arch", lam.architecture]

    def image_record(self, uri: str, runtime: str, arch: str) -> dict[str, Any] | None:
        """What the image at ``uri`` holds, from the record `deploy --image` stored under
        its tag; None (with a warning) for an image of unknown content."""
        tag = image.uri_tag(uri)
        record = get_json(self._s3(), self.bucket, self._image_record_key(tag)) if tag else None
        if not isinstance(record, dict) or record.get("tag") != tag:
            self._did("warning", f"image {uri}",
                      "not built by `cloudbutton deploy --image`: its packages are unknown, so "
                      "the pre-flight check will refuse jobs that import installed packages")
            return None
        if (record.get("runtime"), record.get("arch")) != (runtime, arch):
            raise ValueError(f"image {uri} was built for {record.get('runtime')} on "
                             f"{record.get('arch')}, not {runtime} on {arch}: run "
                             "`cloudbutton deploy --image` from this environment")
        return record

    # What was deployed --------------------------------------------------------------------
    def deployment_manifest(self, runtime: str, arch: str, packages: dict[str, Any] | None,
                            image_uri: str | None) -> dict[str, Any]:
        lam = self.cfg.lambda_
        out: dict[str, Any] = {
            "function": lam.function_name, "runtime": runtime, "architecture": arch,
            "memory": lam.memory, "timeout": lam.timeout, "image_uri": image_uri,
            "package_type": "Image" if image_uri else "Zip",
            "runtime_sdk": packaging.runtime_info(runtime).sdk,
            "modules": {}, "pins": {}, "requested": {}, "fallbacks": {}, "layer": None}
        if packages:
            out.update(modules=packages.get("modules", {}), pins=packages.get("pins", {}),
                       requested=packages.get("requested", {}),
                       fallbacks=packages.get("fallbacks", {}),
                       layer={k: packages.get(k) for k in ("arn", "key", "zip_bytes", "unzipped_bytes")})
        return out

    def put_manifest(self, manifest: dict[str, Any]) -> str:
        """Store what is deployed where the host reads it with one GET; its sha256 goes
        into the function's environment, so a host verifies what it reads."""
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        sha = hashlib.sha256(body).hexdigest()
        key = manifest_key(self.cfg.prefix, manifest["function"], sha)
        s3 = self._s3()
        try:
            s3.head_object(Bucket=self.bucket, Key=key)
        except Exception:
            s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return sha

    # Bucket, role, function ----------------------------------------------------------------
    def ensure_bucket(self, bucket: str) -> None:
        s3 = self._s3()
        try:
            s3.head_bucket(Bucket=bucket)
            self._did("unchanged", f"s3://{bucket}")
            return
        except Exception as err:
            code = error_code(err)
            if code in ("403", "AccessDenied", "Forbidden"):
                raise RuntimeError(f"bucket {bucket} exists but these credentials cannot use it; "
                                   f"choose another 'bucket:' in {self.cfg.path or _config.config_path()}"
                                   ) from None
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        kwargs: dict[str, Any] = {"Bucket": bucket}
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
        client = self.cfg.client("iam", self.session)
        name = self.cfg.role_name
        trust = iam.trust_policy()
        try:
            role = client.get_role(RoleName=name)["Role"]
            if iam.policy_doc(role.get("AssumeRolePolicyDocument")) != trust:
                client.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
                self._did("updated", f"IAM role {name}", "trust policy")
            else:
                self._did("unchanged", f"IAM role {name}")
        except client.exceptions.NoSuchEntityException:
            role = client.create_role(
                RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                Description="cloudbutton worker: S3 under its prefix, its own logs",
                Tags=[{"Key": MANAGED_TAG, "Value": "worker-role"}])["Role"]
            self._did("created", f"IAM role {name}")
        try:
            have = iam.policy_doc(client.get_role_policy(RoleName=name, PolicyName=self.POLICY_NAME)
                                  ["PolicyDocument"])
        except client.exceptions.NoSuchEntityException:
            have = None
        want = iam.access_policy(bucket, self.cfg.prefix, self.region, account,
                                 self.cfg.lambda_.function_name, partition,
                                 data=iam.data_urls(have) if data is None else data)
        if have != want:
            client.put_role_policy(RoleName=name, PolicyName=self.POLICY_NAME,
                                   PolicyDocument=json.dumps(want))
            self._did("created" if have is None else "updated", f"IAM policy {self.POLICY_NAME}",
                      f"s3://{bucket}/{self.cfg.prefix}/* and /aws/lambda/{self.cfg.lambda_.function_name}"
                      + "".join(f", read s3://{u[5:]}" for u in iam.data_urls(want)))
        else:
            self._did("unchanged", f"IAM policy {self.POLICY_NAME}")
        return str(role["Arn"])

    def _wanted_config(self, role_arn: str, layers: list[str], image_uri: str | None,
                       manifest_sha: str | None = None) -> dict[str, Any]:
        lam = self.cfg.lambda_
        v = host_versions()
        env = {VERSIONS_ENV: encode_versions(v), CODE_ENV: executor_code_sha256()}
        if manifest_sha:
            env[MANIFEST_ENV] = manifest_sha
        want: dict[str, Any] = {
            "Role": role_arn, "MemorySize": lam.memory, "Timeout": lam.timeout,
            "Description": f"cloudbutton worker ({encode_versions(v)})",
            "Environment": {"Variables": env}}
        if not image_uri:
            want.update({"Runtime": f"python{v['python']}", "Handler": HANDLER, "Layers": layers})
        return want

    def ensure_function(self, role_arn: str, layers: list[str], image_uri: str | None = None,
                        manifest_sha: str | None = None) -> None:
        lam = self._lambda()
        name = self.cfg.lambda_.function_name
        want = self._wanted_config(role_arn, layers, image_uri, manifest_sha)
        code = None if image_uri else build_function_zip()
        try:
            current = lam.get_function(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            current = None
        package_type = "Image" if image_uri else "Zip"
        if current is None:
            kwargs = dict(want, FunctionName=name, Architectures=[self.cfg.lambda_.architecture],
                          Tags={MANAGED_TAG: "worker"}, PackageType=package_type,
                          Code={"ImageUri": image_uri} if image_uri else {"ZipFile": code})
            self._retry_role_propagation(lambda: lam.create_function(**kwargs))
            self._wait_ready(lam, name)
            self._did("created", f"Lambda function {name}",
                      f"{self.cfg.lambda_.memory} MB, {self.cfg.lambda_.timeout} s, "
                      + (image_uri if image_uri else f"zip {len(code or b'') // 1024} KiB"))
            return
        conf = current["Configuration"]
        self.existing_type = conf.get("PackageType", "Zip")
        self.check_package_type(package_type)
        if image_uri:
            code_changed = current.get("Code", {}).get("ImageUri") != image_uri
        else:
            code_changed = conf.get("CodeSha256") != b64sha256(code or b"")
        arch = self.cfg.lambda_.architecture
        if (conf.get("Architectures") or ["x86_64"]) != [arch]:
            code_changed = True  # the architecture is set with the code (UpdateFunctionCode)
        if code_changed:
            kwargs = {"ImageUri": image_uri} if image_uri else {"ZipFile": code}
            lam.update_function_code(FunctionName=name, Architectures=[arch], **kwargs)
            self._wait_ready(lam, name)
            self._did("updated", f"Lambda function {name} code",
                      image_uri or f"sha256 {b64sha256(code or b'')[:12]}...")
        have: dict[str, Any] = {
            "Role": conf.get("Role"), "MemorySize": conf.get("MemorySize"),
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
            self._did("unchanged", f"Lambda function {name}",
                      image_uri or f"code sha256 {conf.get('CodeSha256', '')[:12]}...")

    def check_package_type(self, wanted: str) -> None:
        """Lambda cannot turn a zip function into an image function or back: say how to
        proceed before anything is built for the other type."""
        have, name = self.existing_type, self.cfg.lambda_.function_name
        if have is not None and have != wanted:
            raise RuntimeError(
                f"the Lambda function {name} is a {have.lower()} function and Lambda cannot "
                f"change a function's package type to {wanted.lower()}: delete it first "
                f"(`aws lambda delete-function --function-name {name} --region {self.region}`) "
                "or set another lambda.function_name, then deploy again")

    def ensure_async_config(self) -> None:
        """No Lambda retries (the client owns them) and a short maximum event age: an
        event queued behind the concurrency limit for longer than a job can wait for it
        is discarded instead of running (and billing) after the job ended."""
        lam = self._lambda()
        name = self.cfg.lambda_.function_name
        want = {"MaximumRetryAttempts": 0,
                "MaximumEventAgeInSeconds": max_event_age(self.cfg.lambda_.timeout)}
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
    def _retry_role_propagation(fn: Callable[[], Any], limit_s: float = 60.0) -> Any:
        # A new IAM role takes seconds to become assumable by Lambda; bounded wait.
        deadline = time.time() + limit_s
        delay = 1.0
        while True:
            try:
                return fn()
            except Exception as err:
                msg = str(err)
                if (error_code(err) != "InvalidParameterValueException" or "role" not in msg.lower()
                        or time.time() + delay > deadline):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    @staticmethod
    def _wait_ready(lam: Any, name: str, limit_s: float = 300.0) -> None:
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


def deploy(cfg: _config.Config | None = None, *, memory: int | None = None,
           timeout: int | None = None, requirements: str | None = None,
           image_uri: str | None = None, sync: bool = False, modules: Iterable[str] = (),
           arch: str | None = None, image: bool = False, out: TextIO | None = None,
           today: datetime.date | None = None, data: Iterable[str] | None = None) -> list[Action]:
    """``cloudbutton deploy``: returns the (verb, what, detail) actions taken. ``today``:
    the date the runtime calendar is read at (UTC today by default). ``data``: the
    ``s3://bucket/prefix`` the workers may read besides the project's prefix (None: keep
    what is deployed; []: none)."""
    return Deployer(cfg or _config.load(), out=out, today=today).run(
        memory=memory, timeout=timeout, requirements=requirements, image_uri=image_uri, sync=sync,
        modules=modules, arch=arch, image=image, data=data)

