"""The container-image path: a build context on AWS's public Lambda base image, and
the commands that build it and push it to ECR (run here when a docker daemon answers,
else printed for the user).

The build context holds a Dockerfile, the function's code (the deploy zip, unpacked)
and the packages resolved by the same resolver as layers (``packaging.build_site``),
so an image holds exactly the pins a layer would. Its tag is content-addressed by
both, so a changed environment or worker gets a new tag and an unchanged one none.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from typing import Any

from ... import packaging

RECORD = "image.json"  # in the build context (and under deployments/images/ in S3)


@dataclasses.dataclass
class BuildContext:
    path: str
    tag: str                       # content address of the packages and the function code
    record: dict[str, Any]         # what the image holds (packages, modules, runtime...)
    reused: bool                   # the packages were already resolved there


def image_tag(packages_key: str, function_zip: bytes) -> str:
    text = json.dumps({"packages": packages_key,
                       "function": hashlib.sha256(function_zip).hexdigest()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_record(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, RECORD), encoding="utf-8") as f:
            out = json.load(f)
        return out if isinstance(out, dict) else None
    except (OSError, ValueError):
        return None


def write_context(path: str, pins: dict[str, str | None], runtime: str, arch: str,
                  function_zip: bytes, cache: str | None = None,
                  log: Callable[[str], None] | None = None) -> BuildContext:
    """The build context in ``path``: Dockerfile, ``function/`` and ``site-packages/``,
    and ``image.json`` (what it holds). Packages already resolved there for the same pins,
    runtime and architecture are kept; the function code is always rewritten."""
    key = packaging.pin_key(pins, runtime, arch)
    tag = image_tag(key, function_zip)
    old = _read_record(path)
    site_dir = os.path.join(path, packaging.IMAGE_SITE_DIR)
    reused = bool(old and old.get("key") == key and os.path.isdir(site_dir))
    if reused and old is not None:
        info = {k: v for k, v in old.items() if k not in ("tag", "function_sha256")}
    else:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        info = packaging.build_site(pins, runtime, arch, site_dir, cache, log=log).info()
    code_dir = os.path.join(path, packaging.IMAGE_CODE_DIR)
    shutil.rmtree(code_dir, ignore_errors=True)
    with zipfile.ZipFile(io.BytesIO(function_zip)) as zf:
        zf.extractall(code_dir)
    record = dict(info, image=True, tag=tag, function_sha256=hashlib.sha256(function_zip).hexdigest())
    with open(os.path.join(path, "Dockerfile"), "w", encoding="utf-8") as f:
        f.write(packaging.dockerfile(runtime, arch, key))
    with open(os.path.join(path, RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    return BuildContext(path=path, tag=tag, record=record, reused=reused)


def registry(account: str, region: str) -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


def commands(context: str, repository: str, tag: str, account: str, region: str, arch: str,
             top_args: list[str], deploy_args: list[str]) -> list[str]:
    """What builds the image, pushes it to ECR and deploys it, in order (the AWS guide's
    "Deploy Python Lambda functions with container images" steps). ``top_args`` and
    ``deploy_args``: the ``cloudbutton`` options before and after ``deploy``."""
    reg = registry(account, region)
    uri = f"{reg}/{repository}:{tag}"
    local = f"{repository}:{tag}"
    q = shlex.quote
    return [
        f"cd {q(context)}",
        f"aws ecr create-repository --repository-name {q(repository)} --region {region} "
        "--image-scanning-configuration scanOnPush=true  # once (it fails if it exists)",
        f"aws ecr get-login-password --region {region} | docker login --username AWS "
        f"--password-stdin {reg}",
        # Lambda takes a single-platform image manifest: no provenance attestation.
        f"docker build --platform {packaging.docker_platform(arch)} --provenance=false -t {local} .",
        f"docker tag {local} {uri}",
        f"docker push {uri}",
        " ".join(["cloudbutton", *map(q, top_args), "deploy", *map(q, deploy_args),
                  "--image-uri", uri]),
    ]


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_and_push(ecr: Any, context: str, repository: str, tag: str, account: str,
                   region: str, arch: str) -> str:
    """The printed commands, run here (ECR through boto3, the rest through docker)."""
    try:
        ecr.create_repository(repositoryName=repository,
                              imageScanningConfiguration={"scanOnPush": True})
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    token = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    reg = registry(account, region)
    uri, local = f"{reg}/{repository}:{tag}", f"{repository}:{tag}"
    for cmd, stdin in ((["docker", "login", "--username", user, "--password-stdin", reg], password),
                       (["docker", "build", "--platform", packaging.docker_platform(arch),
                         "--provenance=false", "-t", local, context], None),
                       (["docker", "tag", local, uri], None),
                       (["docker", "push", uri], None)):
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()[-2000:]}")
    return uri


def uri_tag(uri: str) -> str | None:
    """The tag of an image URI (``...:tag``), None for a digest or no tag."""
    last = uri.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last:
        return None
    return last.rsplit(":", 1)[1]
