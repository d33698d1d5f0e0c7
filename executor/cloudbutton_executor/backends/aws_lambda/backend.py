"""The Lambda backend: runs the dispatcher's events on the deployed worker function.

``InvocationType="Event"`` invokes of the one worker handler are sent by a pool of
threads (``invoke.py``). Workers never call back: the dispatcher polls the statuses
in S3 (``poll_interval``) and ends silent invocations by deadline. Lambda delivers
async events at least once and may lose them: duplicates are harmless (task keys are
fixed, first write wins); lost events are re-sent as backups once an invocation stays
silent well past what its peers took (``lost_after``, ``redeliveries``); a task with no
result by the Lambda timeout + ``deadline_grace`` ends as a timeout error.

Before a job, ``check_job`` checks what was deployed (``function.py``'s versions and
manifest) against the job: versions, the modules it imports, memory, timeout, the
runtime calendar, and caps the in-flight invocations at the concurrency Lambda grants.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import random
import sys
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ... import config as _config
from ... import packaging
from ...errors import InfrastructureError, MissingPackageError, VersionMismatchError
from ...interrupt import block_interrupts
from ...storage import S3Storage
from ..base import Backend, BackendLimits, Event, InvocationListener, JobFit
from .function import (CODE_ENV, MANIFEST_ENV, VERSIONS_ENV, decode_versions, default_bucket,
                       executor_code_sha256, host_versions, read_manifest, version_problems)
from .invoke import Boto3Invoker, FastInvoker, Invoker, Rejected, Throttled, proxy_for

_READY_TTL_S = 30.0  # how long a successful version check is trusted
CANCEL_CHECK_TTL_S = 2.0
# Lambda's documented limit for an asynchronous invocation's payload.
ASYNC_PAYLOAD_LIMIT_BYTES = 256 * 1024
# How often a printing task stores what it printed so far (its first print at once): one
# PUT by the worker and one GET by the host per flush (the host's LISTs are made anyway).
LIVE_STDOUT_S = 2.5


class NotDeployedError(VersionMismatchError):
    """The worker function does not exist (yet) where the config points."""


def resolve_bucket(cfg: _config.Config, session: Any = None) -> str:
    if cfg.bucket:
        return cfg.bucket
    session = session or cfg.session()
    account = cfg.client("sts", session).get_caller_identity()["Account"]
    return default_bucket(str(account), cfg.resolved_region(session))


class LambdaBackend(Backend):
    """Runs events on the deployed worker function; see the module docstring. ``today``:
    the date the runtime calendar is read at (UTC today by default)."""

    name = "lambda"

    def __init__(self, workers: int | None = None, storage: Any = None, config: Any = None,
                 config_path: str | None = None, session: Any = None,
                 today: datetime.date | None = None, **options: Any):
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
                known = lam_fields | {"region", "profile", "bucket", "prefix", "endpoints", "config",
                                      "config_path", "today"}
                raise TypeError(f"unknown option {key!r} for the lambda backend; known: {sorted(known)}")
        _config.validate(cfg)
        self.config = cfg
        self.today = today
        lam = cfg.lambda_
        self.session = session or cfg.session()
        self.region = cfg.resolved_region(self.session)
        self.function_name = lam.function_name
        self.workers = int(workers or lam.workers)
        self.prefix: str = cfg.prefix
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
            default_memory_mb=lam.memory, auto_batch_target_s=1.0, architecture=lam.architecture,
            # Two requests per 2.5 s: below one S3 request per task per second while it
            # prints, none when it is silent.
            live_stdout_s=LIVE_STDOUT_S)
        self._threads = lam.invoke_threads
        self._pool = ThreadPoolExecutor(max_workers=lam.invoke_threads,
                                        thread_name_prefix="cloudbutton-invoke",
                                        initializer=block_interrupts)
        self._invoker: Invoker | None = None
        self._invoker_lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._count_lock = threading.Lock()
        self._ready_at = 0.0
        self._conf: dict[str, Any] | None = None
        self._manifests: dict[str, dict[str, Any] | None] = {}
        self._s3: Any = None
        self._warned: set[str] = set()
        self._concurrency: int | None = None
        self.invocations = 0

    @property
    def limits(self) -> BackendLimits:
        return self._limits

    def _warn(self, text: str) -> None:
        """Say ``text`` once per backend (pre-flight warnings repeat with every job)."""
        if text not in self._warned:
            self._warned.add(text)
            print(f"cloudbutton: {text}", file=sys.stderr)

    # Invocation -----------------------------------------------------------------
    @property
    def invoker(self) -> Invoker:
        if self._invoker is None:
            with self._invoker_lock:
                if self._invoker is None:
                    endpoint = self.config.endpoints.get("lambda") or \
                        self.config.client("lambda", self.session).meta.endpoint_url
                    # The fast path talks to the endpoint directly; behind a proxy (HTTPS_PROXY,
                    # NO_PROXY) boto3 goes, which knows how to use one.
                    if self.config.lambda_.fast_invoke and not proxy_for(endpoint):
                        self._invoker = FastInvoker(self.session, self.region, endpoint,
                                                    self.function_name, self.config.lambda_.invoke_timeout)
                    else:
                        self._invoker = Boto3Invoker(self.config, self.session, self.function_name,
                                                     self._threads)
        return self._invoker

    def invoke(self, events: list[Event], listener: InvocationListener) -> None:
        inv = self.invoker  # fail here (no credentials) rather than in a pool thread
        for event in events:
            self._pool.submit(self._send, inv, event, listener)

    def _send(self, inv: Invoker, event: Event, listener: InvocationListener) -> None:
        try:
            # Warm containers may trust a "not cancelled" answer briefly (one HEAD saved per
            # task); cancel_job stops sending at once, so at most the in-flight window runs.
            payload = json.dumps(dict(event, cancel_check_ttl=CANCEL_CHECK_TTL_S),
                                 separators=(",", ":")).encode()
            give_up = time.time() + self.config.lambda_.throttle_retry_s
            # An endpoint that does not answer is retried until the task's own deadline
            # (a few seconds per try): a task never waits on a silent endpoint for longer.
            deadline = (float(event.get("host_submit") or time.time()) + float(event.get("timeout") or 0)
                        + self.config.lambda_.deadline_grace)
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
                except Throttled as thr:
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
        except Rejected as err:
            listener.on_failure(event, InfrastructureError(f"task {event['task']}: {err}", event["task"]))
        except Exception as err:  # never lose an event silently
            listener.on_failure(event, InfrastructureError(
                f"task {event['task']}: invoking Lambda failed: {err!r}", event["task"]))

    def cancel_job(self, job_id: str) -> None:
        self._cancelled.add(job_id)  # queued sends are skipped; running workers see the marker

    # Readiness and status ---------------------------------------------------------
    def deployed_configuration(self) -> dict[str, Any] | None:
        lam = self.config.client("lambda", self.session)
        try:
            conf: dict[str, Any] = lam.get_function_configuration(FunctionName=self.function_name)
            return conf
        except lam.exceptions.ResourceNotFoundException:
            return None

    def _today(self) -> datetime.date:
        return self.today or packaging.utc_today()

    def runtime_notice(self, conf: dict[str, Any]) -> str:
        """What the runtime calendar says about the deployed function ('' if nothing):
        jobs keep running on it whatever the phase; deploying is what AWS blocks."""
        image = conf.get("PackageType") == "Image"
        runtime = conf.get("Runtime") or packaging.runtime_for_host()
        if runtime not in packaging.RUNTIMES:
            return ""
        level, why = packaging.calendar_check(runtime, self._today(), image=image, exists=True)
        if level == "refuse":
            return f"jobs still run on {self.function_name}, but {why}"
        return why

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
            fix = "run `cloudbutton deploy` to update it"
            runtime = packaging.runtime_for_host()
            if runtime in packaging.RUNTIMES and conf.get("PackageType") != "Image":
                level, why = packaging.calendar_check(
                    runtime, self._today(), exists=conf.get("Runtime") == runtime)
                if level == "refuse":
                    fix = f"`cloudbutton deploy` cannot update it: {why}"
            raise VersionMismatchError(
                f"the deployed Lambda function {self.function_name} runs other versions than this "
                f"host ({'; '.join(problems)}): {fix}")
        notice = self.runtime_notice(conf)
        if notice:
            self._warn(notice)
        arch = (conf.get("Architectures") or [None])[0]
        self._limits = dataclasses.replace(
            self._limits, max_timeout_s=float(conf.get("Timeout") or self._limits.max_timeout_s or 900),
            default_memory_mb=int(conf.get("MemorySize") or self._limits.default_memory_mb),
            architecture=arch or self._limits.architecture)
        self._conf = conf
        self._ready_at = time.time()

    def deployment(self) -> dict[str, Any] | None:
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

    def check_job(self, *, modules: Collection[str] = (), memory_mb: int | None = None,
                  timeout: float | None = None) -> JobFit:
        """Pre-flight, before anything is uploaded: the deployed function can run this job as
        asked (versions, the modules it imports, memory, timeout). Returns the job's memory
        and timeout; raises naming what differs and the command that fixes it."""
        self.check_ready()
        conf = self._conf or {}
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
        wanted = set(modules or ())
        if wanted:
            packaging.record_modules(wanted)  # what `cloudbutton deploy --sync` will deploy
            problems, warnings = self.module_problems(wanted)
            if problems:
                raise MissingPackageError(
                    f"the deployed Lambda function {self.function_name} cannot run this job: "
                    + "; ".join(problems) + ". Run `cloudbutton deploy --sync` in this environment "
                    "(it deploys the packages your jobs import, at this host's versions)")
            for w in warnings:
                self._warn(w)
        self._cap_inflight()
        return {"memory_mb": memory, "timeout": float(timeout) if timeout is not None else float(limit)}

    def module_problems(self, modules: Collection[str]) -> tuple[list[str], list[str]]:
        """(refusals, warnings) for each module the job imports, against the manifest."""
        import importlib.metadata as md

        manifest = self.deployment() or {}
        deployed = manifest.get("modules") or {}
        fallbacks = manifest.get("fallbacks") or {}
        dists, _unknown = packaging.module_distributions(modules)
        problems, warnings = [], []
        version = packaging.packaging_module().version.Version
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
                same = version(dep_v).release[:2] == version(host_v).release[:2]
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
            self._warn(f"workers={self.workers} is over the concurrency Lambda allows this function "
                       f"({limit}): at most {limit} invocations run at once, so no more are sent "
                       "at a time")
            self.workers = limit
            self._limits = dataclasses.replace(
                self._limits, concurrency=limit,
                max_inflight=min(self._limits.max_inflight or 2 * limit, 2 * limit))

    def status(self) -> dict[str, Any]:
        """For `cloudbutton status` and the Jupyter panel; never includes secrets."""
        out: dict[str, Any] = {
            "backend": "lambda", "region": self.region, "function": self.function_name,
            "bucket": getattr(self.storage, "bucket", None), "prefix": self.prefix,
            "workers": self.workers, "config": self.config.path, "host_versions": host_versions()}
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
        runtime = conf.get("Runtime") or None
        out.update(deployed=True, deployed_versions=deployed, versions_match=not problems,
                   code_matches=env.get(CODE_ENV) == executor_code_sha256(),
                   memory=conf.get("MemorySize"), timeout=conf.get("Timeout"),
                   package_type=conf.get("PackageType", "Zip"), runtime=runtime,
                   runtime_notice=self.runtime_notice(conf),
                   last_modified=conf.get("LastModified"), ok=not problems)
        if runtime in packaging.RUNTIMES:
            r = packaging.runtime_info(runtime)
            out["runtime_dates"] = {"deprecated": str(r.deprecated), "block_create": str(r.block_create),
                                    "block_update": str(r.block_update),
                                    "phase": packaging.runtime_phase(runtime, self._today())}
        out["message"] = ("ready" if not problems else
                          f"versions differ ({'; '.join(problems)}): run `cloudbutton deploy`")
        if not problems and not out["code_matches"]:
            out["message"] = "ready (the host's executor sources differ from the deployed zip; " \
                             "`cloudbutton deploy` updates it)"
        if out["runtime_notice"]:
            out["message"] += f"; {out['runtime_notice']}"
        return out

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def join(self) -> None:
        self._pool.shutdown(wait=True)  # the invoke threads end once their sends return


def lambda_status(config_path: str | None = None) -> dict[str, Any]:
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
