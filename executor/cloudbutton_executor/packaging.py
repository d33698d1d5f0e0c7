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
import datetime
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
from collections.abc import Callable, Iterable
from typing import Any

@dataclasses.dataclass(frozen=True)
class Runtime:
    """One of Lambda's managed Python runtimes (for zip functions)."""

    name: str
    os: str                        # its Amazon Linux
    glibc: tuple[int, int]         # which manylinux wheels it loads
    sdk: dict[str, str]            # the oldest boto3/botocore we expect it to bundle (a floor)
    deprecated: datetime.date      # no more security patches from this day
    block_create: datetime.date    # AWS refuses to create zip functions on it from this day
    block_update: datetime.date    # ... and to update them from this day

    @property
    def base_image(self) -> str:
        """AWS's public base image of the same Python, for container-image functions
        (Lambda's calendar blocks zip functions, not images)."""
        return f"public.ecr.aws/lambda/python:{self.name.removeprefix('python')}"


def _d(text: str) -> datetime.date:
    return datetime.date.fromisoformat(text)


# Lambda's Python runtimes: operating system, glibc (2.26 on Amazon Linux 2, 2.34 on Amazon
# Linux 2023; both architectures alike) and the runtime calendar.
# Dates: the Lambda developer guide, "Building Lambda functions with Python", runtimes table
# (Name, Identifier, Operating system, Deprecation date, Block function create, Block function
# update), https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html, read 2026-11-30
# (RUNTIME_DATES_READ): the version of the page that lists python3.14. An older version of the
# same page (and its translations) gave python3.10 and python3.11 2026-06-30 / 2026-07-31 /
# 2026-08-31; AWS has moved those dates before, which is why `lambda.runtime_calendar: waive`
# exists (the deploy then warns instead of refusing, and AWS decides).
# SDK: the guide's "Runtime-included SDK versions" says the bundled boto3/botocore depend on
# the runtime version *and the region* and change over time (it gives no table, only a function
# that prints them). These pins are a conservative floor, not what a region runs: the worker
# must work with any botocore at or above them (storage.py's IfNoneMatch fallback is such a
# case), and the tests' emulator runs the floor itself.
RUNTIME_DATES_SOURCE = ("AWS Lambda developer guide, 'Building Lambda functions with Python', "
                        "https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html")
RUNTIME_DATES_READ = "2026-11-30"
_AL2, _AL2023 = ("Amazon Linux 2", (2, 26)), ("Amazon Linux 2023", (2, 34))
_SDK_FLOOR = {"boto3": "1.34.126", "botocore": "1.34.126"}
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("python3.10", *_AL2, _SDK_FLOOR, _d("2026-10-31"), _d("2026-11-30"), _d("2027-01-15")),
    Runtime("python3.11", *_AL2, _SDK_FLOOR, _d("2027-06-30"), _d("2027-07-31"), _d("2027-08-31")),
    Runtime("python3.12", *_AL2023, _SDK_FLOOR, _d("2028-10-31"), _d("2028-11-30"), _d("2029-01-10")),
    Runtime("python3.13", *_AL2023, {"boto3": "1.34.145", "botocore": "1.34.145"},
            _d("2029-06-30"), _d("2029-07-31"), _d("2029-08-31")),
    Runtime("python3.14", *_AL2023, {"boto3": "1.34.145", "botocore": "1.34.145"},
            _d("2029-06-30"), _d("2029-07-31"), _d("2029-08-31")),
)}
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's name -> wheel platform suffix

# Lambda's deployment limits (developer guide, "Lambda quotas").
DIRECT_UPLOAD_BYTES = 50 * 1024 * 1024        # a zip sent in the API request
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024      # function + all its layers, unzipped
MAX_LAYERS = 5
# Distributions the runtime or our function zip already provide: never put in a layer.
PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3",
            "cloudpickle", "cloudbutton-jupyter", "awslambdaric", "pip", "setuptools", "wheel"}
# Build rules version: part of a layer's content address (a change here rebuilds layers).
# 2: public ``testing`` modules kept, test suites stripped only when no code imports them,
# PROVIDED distributions removed even when a package pulls them in.
BUILD_RULES = 2

_TEST_SUITE_DIRS = {"tests", "test"}  # inside a package: its test suite (``testing`` is API)
_STRIP_TOP = {"bin"}  # console scripts pip writes for the target: host shebangs, never run
_STRIP_SUFFIXES = (".pyc", ".pyo")


# Lambda's handler, in the function zip and the image: runs each invocation in a supervised
# task process (``supervisor``) that runs the one worker handler, ``worker.handler``, so a
# crash or a timeout is reported at once.
HANDLER = "cloudbutton_executor.supervisor.handler"


class PackagingError(RuntimeError):
    """A package cannot be provided for the runtime; the message names it and why."""


def runtime_for_host() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def runtime_info(runtime: str) -> Runtime:
    try:
        return RUNTIMES[runtime]
    except KeyError:
        raise PackagingError(f"unknown Lambda runtime {runtime!r}; known: {sorted(RUNTIMES)}") from None


# The runtime calendar ----------------------------------------------------------------
class RuntimeBlockedError(PackagingError):
    """AWS refuses to create or update zip functions on this runtime (its calendar)."""


def utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def runtime_phase(runtime: str, today: datetime.date) -> str:
    """Where ``runtime`` stands on ``today``: supported, deprecated, create blocked or
    update blocked (each phase includes the ones before it)."""
    r = runtime_info(runtime)
    if today >= r.block_update:
        return "update blocked"
    if today >= r.block_create:
        return "create blocked"
    if today >= r.deprecated:
        return "deprecated"
    return "supported"


def runtime_dates(runtime: str) -> str:
    r = runtime_info(runtime)
    return (f"{runtime}: deprecated {r.deprecated}, function create blocked from {r.block_create}, "
            f"function update blocked from {r.block_update} (per {RUNTIME_DATES_SOURCE}, read "
            f"{RUNTIME_DATES_READ})")


def ways_out(runtime: str, today: datetime.date) -> str:
    """The two ways to keep running on Lambda when a zip runtime is blocked."""
    r = runtime_info(runtime)
    newer = [n for n in RUNTIMES if runtime_phase(n, today) == "supported"
             and runtime_info(n).deprecated > r.deprecated]
    kernels = ", ".join(newer) if newer else "a newer Python"
    return (f"either deploy a container image instead (`cloudbutton deploy --image`: AWS's base "
            f"image {r.base_image} still runs as an image, without security patches), or run "
            f"this kernel on Python 3.12 or newer (supported now: {kernels}) and deploy from it")


def calendar_check(runtime: str, today: datetime.date, *, image: bool = False,
                   exists: bool | None = None) -> tuple[str, str]:
    """Whether AWS lets a function on ``runtime`` be deployed on ``today``: ("ok", ""),
    ("warn", why) or ("refuse", why). Zip functions follow the calendar; container images
    are never blocked (their base image only stops getting patches). ``exists``: whether the
    zip function exists already on this runtime (it may still be updated once creating is
    blocked); None if unknown, which counts as not existing."""
    phase = runtime_phase(runtime, today)
    r = runtime_info(runtime)
    if phase == "supported":
        return "ok", ""
    if image:
        return "warn", (f"{runtime} is deprecated on AWS Lambda since {r.deprecated}: the base image "
                        f"{r.base_image} gets no more security patches ({runtime_dates(runtime)})")
    if phase == "update blocked" or (phase == "create blocked" and not exists):
        what, since = (("create or update", r.block_update) if phase == "update blocked"
                       else ("create", r.block_create))
        return "refuse", (f"AWS Lambda refuses to {what} {runtime} zip functions since {since} "
                          f"({runtime_dates(runtime)}); {ways_out(runtime, today)}")
    if phase == "create blocked":
        return "warn", (f"AWS Lambda no longer creates {runtime} zip functions (since "
                        f"{r.block_create}); this existing one can be updated until "
                        f"{r.block_update}; then {ways_out(runtime, today)}")
    return "warn", (f"{runtime} is deprecated on AWS Lambda since {r.deprecated} (no more security "
                    f"patches); AWS blocks creating zip functions on it from {r.block_create} and "
                    f"updating them from {r.block_update}; before then, {ways_out(runtime, today)}")


def platform_tags(runtime: str, arch: str = "x86_64") -> list[str]:
    """Every manylinux tag the runtime's glibc loads, newest first (pip takes several)."""
    if arch not in ARCHITECTURES:
        raise PackagingError(f"unknown architecture {arch!r}: choose x86_64 or arm64")
    machine = ARCHITECTURES[arch]
    major, minor = runtime_info(runtime).glibc
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


def recorded_modules() -> set[str]:
    try:
        with open(needed_modules_path(), encoding="utf-8") as f:
            return set(json.load(f).get("modules", []))
    except (OSError, ValueError):
        return set()


def record_modules(modules: Iterable[str]) -> None:
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


def packaging_module() -> Any:
    """The ``packaging`` library (requirements, markers, versions): installed, or pip's copy."""
    import importlib

    try:
        for sub in ("markers", "requirements", "version"):
            importlib.import_module(f"packaging.{sub}")
        return importlib.import_module("packaging")
    except ImportError:  # pip vendors it
        for sub in ("markers", "requirements", "version"):
            importlib.import_module(f"pip._vendor.packaging.{sub}")
        return importlib.import_module("pip._vendor.packaging")


def module_distributions(modules: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Top-level module names -> the host distributions providing them; and the modules
    that no installed distribution provides (local files, namespace oddities)."""
    import importlib.metadata as md

    table = md.packages_distributions()
    dists: dict[str, list[str]] = {}
    unknown: list[str] = []
    for mod in sorted(set(modules)):
        names = table.get(mod)
        if names:
            dists[mod] = sorted({canonical(n) for n in names})
        else:
            unknown.append(mod)
    return dists, unknown


def host_pins(distributions: Iterable[str], runtime: str | None = None) -> dict[str, str]:
    """``{distribution: host version}`` for ``distributions`` and everything they require
    (as installed on the host), minus what the runtime and our zip provide."""
    import importlib.metadata as md

    pkg = packaging_module()
    runtime = runtime or runtime_for_host()
    env = {"python_version": runtime.removeprefix("python"), "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "extra": ""}
    pins: dict[str, str] = {}
    todo = [canonical(d) for d in distributions]
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
    pkg = packaging_module()
    out: dict[str, str | None] = {}
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


def pin_key(pins: dict[str, str | None], runtime: str, arch: str) -> str:
    """The content address of a layer: the requested pins, runtime, architecture, rules."""
    text = json.dumps({"pins": pins, "runtime": runtime, "arch": arch, "rules": BUILD_RULES},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# Resolution with pip ------------------------------------------------------------------
@dataclasses.dataclass
class Resolution:
    runtime: str
    arch: str
    requested: dict[str, str | None]   # name -> host version (or a specifier, or None)
    resolved: dict[str, str]           # name -> version installed for the runtime (deps included)
    fallbacks: dict[str, dict[str, str]]  # name -> {"host": v, "deployed": v, "reason": text}
    target: str                # directory holding the installed files


def _pip(args: list[str], quiet: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    if quiet:
        cmd.append("--quiet")
    return subprocess.run(cmd, capture_output=True, text=True)


def _req_line(name: str, spec: str | None) -> str:
    if spec is None:
        return name
    return f"{name}{spec}" if spec[:1] in "<>=!~" else f"{name}=={spec}"


def available_versions(name: str, runtime: str, arch: str) -> list[str]:
    """Versions of ``name`` with a wheel for the runtime (pip's finder, the index's view)."""
    proc = _pip(["index", "versions", name, "--json", *pip_target_args(runtime, arch)], quiet=False)
    if proc.returncode != 0:
        return []
    try:
        return [str(v) for v in json.loads(proc.stdout).get("versions", [])]
    except ValueError:
        return []


def choose_version(host: str, available: list[str]) -> tuple[str | None, str]:
    """The rule of the module docstring: exact, else same major.minor, else older."""
    V = packaging_module().version.Version
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


def _install(lines: list[str], runtime: str, arch: str, target: str, cache: str,
             offline: bool) -> tuple[dict[str, str] | None, str]:
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


def resolve(requested: dict[str, str | None], runtime: str, arch: str, target: str,
            cache: str | None = None, log: Callable[[str], None] | None = None) -> Resolution:
    """Install ``requested`` (name -> version/specifier/None) into ``target`` for the runtime."""
    cache = cache or wheel_cache()
    runtime_info(runtime)
    plan = dict(requested)
    fallbacks: dict[str, dict[str, str]] = {}
    lines = [_req_line(n, s) for n, s in sorted(plan.items())]
    resolved, err = _install(lines, runtime, arch, target, cache, offline=True)
    if resolved is None:
        resolved, err = _install(lines, runtime, arch, target, cache, offline=False)
    if resolved is None:
        # Find which exact pins have no wheel for this platform, and the closest that has.
        info = runtime_info(runtime)
        where = f"{runtime} on {arch} ({info.os}, glibc {info.glibc[0]}.{info.glibc[1]})"
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
    """Remove caches, bytecode, console scripts and test suites; returns bytes removed.

    A test suite is a ``tests`` or ``test`` directory inside a package (never a top-level
    one, never a public module such as ``numpy.testing`` or ``pandas.testing``), and only
    when no module outside the test suites imports from it (scipy's ``_precompute`` imports
    ``scipy.special.tests``: that one stays)."""
    removed = 0
    for top in _STRIP_TOP:
        if os.path.isdir(os.path.join(root, top)):
            removed += tree_size(os.path.join(root, top))
            shutil.rmtree(os.path.join(root, top))
    needed = imported_test_modules(root)
    for dirpath, dirs, files in os.walk(root, topdown=True):
        meta = _is_metadata(os.path.relpath(dirpath, root))
        for d in list(dirs):
            path = os.path.join(dirpath, d)
            suite = d in _TEST_SUITE_DIRS and dirpath != root and not meta and \
                _dotted(root, path) not in needed
            if d == "__pycache__" or suite:
                removed += tree_size(path)
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(d)
        for name in files:
            if name.endswith(_STRIP_SUFFIXES):
                p = os.path.join(dirpath, name)
                removed += os.path.getsize(p)
                os.unlink(p)
    return removed


def _is_metadata(rel: str) -> bool:
    return any(part.endswith((".dist-info", ".data", ".libs")) for part in rel.split(os.sep))


def _dotted(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, ".")


_MAY_IMPORT_TESTS = re.compile(rb"^[ \t]*(from|import)[ \t][^\n]*\btests?\b", re.M)


def imported_test_modules(root: str) -> set[str]:
    """Dotted names of the test-suite packages (``a.b.tests``) that modules outside any
    test suite import, from their import statements (relative ones resolved)."""
    import ast

    wanted: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirs[:] = [d for d in dirs if not (d in _TEST_SUITE_DIRS and dirpath != root)
                   and not _is_metadata(os.path.join(rel, d))]
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                text = f.read()
            if not _MAY_IMPORT_TESTS.search(text):
                continue  # the cheap filter: most files never name a test module
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError):
                continue
            package = [] if rel == "." else rel.split(os.sep)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = package[:len(package) - node.level + 1] if node.level else []
                    mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                    names = [mod] + [f"{mod}.{a.name}" for a in node.names]
                else:
                    continue
                for full in names:
                    parts = full.split(".")
                    for i, part in enumerate(parts[1:], 1):
                        if part in _TEST_SUITE_DIRS:
                            wanted.add(".".join(parts[:i + 1]))
    return wanted


def remove_distributions(site_dir: str, names: Iterable[str]) -> list[str]:
    """Delete the installed files (per their RECORD) of the distributions ``names`` from
    ``site_dir``; returns the canonical names removed. pip installs what a package
    requires, PROVIDED ones included (scikit-learn -> joblib -> cloudpickle): the runtime
    or our function zip provides those, and a second copy in a layer would only shadow or
    duplicate them."""
    import csv

    drop = {canonical(n) for n in names}
    site = os.path.abspath(site_dir)
    removed = []
    for entry in sorted(os.listdir(site)):
        if not entry.endswith(".dist-info"):
            continue
        name = canonical(entry[:-len(".dist-info")].rsplit("-", 1)[0])
        if name not in drop:
            continue
        record = os.path.join(site, entry, "RECORD")
        parents = set()
        if os.path.exists(record):
            with open(record, encoding="utf-8", errors="replace", newline="") as f:
                for row in csv.reader(f):
                    path = os.path.normpath(os.path.join(site, row[0])) if row else site
                    if not path.startswith(site + os.sep):
                        continue  # e.g. a console script outside the target (../../bin)
                    if os.path.isfile(path) or os.path.islink(path):
                        os.unlink(path)
                        parents.add(os.path.dirname(path))
        shutil.rmtree(os.path.join(site, entry), ignore_errors=True)
        for d in sorted(parents, key=len, reverse=True):  # now-empty package dirs
            while d.startswith(site + os.sep) and os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
                d = os.path.dirname(d)
        removed.append(name)
    return removed


def tree_size(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def module_manifest(site_dir: str) -> dict[str, dict[str, str]]:
    """``{top-level module: {"dist": name, "version": v}}`` from the dist-infos in
    ``site_dir`` (their RECORD lists what each distribution installed)."""
    out: dict[str, dict[str, str]] = {}
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
            out[top] = {"dist": canonical(name or entry.split("-")[0]), "version": version or ""}
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
class Site:
    """Packages installed for a runtime in one directory (a layer's ``python/``, or the
    site-packages of an image's build context), stripped, with their module manifest."""

    key: str                   # content address (pin_key)
    path: str
    unzipped_bytes: int
    manifest: dict[str, dict[str, str]]  # module -> {"dist", "version"}
    resolution: Resolution
    biggest: list[tuple[str, int]]
    excluded: list[str]        # PROVIDED distributions pip pulled in, removed
    build_s: float

    def info(self) -> dict[str, Any]:
        """What a deployment records about these packages (JSON)."""
        res = self.resolution
        return {"key": self.key, "runtime": res.runtime, "arch": res.arch, "pins": res.resolved,
                "requested": res.requested, "fallbacks": res.fallbacks, "modules": self.manifest,
                "excluded": self.excluded, "unzipped_bytes": self.unzipped_bytes,
                "build_s": round(self.build_s, 1)}


def build_site(requested: dict[str, str | None], runtime: str, arch: str, path: str,
               cache: str | None = None, log: Callable[[str], None] | None = None) -> Site:
    """Install ``requested`` and what they require into ``path`` for the runtime, every file
    kept (``.so``, ``*.libs``, dist-info) but test suites and caches, and none of the
    distributions the runtime or the function zip provide."""
    import time

    t0 = time.time()
    res = resolve(requested, runtime, arch, path, cache, log=log)
    excluded = remove_distributions(path, PROVIDED)
    for name in excluded:
        res.resolved.pop(name, None)
    strip_tree(path)
    return Site(key=pin_key(requested, runtime, arch), path=path, unzipped_bytes=tree_size(path),
                manifest=module_manifest(path), resolution=res, biggest=biggest_packages(path),
                excluded=excluded, build_s=time.time() - t0)


@dataclasses.dataclass
class Layer:
    site: Site                 # as built (its directory is gone)
    zip: bytes

    @property
    def key(self) -> str:
        return self.site.key


def build_layer(requested: dict[str, str | None], runtime: str, arch: str,
                cache: str | None = None, log: Callable[[str], None] | None = None) -> Layer:
    """A layer zip (``python/`` inside, as Lambda puts on the path from /opt) holding
    ``requested`` and their dependencies for the runtime (see ``build_site``)."""
    import time

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="cloudbutton-layer-") as tmp:
        site = build_site(requested, runtime, arch, os.path.join(tmp, "python"), cache, log=log)
        blob = zip_tree(site.path, "python")
    site.path = ""
    site.resolution.target = ""
    site.build_s = time.time() - t0
    return Layer(site=site, zip=blob)


# The container-image path --------------------------------------------------------------
IMAGE_SITE_DIR = "site-packages"   # in the build context: the resolved packages
IMAGE_CODE_DIR = "function"        # in the build context: the function zip, unpacked


def docker_platform(arch: str) -> str:
    return "linux/amd64" if arch == "x86_64" else "linux/arm64"


def dockerfile(runtime: str, arch: str, key: str) -> str:
    """A container image on AWS's public Lambda base image of ``runtime``: the function's
    code and the packages resolved (by ``build_site``, like a layer's) into the build
    context, both copied to the task root. Nothing is installed at build time, so the
    image holds exactly the pins a layer would."""
    return (f"# Generated by `cloudbutton deploy --image` for {runtime} on {arch} "
            f"({docker_platform(arch)}); packages {key[:16]}.\n"
            f"FROM {runtime_info(runtime).base_image}\n"
            f"COPY {IMAGE_CODE_DIR}/ ${{LAMBDA_TASK_ROOT}}/\n"
            f"COPY {IMAGE_SITE_DIR}/ ${{LAMBDA_TASK_ROOT}}/\n"
            f'CMD ["{HANDLER}"]\n')
