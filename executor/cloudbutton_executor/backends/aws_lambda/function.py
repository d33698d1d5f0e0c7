"""The worker function as deployed: its code zip, the versions its environment
names, and the deployment manifest the host reads to know what it can run.

Shared by the deploy (which writes them) and the backend (which checks them
before every job).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import zipfile
from typing import Any

from ... import packaging

HANDLER = packaging.HANDLER  # the supervisor, which runs the one worker handler
VERSIONS_ENV = "CLOUDBUTTON_VERSIONS"
CODE_ENV = "CLOUDBUTTON_CODE_SHA256"
MANIFEST_ENV = "CLOUDBUTTON_MANIFEST_SHA256"  # what was deployed: see manifest_key()
MANAGED_TAG = "cloudbutton"

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Versions ------------------------------------------------------------------
def host_versions() -> dict[str, str]:
    """What must match between host and worker for pickles and events to travel."""
    import cloudpickle

    from ... import __version__

    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "cloudpickle": cloudpickle.__version__, "executor": __version__}


def encode_versions(v: dict[str, str]) -> str:
    return ",".join(f"{k}={v[k]}" for k in sorted(v))


def decode_versions(s: str | None) -> dict[str, str]:
    out = {}
    for part in (s or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def version_problems(deployed: dict[str, str], host: dict[str, str] | None = None) -> list[str]:
    host = host or host_versions()
    return [f"{k}: host {host[k]}, deployed {deployed.get(k, 'unknown')}"
            for k in sorted(host) if deployed.get(k) != host[k]]


# The code zip ----------------------------------------------------------------
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

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add_tree(zf, _PACKAGE_DIR, "cloudbutton_executor")
        _add_tree(zf, os.path.dirname(os.path.abspath(cloudpickle.__file__)), "cloudpickle")
    return buf.getvalue()


def executor_code_sha256() -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add_tree(zf, _PACKAGE_DIR, "cloudbutton_executor")
    return hashlib.sha256(buf.getvalue()).hexdigest()


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# Where things live -------------------------------------------------------------
def default_bucket(account: str, region: str) -> str:
    return f"cloudbutton-{account}-{region}"


def deployments_key(prefix: str, name: str) -> str:
    """Deployment records (manifests, layer and image records) under the prefix."""
    return f"{prefix}/deployments/{name}"


def manifest_key(prefix: str, function: str, sha: str) -> str:
    return deployments_key(prefix, f"{function}-{sha[:16]}.json")


def max_event_age(timeout_s: int) -> int:
    """How long a queued async event may wait for a slot: the job's host gives a task
    timeout + grace before it declares it lost, so an older event is of no use
    (Lambda's bounds: 60 s to 6 h)."""
    return int(min(21600, max(60, 2 * timeout_s + 60)))


def get_json(s3: Any, bucket: str, key: str) -> Any:
    """The JSON object at ``key``, or None when it is missing or unreadable."""
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception:
        return None


def read_manifest(s3: Any, bucket: str, prefix: str, function: str,
                  sha: str | None) -> dict[str, Any] | None:
    """The deployment manifest whose sha256 the function's environment names, verified."""
    if not sha:
        return None
    try:
        body = s3.get_object(Bucket=bucket, Key=manifest_key(prefix, function, sha))["Body"].read()
    except Exception:
        return None
    if hashlib.sha256(body).hexdigest() != sha:
        return None  # not what was deployed: never trusted
    out = json.loads(body)
    return out if isinstance(out, dict) else None
