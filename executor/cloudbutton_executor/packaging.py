"""Python packages for a Lambda runtime: pins from the host, wheels from pip's own
platform-aware resolver, a layer's files, its module manifest.

Host-side only (the worker never imports it). Facts about Lambda's Python
runtimes (operating system, glibc, bundled SDK) live in ``RUNTIMES`` here.

How a pin becomes a wheel for the runtime (``resolve``):

1. Every pin at the host's exact version, resolved jointly by pip for the
   runtime's Python, implementation (cp) and every manylinux tag its glibc
   supports.
2. A package with no wheel at the host's version for that platform falls back,
   in order, to the newest release with the host's major.minor, then to the
   newest release older than the host's (never a newer one). Each fallback is
   recorded with its reason and reported; the pre-flight check accepts such a
   pin only because the deploy recorded that nothing closer exists.
3. Nothing at all: the deploy fails naming the package and the platform.

Downloaded wheels are kept in a cache directory (``wheel_cache()``), tried
first without any index, so an unchanged environment rebuilds offline.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

# Lambda's Python runtimes: operating system and its glibc (which manylinux wheels load),
# and the SDK versions the runtime bundles. Sources: the Lambda developer guide's
# "Building Lambda functions with Python" (runtimes table: python3.10/3.11 on Amazon
# Linux 2, 3.12/3.13 on Amazon Linux 2023) and "Runtime-included SDK versions"; glibc
# 2.26 on Amazon Linux 2, 2.34 on Amazon Linux 2023. Both architectures alike.
RUNTIMES = {
    "python3.10": {"os": "Amazon Linux 2", "glibc": (2, 26), "sdk": {"boto3": "1.34.126", "botocore": "1.34.126"}},
    "python3.11": {"os": "Amazon Linux 2", "glibc": (2, 26), "sdk": {"boto3": "1.34.126", "botocore": "1.34.126"}},
    "python3.12": {"os": "Amazon Linux 2023", "glibc": (2, 34), "sdk": {"boto3": "1.34.126", "botocore": "1.34.126"}},
    "python3.13": {"os": "Amazon Linux 2023", "glibc": (2, 34), "sdk": {"boto3": "1.34.145", "botocore": "1.34.145"}},
}
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's name -> wheel platform suffix

# Lambda's deployment limits (developer guide, "Lambda quotas").
DIRECT_UPLOAD_BYTES = 50 * 1024 * 1024        # a zip sent in the API request
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024      # function + all its layers, unzipped
MAX_LAYERS = 5
# Distributions the runtime or our function zip already provide: never put in a layer.
PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3",
            "cloudpickle", "cloudbutton-jupyter", "awslambdaric", "pip", "setuptools", "wheel"}
# Build rules version: part of a layer's content address (a change here rebuilds layers).
BUILD_RULES = 1

_STRIP_DIRS = {"__pycache__", "tests", "test", "testing"}
_STRIP_TOP = {"bin"}  # console scripts pip writes for the target: host shebangs, never run
_STRIP_SUFFIXES = (".pyc", ".pyo")


class PackagingError(RuntimeError):
    """A package cannot be provided for the runtime; the message names it and why."""


def runtime_for_host() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def runtime_info(runtime: str) -> dict:
    try:
        return RUNTIMES[runtime]
    except KeyError:
        raise PackagingError(f"unknown Lambda runtime {runtime!r}; known: {sorted(RUNTIMES)}") from None


def platform_tags(runtime: str, arch: str = "x86_64") -> list[str]:
    """Every manylinux tag the runtime's glibc loads, newest first (pip takes several)."""
    if arch not in ARCHITECTURES:
        raise PackagingError(f"unknown architecture {arch!r}: choose x86_64 or arm64")
    machine = ARCHITECTURES[arch]
    major, minor = runtime_info(runtime)["glibc"]
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)]
    tags.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        tags += ["manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64",
                 "manylinux1_x86_64"]
    return tags


def pip_target_args(runtime: str, arch: str = "x86_64") -> list[str]:
    args = []
    for tag in platform_tags(runtime, arch):
        args += ["--platform", tag]
    return args + ["--python-version", runtime.removeprefix("python"), "--implementation", "cp",
                   "--only-binary=:all:"]


def wheel_cache() -> str:
    """Where downloaded wheels are kept: $CLOUDBUTTON_WHEEL_CACHE or ~/.cache/cloudbutton/wheels."""
    return os.path.expanduser(os.environ.get("CLOUDBUTTON_WHEEL_CACHE")
                              or os.path.join("~", ".cache", "cloudbutton", "wheels"))


# Modules jobs needed ------------------------------------------------------------------
def needed_modules_path() -> str:
    """Where the host notes the modules its Lambda jobs import (read by ``deploy --sync``)."""
    from .config import config_path

    return os.path.join(os.path.dirname(config_path()), "modules.json")


def recorded_modules() -> set:
    try:
        with open(needed_modules_path(), encoding="utf-8") as f:
            return set(json.load(f).get("modules", []))
    except (OSError, ValueError):
        return set()


def record_modules(modules) -> None:
    """Add ``modules`` to the set ``cloudbutton deploy --sync`` deploys."""
    have = recorded_modules()
    if set(modules) <= have:
        return
    path = needed_modules_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"modules": sorted(have | set(modules))}, f, indent=1)
    os.replace(tmp, path)


# Pins from the host ----------------------------------------------------------------
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    try:
        import packaging.markers
        import packaging.requirements
        import packaging.version
        return packaging
    except ImportError:  # pip vendors it
        from pip._vendor import packaging
        return packaging


def module_distributions(modules) -> tuple[dict, list]:
    """Top-level module names -> the host distributions providing them; and the modules
    that no installed distribution provides (local files, namespace oddities)."""
    import importlib.metadata as md

    table = md.packages_distributions()
    dists, unknown = {}, []
    for mod in sorted(set(modules)):
        names = table.get(mod)
        if names:
            dists[mod] = sorted({canonical(n) for n in names})
        else:
            unknown.append(mod)
    return dists, unknown


def host_pins(distributions, runtime: str | None = None) -> dict[str, str]:
    """``{distribution: host version}`` for ``distributions`` and everything they require
    (as installed on the host), minus what the runtime and our zip provide."""
    import importlib.metadata as md

    pkg = _packaging()
    runtime = runtime or runtime_for_host()
    env = {"python_version": runtime.removeprefix("python"), "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "extra": ""}
    pins, todo = {}, [canonical(d) for d in distributions]
    while todo:
        name = todo.pop()
        if name in pins or name in PROVIDED:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise PackagingError(f"{name} is not installed on this host: install it, or list a "
                                 "version in --requirements") from None
        pins[name] = dist.version
        for text in dist.requires or []:
            req = pkg.requirements.Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            todo.append(canonical(req.name))
    return dict(sorted(pins.items()))


def read_requirements(path: str) -> dict[str, str | None]:
    """``name -> exact version`` (None when unpinned) from a requirements file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"requirements file {path!r} does not exist")
    pkg = _packaging()
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-"):
                raise PackagingError(f"{path}:{n}: pip options ({line.split()[0]}) are not supported "
                                     "here; set them in pip's own config or PIP_* variables")
            try:
                req = pkg.requirements.Requirement(line)
            except Exception as err:
                raise PackagingError(f"{path}:{n}: {err}") from None
            exact = [s.version for s in req.specifier if s.operator in ("==", "===")]
            out[canonical(req.name)] = str(req.specifier) if req.specifier and not exact else \
                (exact[0] if exact else None)
    return out


def pin_key(pins: dict, runtime: str, arch: str) -> str:
    """The content address of a layer: the requested pins, runtime, architecture, rules."""
    text = json.dumps({"pins": pins, "runtime": runtime, "arch": arch, "rules": BUILD_RULES},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# Resolution with pip ------------------------------------------------------------------
@dataclasses.dataclass
class Resolution:
    runtime: str
    arch: str
    requested: dict            # name -> host version (or a specifier, or None)
    resolved: dict             # name -> version installed for the runtime (deps included)
    fallbacks: dict            # name -> {"host": v, "deployed": v, "reason": text}
    target: str                # directory holding the installed files


def _pip(args: list[str], quiet=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    if quiet:
        cmd.append("--quiet")
    return subprocess.run(cmd, capture_output=True, text=True)


def _req_line(name: str, spec) -> str:
    if spec is None:
        return name
    return f"{name}{spec}" if spec[:1] in "<>=!~" else f"{name}=={spec}"


def available_versions(name: str, runtime: str, arch: str) -> list[str]:
    """Versions of ``name`` with a wheel for the runtime (pip's finder, the index's view)."""
    proc = _pip(["index", "versions", name, "--json", *pip_target_args(runtime, arch)], quiet=False)
    if proc.returncode != 0:
        return []
    try:
        return json.loads(proc.stdout).get("versions", [])
    except ValueError:
        return []


def choose_version(host: str, available: list[str]) -> tuple[str | None, str]:
    """The rule of the module docstring: exact, else same major.minor, else older."""
    V = _packaging().version.Version
    try:
        hv = V(host)
    except Exception:
        return (host if host in available else None), "exact"
    good = []
    for a in available:
        try:
            good.append(V(a))
        except Exception:
            continue
    if hv in good:
        return str(hv), "exact"
    same = [v for v in good if v.release[:2] == hv.release[:2] and v <= hv] or \
        [v for v in good if v.release[:2] == hv.release[:2]]
    if same:
        return str(max(same)), "same major.minor"
    older = [v for v in good if v < hv and not v.is_prerelease]
    if older:
        return str(max(older)), "older"
    return None, "none"


def _install(lines: list[str], runtime: str, arch: str, target: str, cache: str, offline: bool):
    os.makedirs(cache, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        reqfile = f.name
    report = reqfile + ".report.json"
    try:
        if not offline:
            proc = _pip(["download", "-d", cache, *pip_target_args(runtime, arch), "-r", reqfile])
            if proc.returncode != 0:
                return None, proc.stderr.strip() or proc.stdout.strip()
        shutil.rmtree(target, ignore_errors=True)
        proc = _pip(["install", "--no-index", "--find-links", cache, "--target", target,
                     "--ignore-installed", "--no-compile", "--report", report,
                     *pip_target_args(runtime, arch), "-r", reqfile])
        if proc.returncode != 0:
            return None, proc.stderr.strip() or proc.stdout.strip()
        with open(report, encoding="utf-8") as f:
            rep = json.load(f)
        return {canonical(i["metadata"]["name"]): i["metadata"]["version"]
                for i in rep.get("install", [])}, ""
    finally:
        for p in (reqfile, report):
            try:
                os.unlink(p)
            except OSError:
                pass


def resolve(requested: dict, runtime: str, arch: str, target: str, cache: str | None = None,
            log=None) -> Resolution:
    """Install ``requested`` (name -> version/specifier/None) into ``target`` for the runtime."""
    cache = cache or wheel_cache()
    runtime_info(runtime)
    plan = dict(requested)
    fallbacks: dict = {}
    lines = [_req_line(n, s) for n, s in sorted(plan.items())]
    resolved, err = _install(lines, runtime, arch, target, cache, offline=True)
    if resolved is None:
        resolved, err = _install(lines, runtime, arch, target, cache, offline=False)
    if resolved is None:
        # Find which exact pins have no wheel for this platform, and the closest that has.
        info = runtime_info(runtime)
        where = f"{runtime} on {arch} ({info['os']}, glibc {info['glibc'][0]}.{info['glibc'][1]})"
        for name, spec in sorted(plan.items()):
            if spec is None or spec[:1] in "<>=!~":
                continue
            avail = available_versions(name, runtime, arch)
            choice, how = choose_version(spec, avail)
            if choice is None:
                raise PackagingError(
                    f"{name}: no release has a wheel for {where}"
                    + (f" (the host has {spec})" if spec else "") + ". Use a runtime whose "
                    "platform it supports, or the container image path (`cloudbutton deploy --image`)")
            if choice != spec:
                reason = (f"{name} {spec} has no wheel for {where}; the closest is {choice} "
                          f"({how})")
                fallbacks[name] = {"host": spec, "deployed": choice, "reason": reason, "rule": how}
                plan[name] = choice
                if log:
                    log(f"warning: {reason}")
        lines = [_req_line(n, s) for n, s in sorted(plan.items())]
        resolved, err = _install(lines, runtime, arch, target, cache, offline=False)
        if resolved is None:
            raise PackagingError(f"pip could not install {', '.join(lines)} for {where}:\n{err[-3000:]}")
    return Resolution(runtime=runtime, arch=arch, requested=dict(requested), resolved=resolved,
                      fallbacks=fallbacks, target=target)


# The layer's files ----------------------------------------------------------------------
def strip_tree(root: str) -> int:
    """Remove tests and caches (never data files a package loads); returns bytes removed."""
    removed = 0
    for top in _STRIP_TOP:
        if os.path.isdir(os.path.join(root, top)):
            removed += tree_size(os.path.join(root, top))
            shutil.rmtree(os.path.join(root, top))
    for dirpath, dirs, files in os.walk(root, topdown=True):
        in_dist_info = dirpath.endswith(".dist-info")
        for d in list(dirs):
            if d in _STRIP_DIRS and not in_dist_info:
                removed += tree_size(os.path.join(dirpath, d))
                shutil.rmtree(os.path.join(dirpath, d), ignore_errors=True)
                dirs.remove(d)
        for name in files:
            if name.endswith(_STRIP_SUFFIXES):
                p = os.path.join(dirpath, name)
                removed += os.path.getsize(p)
                os.unlink(p)
    return removed


def tree_size(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def module_manifest(site_dir: str) -> dict:
    """``{top-level module: {"dist": name, "version": v}}`` from the dist-infos in
    ``site_dir`` (their RECORD lists what each distribution installed)."""
    out = {}
    for entry in sorted(os.listdir(site_dir)):
        if not entry.endswith(".dist-info"):
            continue
        meta = os.path.join(site_dir, entry, "METADATA")
        name = version = None
        with open(meta, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                if name and version:
                    break
        tops = set()
        record = os.path.join(site_dir, entry, "RECORD")
        if os.path.exists(record):
            with open(record, encoding="utf-8", errors="replace") as f:
                for line in f:
                    path = line.split(",", 1)[0]
                    top = path.split("/", 1)[0]
                    if top.endswith((".dist-info", ".data")) or top in ("..", "") or top.endswith(".libs"):
                        continue
                    if "/" not in path and not path.endswith((".py", ".so", ".pyd")):
                        continue
                    tops.add(re.sub(r"(\.cpython.*)?\.(py|so|pyd)$", "", top))
        for top in tops:
            out[top] = {"dist": canonical(name or entry.split("-")[0]), "version": version}
    return dict(sorted(out.items()))


def biggest_packages(site_dir: str, n: int = 5) -> list[tuple[str, int]]:
    sizes = {}
    for entry in os.listdir(site_dir):
        p = os.path.join(site_dir, entry)
        if entry.endswith(".dist-info"):
            continue
        key = entry[:-5] + " (libs)" if entry.endswith(".libs") else entry
        sizes[key] = tree_size(p) if os.path.isdir(p) else os.path.getsize(p)
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:n]


_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # deterministic zips: same files, same bytes


def zip_tree(root: str, arc_root: str = "") -> bytes:
    """Every file under ``root`` (symlinks followed), executable bits kept, fixed times."""
    entries = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            entries.append((f"{arc_root}/{rel}" if arc_root else rel, full))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arc, full in sorted(entries):
            info = zipfile.ZipInfo(arc, date_time=_FIXED_TIME)
            mode = 0o755 if os.access(full, os.X_OK) else 0o644
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(full, "rb") as f:
                zf.writestr(info, f.read())
    return buf.getvalue()


@dataclasses.dataclass
class Layer:
    key: str                   # content address (pin_key)
    zip: bytes
    unzipped_bytes: int
    manifest: dict             # module -> {"dist", "version"}
    resolution: Resolution
    biggest: list
    build_s: float


def build_layer(requested: dict, runtime: str, arch: str, cache: str | None = None, log=None) -> Layer:
    """A layer zip (``python/`` inside, as Lambda puts on the path from /opt) holding
    ``requested`` and their dependencies for the runtime, every file kept but tests and caches."""
    import time

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="cloudbutton-layer-") as tmp:
        site = os.path.join(tmp, "python")
        res = resolve(requested, runtime, arch, site, cache, log=log)
        strip_tree(site)
        size = tree_size(site)
        manifest = module_manifest(site)
        biggest = biggest_packages(site)
        blob = zip_tree(site, "python")
    res.target = ""
    return Layer(key=pin_key(requested, runtime, arch), zip=blob, unzipped_bytes=size,
                 manifest=manifest, resolution=res, biggest=biggest, build_s=time.time() - t0)


def dockerfile(pins: dict, runtime: str, arch: str) -> str:
    """A container image with the same pins, on AWS's public Lambda Python base image."""
    version = runtime.removeprefix("python")
    platform = "linux/amd64" if arch == "x86_64" else "linux/arm64"
    reqs = "\n".join(f"{n}=={v}" for n, v in sorted(pins.items()))
    return (f"# Generated by `cloudbutton deploy --image`: the worker and the job's packages.\n"
            f"FROM --platform={platform} public.ecr.aws/lambda/python:{version}\n"
            f"COPY requirements.txt function.zip ${{LAMBDA_TASK_ROOT}}/\n"
            f"RUN cd ${{LAMBDA_TASK_ROOT}} && python -m zipfile -e function.zip . && rm function.zip \\\n"
            f" && pip install --no-cache-dir --only-binary=:all: -r requirements.txt -t ${{LAMBDA_TASK_ROOT}}\n"
            f'CMD ["cloudbutton_executor.worker.handler"]\n'), reqs + "\n"
