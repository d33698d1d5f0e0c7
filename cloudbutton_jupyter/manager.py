"""What the Jupyter panel asks the server, answered from storage and the config file.

A plain class, testable without a server: the tornado handlers only parse
requests and call it. It reads JSON manifests, statuses and dispatch records only
and never unpickles anything (results stay in storage for the kernel to fetch).
It holds no job key, so the figures it shows are read unverified (see ``catalog``).
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from cloudbutton_executor import accounting, catalog, config, protocol
from cloudbutton_executor.storage import LocalStorage, Storage

# What the panel shows and saves, a selection of the executor's one config schema (which
# holds their types, bounds and defaults): the run defaults, where AWS is, and the
# function's settings. Other keys of the file (prefix, endpoints, tuning) are kept as
# other tools wrote them.
PANEL_KEYS = (*config.RUN, "region", "profile", "bucket")
# Run settings the panel's form has no field for: a save keeps what the file says of them
# and writes them only when the client sends them.
PANEL_UNEDITED = ("cache", "budget", "backups")
PANEL_LAMBDA_KEYS = ("function_name", "role_name", "layer_name", "memory", "timeout", "workers",
                     "invoke_threads")
DEFAULT_CONFIG: dict[str, Any] = {**{k: config.SETTINGS[k].default for k in PANEL_KEYS}, "lambda": {}}
# What the Lambda backend reads from the file.
AWS_KEYS = (*config.AWS, "lambda", "endpoints")
TRACEBACK_LIMIT = 8000
TASK_ITEMS_SHOWN = 5       # items of a task whose input and stdout its detail shows
TASK_STDOUT_LIMIT = 2000   # the last characters of each
RERUN_SCAN = 50  # how many newer jobs a job's detail looks through for its re-runs


class InvalidInput(ValueError):
    """Bad input from the client: the handler answers 400 with this message."""


class JobNotFound(KeyError):
    """No such job in storage: the handler answers 404."""


class Conflict(ValueError):
    """The request is valid but cannot apply now (e.g. cancel a finished job): 409."""


class Unavailable(RuntimeError):
    """A backend the request needs cannot be reached (e.g. no AWS credentials): 503."""


def _blank(value: Any) -> Any:
    """What a form field holds: text stripped, and nothing for an empty one."""
    if isinstance(value, str):
        value = value.strip()
    return None if value in ("", None) else value


def validate_config(data: Any) -> dict[str, Any]:
    """A complete, checked panel config from a client's (possibly partial) one."""
    if not isinstance(data, dict):
        raise InvalidInput("the config must be a JSON object")
    try:
        config.refuse_unknown(data, dict.fromkeys((*PANEL_KEYS, "lambda")), "config keys")
        lam = data.get("lambda") or {}
        if not isinstance(lam, dict):
            raise config.ConfigError(f"lambda must be an object, got {type(lam).__name__}")
        config.refuse_unknown(lam, dict.fromkeys(f"lambda.{k}" for k in PANEL_LAMBDA_KEYS),
                              "lambda keys", section="lambda.")
        out = dict(DEFAULT_CONFIG)
        out.update({k: _blank(data[k]) for k in PANEL_KEYS if _blank(data.get(k)) is not None})
        out.update(config.check_run({k: out[k] for k in config.RUN}))
        for key in ("region", "profile", "bucket"):
            out[key] = config.check(key, out[key])
        out["lambda"] = {k: config.check(f"lambda.{k}", _blank(v)) for k, v in lam.items()
                         if _blank(v) is not None}
    except config.ConfigError as err:
        raise InvalidInput(str(err)) from None
    return out


def _task_state(status: dict) -> str:
    if "infra" in status:
        return "error"
    return status.get("state", "done")


class CloudManager:
    def __init__(self, storage: Storage | None = None, prefix: str = "cloudbutton",
                 config_file: str | None = None):
        self._storage = storage  # None: decided by the config at each request
        self.prefix = prefix
        self._config_file = config_file
        self._lock = threading.Lock()
        # Statuses are final (first write wins), so each is read once and kept.
        self._status_cache: dict[tuple[str, str], dict] = {}
        self._lambda_cache: tuple[str, Any] | None = None
        self._manifests: dict[tuple[str, str], dict] = {}
        self._finished: dict[tuple[str, str], dict] = {}
        self._shown: dict[str, list[str]] = {}

    # Config -------------------------------------------------------------------
    @property
    def config_file(self) -> str:
        return self._config_file or config.config_path()

    def _raw_config(self) -> dict:
        try:
            raw = config.read_file(self.config_file) or {}
        except Exception as err:
            raise InvalidInput(f"cannot read the config file {self.config_file}: {err}") from err
        if not isinstance(raw, dict):
            raise InvalidInput(f"the config file {self.config_file} does not hold a mapping")
        return raw

    def get_config(self) -> dict:
        raw = self._raw_config()
        known = {k: v for k, v in raw.items() if k in PANEL_KEYS}
        lam = raw.get("lambda")
        known["lambda"] = {k: v for k, v in lam.items() if k in PANEL_LAMBDA_KEYS} \
            if isinstance(lam, dict) else lam
        try:
            conf = validate_config(known)
            problem = None
        except InvalidInput as err:  # a hand-edited bad file must not lock the panel out
            conf, problem = dict(DEFAULT_CONFIG), str(err)
        conf["path"] = self.config_file
        if problem:
            conf["warning"] = f"{self.config_file}: {problem}; showing the defaults"
        return conf

    def put_config(self, data) -> dict:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("path", "warning")}
        conf = validate_config(data)
        path = self.config_file
        # Keep what other tools wrote (endpoints, prefix, lambda tuning) and replace ours.
        existing = self._raw_config()
        merged = {**existing, **{k: v for k, v in conf.items() if k != "lambda"}}
        for k in PANEL_UNEDITED:
            if _blank(data.get(k)) is None:
                merged.pop(k, None)
                if k in existing:
                    merged[k] = existing[k]
        lam = {**(existing.get("lambda") or {}), **conf["lambda"]}
        for k in PANEL_LAMBDA_KEYS:
            if k not in conf["lambda"]:
                lam.pop(k, None)  # cleared in the panel
        merged = {k: v for k, v in merged.items() if v is not None}
        if lam:
            merged["lambda"] = lam
        else:
            merged.pop("lambda", None)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        import yaml

        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(merged, f, sort_keys=False)
        os.replace(tmp, path)
        out = self.get_config()
        # The Lambda backend reads the same file: say so at once if it cannot.
        try:
            config.from_dict(config.read_file(path), path)
        except Exception as err:
            out["warning"] = f"saved, but the Lambda backend cannot read the file: {err}"
        return out

    # Backend ------------------------------------------------------------------
    def backend_status(self, backend: str | None = None) -> dict:
        conf = self.get_config()
        backend = backend or conf["backend"]
        if backend not in ("local", "lambda"):
            raise InvalidInput(f"backend must be 'local' or 'lambda', got {backend!r}")
        if backend == "local":
            return {"backend": "local", "ok": True, "workers": conf["workers"] or os.cpu_count(),
                    "storage": (self._storage or LocalStorage()).describe(),
                    "message": f"local worker processes ({conf['workers'] or os.cpu_count()})"}
        out = {"backend": "lambda", "ok": False, "region": conf["region"],
               "bucket": conf["bucket"], "function": conf["lambda"].get("function_name")}
        try:
            backend_obj = self._lambda_backend()
            status = backend_obj.status()
        except Exception as err:  # no module, no credentials, bad config: show why
            out["error"] = f"{type(err).__name__}: {err}"
            return out
        # The backend's own status (it always says "ok"), over the panel's settings.
        out.update({k: v for k, v in status.items() if v is not None or k not in out})
        out["backend"] = "lambda"
        return out

    def _lambda_backend(self):
        """The Lambda backend for the file's settings, cached while the file is unchanged."""
        raw = self._raw_config()
        subset = {k: raw[k] for k in AWS_KEYS if raw.get(k) is not None}
        key = json.dumps(subset, sort_keys=True, default=str)
        with self._lock:
            cached = self._lambda_cache
        if cached and cached[0] == key:
            return cached[1]
        from cloudbutton_executor.backends.aws_lambda import LambdaBackend

        backend = LambdaBackend(config=subset)
        with self._lock:
            old, self._lambda_cache = self._lambda_cache, (key, backend)
        if old:
            old[1].shutdown()
        return backend

    # Jobs ---------------------------------------------------------------------
    def storage(self, conf: dict | None = None) -> Storage:
        if self._storage is not None:
            return self._storage
        conf = conf or self.get_config()
        if conf["backend"] == "lambda":
            try:
                return self._lambda_backend().storage
            except Exception as err:
                raise Unavailable(f"the Lambda backend's storage is not reachable: "
                                  f"{type(err).__name__}: {err}") from err
        return LocalStorage()  # $CLOUDBUTTON_STORAGE_DIR or ~/.cache/cloudbutton, read per call

    def _prefix(self, conf=None) -> str:
        if self._storage is None and (conf or {}).get("backend") == "lambda":
            return self._lambda_backend().prefix
        return self.prefix

    @staticmethod
    def check_job_id(job_id: str) -> str:
        try:
            return str(config.check("job_id", job_id))
        except config.ConfigError as err:
            raise InvalidInput(str(err)) from None

    def _manifest(self, storage, prefix, job_id) -> dict:
        manifest = catalog.manifest(storage, prefix, job_id)
        if manifest is None:
            raise JobNotFound(job_id)
        return manifest

    def _statuses(self, storage, prefix, job_id) -> dict[str, dict]:
        # Statuses are final (first write wins), so each is read once and kept.
        with self._lock:
            known = {k: v for k, v in self._status_cache.items() if k[0] == job_id}
        out = catalog.statuses(storage, prefix, job_id, cache=known)
        with self._lock:
            self._status_cache.update(known)
        return out

    def _summary(self, storage, prefix, manifest: dict) -> dict:
        job_id = manifest["job_id"]
        statuses = self._statuses(storage, prefix, job_id)
        unfinished = accounting.ended_items(statuses) < int(manifest.get("n_items", 0))
        record = catalog.dispatch_record(storage, prefix, job_id) if unfinished else None
        return accounting.stored_job_summary(manifest, statuses,
                                             catalog.cancel_info(storage, prefix, job_id),
                                             time.time(), record)

    def list_jobs(self, limit: int | str = 30) -> list[dict]:
        """Summaries of the newest jobs, newest first.

        The panel polls this every few seconds, and on S3 every request costs: manifests
        (immutable) and the summaries of finished jobs are read once and kept, so a poll
        costs one LIST plus one per running job.
        """
        try:  # from the query string (text) or from Python
            n: int = config.OPTIONS["limit"].parse(limit) if isinstance(limit, str) \
                else config.check("limit", limit)
        except config.ConfigError as err:
            raise InvalidInput(str(err)) from None
        conf = self.get_config()
        storage, prefix = self.storage(conf), self._prefix(conf)
        ids = catalog.job_ids(storage, prefix, n)
        root = json.dumps(storage.describe(), sort_keys=True) + prefix
        out = []
        for job_id in ids:
            key = (root, job_id)
            summary = self._finished.get(key)
            if summary is None:
                manifest = self._manifests.get(key)
                if manifest is None:
                    manifest = catalog.manifest(storage, prefix, job_id)
                    if manifest is None:
                        continue  # being created
                    self._manifests[key] = manifest
                summary = self._summary(storage, prefix, manifest)
                if summary["state"] in ("done", "failed"):  # final: nothing can change any more
                    with self._lock:
                        self._finished[key] = summary
            out.append(summary)
        self._forget_except({(root, j) for j in ids})
        return accounting.link_reruns(out)

    def _forget_except(self, keep: set) -> None:
        """Bound the caches to the jobs still listed."""
        with self._lock:
            for cache in (self._finished, self._manifests):
                for key in [k for k in cache if k not in keep]:
                    del cache[key]
            listed = {job_id for _root, job_id in keep}
            for key in [k for k in self._status_cache if k[0] not in listed]:
                del self._status_cache[key]

    def job_detail(self, job_id: str) -> dict:
        self.check_job_id(job_id)
        conf = self.get_config()
        storage, prefix = self.storage(conf), self._prefix(conf)
        manifest = self._manifest(storage, prefix, job_id)
        statuses = self._statuses(storage, prefix, job_id)
        out = self._summary(storage, prefix, manifest)
        out = accounting.link_reruns([out, *self._reruns_of(storage, prefix, job_id)])[0]
        created = out["created"]
        shown = self._inputs_shown(storage, prefix, job_id)
        tasks, failures = [], []
        for tid in sorted(statuses):
            st = statuses[tid]
            s = st.get("stats") or {}
            rel = {k: (s[k] - created) if isinstance(s.get(k), (int, float)) else None
                   for k in ("host_submit", "worker_start", "setup_done", "compute_done", "result_stored")}
            a, b = protocol.task_range(tid)
            errors = protocol.item_errors(st)
            stdout = protocol.item_stdout(st)
            tasks.append({
                "task": tid, "items": [a, b], "state": _task_state(st),
                "ok": b - a - len(errors), "failed": len(errors),
                "attempt": st.get("attempt", 0), "cold_start": s.get("cold_start"),
                "peak_mem_mb": s.get("peak_mem_mb"), "requests": s.get("requests"),
                "infra": st.get("infra"), "t": rel,
                # What its first items were given and printed, whatever their state.
                "item_detail": [{"i": i, "input": shown[i] if i < len(shown) else None,
                                 "stdout": stdout.get(i, "")[-TASK_STDOUT_LIMIT:]}
                                for i in range(a, min(b, a + TASK_ITEMS_SHOWN))],
            })
            for i, err in sorted(errors.items()):
                failures.append({
                    "i": i, "task": tid, "type": err.get("type", "Error"),
                    "message": err.get("message", ""), "kind": err.get("kind"),
                    "traceback": (err.get("traceback") or "")[-TRACEBACK_LIMIT:],
                    "stdout": stdout.get(i, "")[-2000:],
                })
        out.update(tasks_detail=tasks, failures=failures, manifest=manifest)
        return out

    def _inputs_shown(self, storage, prefix, job_id: str) -> list[str]:
        """The job's input reprs, read once (written once, before its manifest)."""
        with self._lock:
            known = self._shown.get(job_id)
        if known is None:
            known = catalog.inputs_shown(storage, prefix, job_id)
            with self._lock:
                self._shown = {job_id: known}  # the detail open now: one job's kept
        return known

    def _reruns_of(self, storage, prefix, job_id: str) -> list[dict]:
        """Summaries of the jobs that re-ran ``job_id``'s failed items: among the
        ``RERUN_SCAN`` oldest jobs newer than it (a re-run is newer than what it re-runs)."""
        newer = sorted(j for j in catalog.job_ids(storage, prefix) if j > job_id)[:RERUN_SCAN]
        out = []
        root = json.dumps(storage.describe(), sort_keys=True) + prefix
        for other in newer:
            m = self._manifests.get((root, other))
            if m is None:
                m = catalog.manifest(storage, prefix, other)
                if m is None:
                    continue
                with self._lock:  # immutable: read once (the panel refreshes a detail often)
                    self._manifests[(root, other)] = m
            if m and m.get("rerun_of") == job_id:
                out.append(self._summary(storage, prefix, m))
        return out

    def cancel(self, job_id: str) -> dict:
        self.check_job_id(job_id)
        conf = self.get_config()
        storage, prefix = self.storage(conf), self._prefix(conf)
        summary = self._summary(storage, prefix, self._manifest(storage, prefix, job_id))
        if summary["state"] in ("done", "failed"):
            raise Conflict(f"job {job_id} already finished ({summary['state']})")
        # The kernel's executor polls for this marker; workers check it too.
        written = storage.put_if_absent(protocol.cancel_key(prefix, job_id),
                                        protocol.cancel_marker(by="jupyter-panel", at=time.time()))
        return {"job_id": job_id, "cancelled": True, "already": not written}

