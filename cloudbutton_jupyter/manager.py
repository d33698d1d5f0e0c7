"""What the Jupyter panel asks the server, answered from storage and the config file.

A plain class, testable without a server: the tornado handlers only parse
requests and call it. It reads JSON manifests and statuses only and never
unpickles anything (results stay in storage for the kernel to fetch).
"""
from __future__ import annotations

import json
import os
import threading
import time

from cloudbutton_executor import protocol
from cloudbutton_executor.storage import LocalStorage, NotFound, Storage

# AWS Lambda list prices (x86, us-east-1), the same the executor's Job.stats uses.
GB_SECOND_USD = 0.0000166667
REQUEST_USD = 0.20 / 1_000_000

# The panel's run defaults (top level, what `%%cloud map` options default to) and the
# Lambda settings, in the layout of cloudbutton_executor.config: region/profile/bucket/prefix
# at the top level, the function's settings under `lambda:`.
DEFAULT_CONFIG = {
    "backend": "local",
    "workers": None,
    "memory_mb": None,
    "timeout": None,
    "chunksize": 1,
    "retries": 0,
    "region": None,
    "profile": None,
    "bucket": None,
    "lambda": {},
}
AWS_KEYS = ("region", "profile", "bucket", "prefix", "lambda", "endpoints")
LAMBDA_KEYS = {"function_name": str, "role_name": str, "layer_name": str, "memory": int,
               "timeout": int, "workers": int, "invoke_threads": int}
TRACEBACK_LIMIT = 8000


class InvalidInput(ValueError):
    """Bad input from the client: the handler answers 400 with this message."""


class JobNotFound(KeyError):
    """No such job in storage: the handler answers 404."""


class Conflict(ValueError):
    """The request is valid but cannot apply now (e.g. cancel a finished job): 409."""


class Unavailable(RuntimeError):
    """A backend the request needs cannot be reached (e.g. no AWS credentials): 503."""


def config_path() -> str:
    return os.path.expanduser(os.environ.get("CLOUDBUTTON_CONFIG")
                              or os.path.join("~", ".cloudbutton", "config.yaml"))


def validate_config(data) -> dict:
    """A complete, checked config from a client's (possibly partial) one."""
    if not isinstance(data, dict):
        raise InvalidInput("the config must be a JSON object")
    unknown = set(data) - set(DEFAULT_CONFIG)
    if unknown:
        raise InvalidInput(f"unknown config keys: {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(DEFAULT_CONFIG)}")
    out = {**DEFAULT_CONFIG, **data}
    if out["backend"] not in ("local", "lambda"):
        raise InvalidInput(f"backend must be 'local' or 'lambda', got {out['backend']!r}")

    def number(where, v, kind, low, high=None):
        if v is None or v == "":
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise InvalidInput(f"{where} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
        if v < low or (high is not None and v > high):
            raise InvalidInput(f"{where} must be between {low} and {high}, got {v!r}" if high
                               else f"{where} must be at least {low}, got {v!r}")
        return kind(v)

    out["workers"] = number("workers", out["workers"], int, 1, 10000)
    out["memory_mb"] = number("memory_mb", out["memory_mb"], int, 128, 10240)  # Lambda's limits
    out["timeout"] = number("timeout", out["timeout"], float, 0.001,
                            900 if out["backend"] == "lambda" else None)
    if out["chunksize"] != "auto":
        out["chunksize"] = number("chunksize", out["chunksize"], int, 1) or 1
    out["retries"] = number("retries", out["retries"], int, 0, 10) or 0
    for key in ("region", "profile", "bucket"):
        v = out[key]
        if v is not None and not isinstance(v, str):
            raise InvalidInput(f"{key} must be a string")
        out[key] = v.strip() or None if isinstance(v, str) else None
    lam = out["lambda"] or {}
    if not isinstance(lam, dict):
        raise InvalidInput("lambda must be an object")
    clean = {}
    for k, v in lam.items():
        kind = LAMBDA_KEYS.get(k)
        if kind is None:
            raise InvalidInput(f"unknown lambda key {k!r}; known: {', '.join(LAMBDA_KEYS)}")
        if v in (None, ""):
            continue
        if kind is str:
            if not isinstance(v, str):
                raise InvalidInput(f"lambda.{k} must be a string")
            clean[k] = v.strip()
        else:
            clean[k] = number(f"lambda.{k}", v, int, 1)
    out["lambda"] = clean
    return out


def _load_config_file(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}  # YAML is a superset of JSON: one reader for both
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping")
    return data


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
        self._lambda_cache = None
        self._manifests: dict[tuple[str, str], dict] = {}
        self._finished: dict[tuple[str, str], dict] = {}

    # Config -------------------------------------------------------------------
    @property
    def config_file(self) -> str:
        return self._config_file or config_path()

    def _raw_config(self) -> dict:
        try:
            return _load_config_file(self.config_file)
        except Exception as err:
            raise InvalidInput(f"cannot read the config file {self.config_file}: {err}") from err

    def get_config(self) -> dict:
        raw = self._raw_config()
        known = {k: v for k, v in raw.items() if k in DEFAULT_CONFIG}
        known["lambda"] = {k: v for k, v in (raw.get("lambda") or {}).items() if k in LAMBDA_KEYS}
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
        lam = {**(existing.get("lambda") or {}), **conf["lambda"]}
        for k in LAMBDA_KEYS:
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
            from cloudbutton_executor import config as exconf

            exconf.load(path)
        except ImportError:
            pass
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
        if not isinstance(status, dict):
            status = {"message": str(status)}
        out.update({k: v for k, v in status.items() if v is not None or k not in out})
        out.setdefault("ok", bool(status.get("deployed")) and not status.get("error"))
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
        if old and hasattr(old[1], "shutdown"):
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
        if not isinstance(job_id, str) or not protocol.JOB_ID_RE.match(job_id):
            raise InvalidInput(f"not a job id: {job_id!r} (expected YYYYMMDD-HHMMSSmmm-xxxxxx)")
        return job_id

    def _manifest(self, storage, prefix, job_id) -> dict:
        try:
            return json.loads(storage.get(protocol.manifest_key(prefix, job_id)))
        except NotFound:
            raise JobNotFound(job_id) from None

    def _statuses(self, storage, prefix, job_id) -> dict[str, dict]:
        out = {}
        for key in storage.list(protocol.tasks_prefix(prefix, job_id)):
            tid = protocol.task_id_from_status_key(key)
            if tid is None:
                continue
            ck = (job_id, tid)
            st = self._status_cache.get(ck)
            if st is None:
                try:
                    st = json.loads(storage.get(key))
                except (NotFound, ValueError):
                    continue  # being written
                with self._lock:
                    self._status_cache[ck] = st
            out[tid] = st
        return out

    def _cancel_info(self, storage, prefix, job_id):
        try:
            raw = storage.get(protocol.cancel_key(prefix, job_id))
        except NotFound:
            return None
        try:
            info = json.loads(raw)
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}  # the executor writes a plain marker

    def summarize(self, manifest: dict, statuses: dict[str, dict], cancel: dict | None,
                  now: float | None = None) -> dict:
        now = now or time.time()
        n = int(manifest.get("n_items", 0))
        done = failed = 0
        covered = set()
        gb_s = 0.0
        end = None
        flops = 0
        mem = manifest.get("memory_mb") or 1024
        for tid, st in statuses.items():
            a, b = protocol.task_range(tid)
            covered.update(range(a, b))
            n_failed = len(protocol.item_errors(st))
            failed += n_failed
            done += b - a - n_failed
            flops += protocol.item_flops(st)
            s = st.get("stats") or {}
            if s.get("worker_start") and s.get("result_stored"):
                gb_s += max(0.001, s["result_stored"] - s["worker_start"]) * mem / 1024
            t_end = s.get("result_stored") or s.get("compute_done")
            if t_end:
                end = max(end or 0, t_end)
        remaining = max(0, n - len(covered))
        created = manifest.get("created") or now
        if remaining == 0:
            state = "failed" if failed else "done"
        elif cancel is not None:
            state = "cancelled"
            end = cancel.get("at") or end
        elif now > created + (manifest.get("timeout") or 300) * max(n, 1) + 60:
            state = "lost"  # the executor's own re-attach deadline: nobody can finish it now
        else:
            state = "running"
            end = None
        cost = gb_s * GB_SECOND_USD + len(statuses) * REQUEST_USD
        return {
            "job_id": manifest.get("job_id"), "created": created,
            "notebook": manifest.get("label"), "function": manifest.get("function"),
            "backend": manifest.get("backend"), "n_items": n, "state": state,
            "counts": {"done": done, "failed": failed, "pending": remaining if state == "running" else 0,
                       "cancelled": remaining if state == "cancelled" else 0,
                       "lost": remaining if state == "lost" else 0},
            "progress": (done + failed) / n if n else 1.0,
            "duration_s": (end or now) - created, "finished": state != "running",
            "tasks": len(statuses), "memory_mb": manifest.get("memory_mb"),
            "timeout": manifest.get("timeout"), "chunksize": manifest.get("chunksize"),
            "gb_seconds": gb_s, "cost_usd": cost, "flops": flops,
        }

    def list_jobs(self, limit: int = 30) -> list[dict]:
        """Summaries of the newest jobs, newest first.

        The panel polls this every few seconds, and on S3 every request costs: manifests
        (immutable) and the summaries of finished jobs are read once and kept, so a poll
        costs one LIST plus one per running job.
        """
        if not isinstance(limit, int) or not 1 <= limit <= 500:
            raise InvalidInput(f"limit must be an integer from 1 to 500, got {limit!r}")
        conf = self.get_config()
        storage, prefix = self.storage(conf), self._prefix(conf)
        ids = sorted((j for j in storage.children(f"{prefix}/jobs/") if protocol.JOB_ID_RE.match(j)),
                     reverse=True)[:limit]  # job ids start with their UTC creation time
        root = json.dumps(storage.describe(), sort_keys=True) + prefix
        out = []
        for job_id in ids:
            key = (root, job_id)
            summary = self._finished.get(key)
            if summary is None:
                manifest = self._manifests.get(key)
                if manifest is None:
                    try:
                        manifest = self._manifest(storage, prefix, job_id)
                    except (JobNotFound, ValueError):
                        continue  # being created
                    self._manifests[key] = manifest
                statuses = self._statuses(storage, prefix, job_id)
                summary = self.summarize(manifest, statuses, self._cancel_info(storage, prefix, job_id))
                if summary["state"] in ("done", "failed"):  # final: nothing can change any more
                    with self._lock:
                        self._finished[key] = summary
            out.append(summary)
        self._forget_except({(root, j) for j in ids})
        return out

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
        out = self.summarize(manifest, statuses, self._cancel_info(storage, prefix, job_id))
        created = out["created"]
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

    def cancel(self, job_id: str) -> dict:
        self.check_job_id(job_id)
        conf = self.get_config()
        storage, prefix = self.storage(conf), self._prefix(conf)
        manifest = self._manifest(storage, prefix, job_id)
        summary = self.summarize(manifest, self._statuses(storage, prefix, job_id),
                                 self._cancel_info(storage, prefix, job_id))
        if summary["state"] in ("done", "failed"):
            raise Conflict(f"job {job_id} already finished ({summary['state']})")
        # The kernel's executor polls for this marker; workers check it too.
        written = storage.put_if_absent(protocol.cancel_key(prefix, job_id),
                                        json.dumps({"at": time.time(), "by": "jupyter-panel"}).encode())
        return {"job_id": job_id, "cancelled": True, "already": not written}

