"""The host's Lambda configuration: ``~/.cloudbutton/config.yaml`` or ``$CLOUDBUTTON_CONFIG``.

Only names and tuning live here (function, bucket, prefix, region, endpoints
for testing); credentials come from the standard AWS chain (``AWS_PROFILE``,
environment, ``~/.aws``, instance roles) and are rejected if found in the file.
PyYAML is imported lazily: the worker inside Lambda never loads a config.

Example::

    region: eu-west-1            # else AWS_REGION / AWS_DEFAULT_REGION / the profile's region
    profile: research            # else AWS_PROFILE / the default chain
    bucket: my-cloudbutton       # default: cloudbutton-<account id>-<region>
    prefix: cloudbutton          # every key (and the IAM policy) lives under it
    lambda:
      function_name: cloudbutton-worker
      memory: 1024               # MB
      timeout: 300               # s, at most 900
      architecture: x86_64       # or arm64
      workers: 100               # concurrent invocations per job
      invoke_threads: 96         # threads sending invocations
    endpoints:                   # only for emulators (moto, LocalStack)
      s3: http://127.0.0.1:5000
    # Run defaults (the Jupyter panel writes these; %%cloud options override them):
    backend: local               # or lambda
    workers: null                # local: CPU count
    memory_mb: null
    timeout: null
    chunksize: 1                 # or auto
    retries: 0
"""
from __future__ import annotations

import dataclasses
import os
import re

DEFAULT_PATH = os.path.join("~", ".cloudbutton", "config.yaml")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SECRET_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                "access_key", "secret_key", "secret_access_key", "session_token", "password"}


# Defaults for runs, shared by the magic and the Jupyter panel.
RUN_DEFAULT_KEYS = {"backend": str, "workers": int, "memory_mb": int, "timeout": float,
                    "chunksize": (int, str), "retries": int}


class ConfigError(ValueError):
    """The configuration file (named in the message) is invalid."""


@dataclasses.dataclass
class LambdaConfig:
    function_name: str = "cloudbutton-worker"
    role_name: str | None = None          # default: <function_name>-role
    layer_name: str | None = None         # default: <function_name>-deps
    memory: int = 1024
    timeout: int = 300
    architecture: str = "x86_64"          # or arm64 (Graviton): wheels are chosen to match
    workers: int = 100
    invoke_threads: int = 96
    fast_invoke: bool = True              # signed HTTP invokes without botocore's per-call overhead
                                          # (boto3 is used anyway behind an HTTP(S)_PROXY)
    invoke_timeout: float = 5.0           # s per invoke try (connect + answer), then retried
    poll_interval: float = 0.2            # s between LISTs of a running job's statuses
    deadline_grace: float = 20.0          # s after the timeout before the host declares a timeout
    lost_after: float = 30.0              # s before a silent invocation may be presumed lost
    redeliveries: int = 2                 # backup invocations per task for presumed-lost events
    throttle_retry_s: float = 120.0       # give up on a throttled invoke after this long


@dataclasses.dataclass
class Config:
    region: str | None = None
    profile: str | None = None
    bucket: str | None = None
    prefix: str = "cloudbutton"
    lambda_: LambdaConfig = dataclasses.field(default_factory=LambdaConfig)
    endpoints: dict = dataclasses.field(default_factory=dict)
    defaults: dict = dataclasses.field(default_factory=dict)  # run defaults (RUN_DEFAULT_KEYS)
    path: str | None = None  # where it was read from (None: defaults only)

    @property
    def role_name(self) -> str:
        return self.lambda_.role_name or f"{self.lambda_.function_name}-role"[:64]

    @property
    def layer_name(self) -> str:
        return self.lambda_.layer_name or f"{self.lambda_.function_name}-deps"

    def session(self):
        """A boto3 session from the standard credential chain (never from our file)."""
        import boto3

        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def resolved_region(self, session=None) -> str:
        region = self.region or (session or self.session()).region_name
        if not region:
            raise ConfigError("no AWS region configured: set AWS_REGION, a profile region, or "
                              f"'region:' in {self.path or config_path()}")
        return region

    def client(self, service: str, session=None, **config_kwargs):
        from botocore.config import Config as BotoConfig

        session = session or self.session()
        return session.client(
            service, region_name=self.resolved_region(session),
            endpoint_url=self.endpoints.get(service),
            config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}, **config_kwargs))


def config_path() -> str:
    return os.path.expanduser(os.environ.get("CLOUDBUTTON_CONFIG") or DEFAULT_PATH)


def _check_secrets(data, where: str) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            if str(k).lower() in _SECRET_KEYS:
                raise ConfigError(f"{where}: '{k}' does not belong in the cloudbutton config; "
                                  "credentials come from the AWS chain (AWS_PROFILE, ~/.aws, "
                                  "environment, instance role)")
            _check_secrets(v, where)


def _typed(section: str, key: str, value, default, where: str):
    if default is None or value is None:
        return value
    want = type(default)
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {section}{key} must be true or false, got {value!r}")
        return value
    if want in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}: {section}{key} must be a non-negative number, got {value!r}")
        return want(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {section}{key} must be a string, got {value!r}")
    return value


def from_dict(data: dict, path: str | None = None) -> Config:
    where = path or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    _check_secrets(data, where)
    cfg = Config(path=path)
    known = {"region", "profile", "bucket", "prefix", "lambda", "endpoints", *RUN_DEFAULT_KEYS}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    for key in ("region", "profile", "bucket", "prefix"):
        if data.get(key) is not None:
            setattr(cfg, key, _typed("", key, data[key], "", where))
    lam = data.get("lambda") or {}
    if not isinstance(lam, dict):
        raise ConfigError(f"{where}: 'lambda' must be a mapping")
    defaults = LambdaConfig()
    fields = {f.name for f in dataclasses.fields(LambdaConfig)}
    for key, value in lam.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key lambda.{key}; known: {sorted(fields)}")
        setattr(cfg.lambda_, key, _typed("lambda.", key, value, getattr(defaults, key), where))
    eps = data.get("endpoints") or {}
    if not isinstance(eps, dict) or not all(isinstance(v, str) and v.startswith(("http://", "https://"))
                                            for v in eps.values()):
        raise ConfigError(f"{where}: 'endpoints' must map service names to http(s) URLs")
    cfg.endpoints = dict(eps)
    for key, kind in RUN_DEFAULT_KEYS.items():
        value = data.get(key)
        if value is None:
            continue
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if key == "backend":
            ok = value in ("local", "lambda")
        elif key == "chunksize":
            ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        elif key == "timeout":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        elif ok:
            ok = value >= (0 if key == "retries" else 1)
        if not ok:
            raise ConfigError(f"{where}: bad value for {key}: {value!r}")
        cfg.defaults[key] = value
    validate(cfg)
    return cfg


def validate(cfg: Config) -> Config:
    where = cfg.path or "config"
    cfg.prefix = (cfg.prefix or "").strip("/")
    if not cfg.prefix or not re.match(r"^[A-Za-z0-9!_.*'()/-]+$", cfg.prefix):
        raise ConfigError(f"{where}: prefix {cfg.prefix!r} must be a non-empty S3 key prefix")
    if not _NAME_RE.match(cfg.lambda_.function_name):
        raise ConfigError(f"{where}: lambda.function_name {cfg.lambda_.function_name!r} must be "
                          "1-64 letters, digits, '-' or '_'")
    if cfg.bucket is not None and not _BUCKET_RE.match(cfg.bucket):
        raise ConfigError(f"{where}: bucket {cfg.bucket!r} is not a valid S3 bucket name")
    lam = cfg.lambda_
    if not 128 <= lam.memory <= 10240:
        raise ConfigError(f"{where}: lambda.memory must be 128..10240 MB, got {lam.memory}")
    if not 1 <= lam.timeout <= 900:
        raise ConfigError(f"{where}: lambda.timeout must be 1..900 s, got {lam.timeout}")
    if lam.architecture not in ("x86_64", "arm64"):
        raise ConfigError(f"{where}: lambda.architecture must be x86_64 or arm64, got {lam.architecture!r}")
    if lam.workers < 1 or lam.invoke_threads < 1:
        raise ConfigError(f"{where}: lambda.workers and lambda.invoke_threads must be >= 1")
    if lam.poll_interval <= 0:
        raise ConfigError(f"{where}: lambda.poll_interval must be > 0")
    return cfg


def load(path: str | None = None) -> Config:
    """The config at ``path`` (or ``$CLOUDBUTTON_CONFIG``, or the default); defaults if absent."""
    explicit = path is not None or bool(os.environ.get("CLOUDBUTTON_CONFIG"))
    path = os.path.expanduser(path) if path else config_path()
    if not os.path.exists(path):
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return validate(Config())
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return from_dict(data, path)


def load_config() -> dict:
    """The run defaults of the config file (backend, workers, memory_mb, timeout, chunksize,
    retries): what ``%%cloud`` uses when an option is not given."""
    return dict(load().defaults)
