"""The one configuration schema: every setting's type, bounds, default, environment
variable and help, and the file that holds them.

Every reader validates through it: the executor's options, the magic's parsers
(``%%cloud map --retries``, ``%cloud config``), the Jupyter server's REST API
(what the Cloud panel saves) and the ``cloudbutton`` CLI. A value is checked
where it enters, with an error that names the setting.

The file is ``~/.cloudbutton/config.yaml`` or ``$CLOUDBUTTON_CONFIG``. Run
defaults come from, lowest first: the schema, the file, the environment
(``CLOUDBUTTON_BACKEND``...), then what a session or a call sets. Only names
and tuning live in the file; credentials come from the standard AWS chain
(``AWS_PROFILE``, environment, ``~/.aws``, instance roles) and are refused here.
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
      runtime_calendar: enforce  # or waive (an emulator; AWS moved the dates)
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

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import protocol

if TYPE_CHECKING:
    import boto3

DEFAULT_PATH = os.path.join("~", ".cloudbutton", "config.yaml")
CONFIG_ENV = "CLOUDBUTTON_CONFIG"
BACKENDS = ("local", "lambda")
ARCHITECTURES = ("x86_64", "arm64")
RUNTIME_CALENDAR = ("enforce", "waive")
LAMBDA_MAX_TIMEOUT_S = 900  # Lambda's documented maximum
_SECRET_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                "access_key", "secret_key", "secret_access_key", "session_token", "password"}
ENDPOINT_SERVICES = ("s3", "lambda", "iam", "sts", "logs", "ecr")


class ConfigError(ValueError):
    """A setting (named in the message, with where it came from) is invalid."""


# The schema -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: what values it takes and what it means."""

    key: str                         # dotted name: "retries", "lambda.memory"
    kind: type                       # int, float, str or bool
    default: Any
    help: str
    low: float | None = None         # inclusive bounds of a number
    high: float | None = None
    choices: tuple[str, ...] = ()    # the only values a str may take
    words: tuple[str, ...] = ()      # words a number may be instead (chunksize: "auto")
    pattern: str | None = None       # what a str must match (names that cannot be paths)
    shape: str = ""                  # what ``pattern`` accepts, in words
    nullable: bool = False           # None allowed: the backend decides
    env: str | None = None           # environment variable that sets it
    flag: str | None = None          # command-line option, when it differs from the key
    metavar: str | None = None

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    def describe(self) -> str:
        """What it accepts, for messages."""
        if self.choices:
            return " or ".join(map(repr, self.choices))
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return self.shape or "a string"
        noun = "an integer" if self.kind is int else "a number"
        low, high = self.low, self.high
        if low is not None and high is not None:
            text = f"{noun} from {_num(low)} to {_num(high)}"
        elif low is not None:
            text = (f"a positive {noun.split()[-1]}" if low == 1 and self.kind is int
                    else f"{noun} of at least {_num(low)}")
        else:
            text = noun
        return text + "".join(f" or {w!r}" for w in self.words)

    def check(self, value: Any, where: str = "") -> Any:
        """``value`` (from Python, JSON or YAML) if valid, else a ConfigError naming it."""
        if value is None:
            if self.nullable:
                return None
            self._fail(value, where)
        if isinstance(value, str) and value in self.words:
            return value
        kind = self.kind
        if kind is bool:
            if not isinstance(value, bool):
                self._fail(value, where)
            return value
        if kind is str:
            ok = isinstance(value, str) and (not self.choices or value in self.choices) and \
                (self.pattern is None or re.fullmatch(self.pattern, value) is not None)
            if not ok:
                self._fail(value, where)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (kind is int and value != int(value)) or not math.isfinite(value):
            self._fail(value, where)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            self._fail(value, where)
        return kind(value)

    def parse(self, text: str, where: str = "") -> Any:
        """The value of ``text`` (a command line, ``%cloud config``, an environment variable)."""
        text = text.strip()
        if text in self.words:
            return text
        if self.nullable and text.lower() in ("", "none", "null"):
            return None
        value: Any = text
        if self.kind is bool:
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False,
                     "no": False}.get(text.lower(), text)
        elif self.kind in (int, float):
            try:
                value = float(text) if self.kind is float or "." in text else int(text)
            except ValueError:
                pass  # check() names the setting and what it takes
        return self.check(value, where)

    def argparse_type(self) -> Callable[[str], Any]:
        """For ``add_argument(type=...)``: argparse reports the message with the option."""
        def parse(text: str) -> Any:
            try:
                return self.parse(text)
            except ConfigError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        parse.__name__ = self.name  # argparse names the type in some messages
        return parse

    def _fail(self, value: Any, where: str) -> None:
        raise ConfigError(f"{where}{self.key} must be {self.describe()}, got {value!r}")


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def setting(default: Any, kind: type, help: str, **spec: Any) -> Any:
    """A dataclass field whose metadata is its ``Setting`` (the key is filled in below)."""
    return dataclasses.field(default=default,
                             metadata={"setting": dict(kind=kind, default=default, help=help, **spec)})


_NAME = dict(pattern=r"[A-Za-z0-9_-]{1,64}", shape="1-64 letters, digits, '-' or '_'")


@dataclasses.dataclass
class RunSettings:
    """How a map runs: what ``%%cloud`` options, ``Executor()`` and the panel set."""

    backend: str = setting("local", str, "where tasks run: local worker processes or AWS Lambda",
                           choices=BACKENDS, env="CLOUDBUTTON_BACKEND")
    workers: int | None = setting(None, int, "concurrency limit (local: processes, default the "
                                  "CPU count; Lambda: lambda.workers)", low=1, high=10_000,
                                  nullable=True, env="CLOUDBUTTON_WORKERS", metavar="N")
    memory_mb: int | None = setting(None, int, "memory limit of a worker in MB (default: 2048 "
                                    "locally, the function's on Lambda)", low=128, high=10_240,
                                    nullable=True, env="CLOUDBUTTON_MEMORY_MB", flag="--memory",
                                    metavar="MB")
    timeout: float | None = setting(None, float, "seconds each task may run (default 300; at "
                                    f"most {LAMBDA_MAX_TIMEOUT_S} on Lambda)", low=0.001,
                                    high=86_400, nullable=True, env="CLOUDBUTTON_TIMEOUT",
                                    metavar="S")
    chunksize: int | str = setting(1, int, "items per invocation, or auto (sized from measured "
                                   "durations)", low=1, words=("auto",),
                                   env="CLOUDBUTTON_CHUNKSIZE", metavar="N|auto")
    retries: int = setting(0, int, "re-runs of a task lost to an infrastructure error",
                           low=0, high=10, env="CLOUDBUTTON_RETRIES", metavar="N")
    cache: bool = setting(False, bool, "reuse the stored results of items computed before by "
                          "the same code (see the README: Result cache)", env="CLOUDBUTTON_CACHE")
    budget: float | None = setting(None, float, "USD a job may cost (as the cost model prices "
                                   "it; a local job at Lambda's prices): it stops once its "
                                   "projected total would pass this. Lambda jobs without one "
                                   "get lambda.budget", low=0, high=100_000, nullable=True,
                                   env="CLOUDBUTTON_BUDGET", metavar="USD")
    backups: bool = setting(True, bool, "send a backup invocation for a task 3x slower than "
                            "the median once half the job is done", env="CLOUDBUTTON_BACKUPS")


@dataclasses.dataclass
class LambdaConfig:
    """The worker function and how the host talks to it (the file's ``lambda:``)."""

    function_name: str = setting("cloudbutton-worker", str, "the worker Lambda function", **_NAME)
    role_name: str | None = setting(None, str, "its IAM role (default <function_name>-role)",
                                    pattern=r"[A-Za-z0-9_+=,@-][A-Za-z0-9_+=,.@-]{0,63}",
                                    shape="1-64 letters, digits or +=,.@_- (not starting with .)",
                                    nullable=True)
    layer_name: str | None = setting(None, str, "its package layer (default <function_name>-deps)",
                                     nullable=True, **_NAME)
    memory: int = setting(1024, int, "function memory in MB", low=128, high=10_240)
    timeout: int = setting(300, int, "function timeout in s", low=1, high=LAMBDA_MAX_TIMEOUT_S)
    architecture: str = setting("x86_64", str, "CPU architecture (arm64: Graviton); wheels are "
                                "chosen to match", choices=ARCHITECTURES)
    runtime_calendar: str = setting("enforce", str, "AWS's runtime calendar for zip functions: "
                                    "enforce refuses to deploy a runtime AWS blocks; waive warns "
                                    "instead (for endpoints that are not AWS, such as an emulator, "
                                    "or when AWS has moved the dates)", choices=RUNTIME_CALENDAR)
    workers: int = setting(100, int, "concurrent invocations per job", low=1, high=10_000)
    invoke_threads: int = setting(96, int, "threads sending invocations", low=1, high=1024)
    fast_invoke: bool = setting(True, bool, "signed HTTP invokes without botocore's per-call "
                                "overhead (boto3 is used anyway behind an HTTP(S)_PROXY)")
    invoke_timeout: float = setting(5.0, float, "s per invoke try (connect + answer), then "
                                    "retried", low=0.1, high=60)
    poll_interval: float = setting(0.2, float, "s between LISTs of a running job's statuses",
                                   low=0.01, high=60)
    deadline_grace: float = setting(20.0, float, "s after the timeout before the host declares "
                                    "a timeout", low=0, high=3600)
    lost_after: float = setting(30.0, float, "s before a silent invocation may be presumed lost",
                                low=0, high=3600)
    redeliveries: int = setting(2, int, "backup invocations per task for presumed-lost events",
                                low=0, high=10)
    throttle_retry_s: float = setting(120.0, float, "give up on a throttled invoke after this "
                                      "long", low=0, high=3600)
    # $1 is about 60,000 GB-seconds at 1 GB: 1,000 tasks of a minute. Far above what an
    # interactive notebook map costs (the quickstart: < $0.001), far below a runaway loop
    # (10,000 tasks of 15 min: about $150), and small enough to lose without noticing.
    budget: float = setting(1.0, float, "USD a Lambda job may cost when it sets no budget",
                            low=0, high=100_000)


@dataclasses.dataclass
class Config:
    """Everything the file holds, validated."""

    region: str | None = setting(None, str, "AWS region (else AWS_REGION or the profile's)",
                                 pattern=r"[a-z]{2}(-[a-z]+)+-\d{1,2}",
                                 shape="an AWS region name like eu-west-1", nullable=True)
    profile: str | None = setting(None, str, "AWS profile (else AWS_PROFILE or the default chain)",
                                  pattern=r"[A-Za-z0-9_.@+=:-]{1,128}",
                                  shape="an AWS profile name (letters, digits and _.@+=:-)",
                                  nullable=True)
    bucket: str | None = setting(None, str, "S3 bucket (default cloudbutton-<account>-<region>)",
                                 pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
                                 shape="an S3 bucket name (3-63 lowercase letters, digits, . and -)",
                                 nullable=True)
    prefix: str = setting("cloudbutton", str, "the key prefix of every object (and of the IAM "
                          "policy)", pattern=r"(?!(.*/)?\.\.?(/|$))[A-Za-z0-9!_.*'()-]+"
                          r"(/[A-Za-z0-9!_.*'()-]+)*",
                          shape="an S3 key prefix (letters, digits and !_.*'()- between /, "
                          "no . or .. part)")
    lambda_: LambdaConfig = dataclasses.field(default_factory=LambdaConfig)
    endpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # run defaults set by file or env
    path: str | None = None  # where it was read from (None: defaults only)

    @property
    def role_name(self) -> str:
        return self.lambda_.role_name or f"{self.lambda_.function_name}-role"[:64]

    @property
    def layer_name(self) -> str:
        return self.lambda_.layer_name or f"{self.lambda_.function_name}-deps"

    def session(self) -> boto3.session.Session:
        """A boto3 session from the standard credential chain (never from this file)."""
        import boto3

        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def resolved_region(self, session: Any = None) -> str:
        region = self.region or (session or self.session()).region_name
        if not region:
            raise ConfigError("no AWS region configured: set AWS_REGION, a profile region, or "
                              f"'region:' in {self.path or config_path()}")
        return str(region)

    def client(self, service: str, session: Any = None, **config_kwargs: Any) -> Any:
        from botocore.config import Config as BotoConfig

        session = session or self.session()
        return session.client(
            service, region_name=self.resolved_region(session),
            endpoint_url=self.endpoints.get(service),
            config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}, **config_kwargs))


def _settings(cls: type, section: str = "") -> dict[str, Setting]:
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("setting")
        if spec is not None:
            key = f"{section}{f.name}"
            out[key] = Setting(key=key, **spec)
    return out


RUN: dict[str, Setting] = _settings(RunSettings)
AWS: dict[str, Setting] = _settings(Config)
LAMBDA: dict[str, Setting] = _settings(LambdaConfig, "lambda.")
SETTINGS: dict[str, Setting] = {**RUN, **AWS, **LAMBDA}  # every setting, by dotted key

# Options of a single call (never saved): the same checks and messages as the settings.
OPTIONS: dict[str, Setting] = {s.key: s for s in (
    Setting("limit", int, 20, "how many jobs to list, newest first", low=1, high=1000,
            metavar="N"),
    Setting("job_id", str, None, "a job's id, as `%cloud jobs` shows it",
            pattern=protocol.JOB_ID_PATTERN, shape="a job id like 20260101-120000123-abcdef",
            metavar="JOB_ID"),
    Setting("label", str, None, "what the job list shows beside the job (the notebook's path)",
            pattern=r"[^\x00-\x1f\x7f]{1,512}", shape="1-512 printable characters",
            nullable=True),
    Setting("auto_batch_target_s", float, None, "how long one chunksize='auto' batch should "
            "run, in s (default: the backend's)", low=0.001, high=LAMBDA_MAX_TIMEOUT_S,
            nullable=True),
    # A data-driven map's (``map(fn, "s3://bucket/prefix/", obj_chunk_size=...)``)
    Setting("obj_chunk_size", int, None, "split each object into chunks of this many bytes "
            "(at line boundaries for text)", low=1, high=2 ** 50, nullable=True, metavar="BYTES"),
    Setting("obj_chunk_number", int, None, "split each object into this many chunks",
            low=1, high=100_000, nullable=True, metavar="N"),
)}


def run_defaults() -> dict[str, Any]:
    """The schema's defaults of the run settings."""
    return {k: s.default for k, s in RUN.items()}


def saved_run_defaults() -> dict[str, Any]:
    """The run defaults the config file (if there is one) and the environment set."""
    path = config_path()
    return from_dict(read_file(path), path if os.path.exists(path) else None,
                     env=os.environ).defaults


def check(key: str, value: Any, where: str = "") -> Any:
    """``value`` for the setting (or call option) ``key`` if valid, else a ConfigError
    naming it."""
    return (SETTINGS.get(key) or OPTIONS[key]).check(value, where)


def check_extra_args(value: Any, where: str = "") -> tuple[Any, ...] | dict[str, Any] | None:
    """``map(extra_args=...)``: positional arguments (a tuple or list) or keyword
    arguments (a dict with str keys) added to every call."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return value
    raise ConfigError(f"{where}extra_args must be a tuple of positional arguments or a dict of "
                      f"keyword arguments, got {type(value).__name__} {value!r:.80}")


def check_run(options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Run settings (a partial dict) checked one by one and together."""
    refuse_unknown(options, RUN, "run settings", where)
    out = {k: RUN[k].check(v, where) for k, v in options.items()}
    backend, timeout = out.get("backend"), out.get("timeout")
    if backend == "lambda" and timeout is not None and timeout > LAMBDA_MAX_TIMEOUT_S:
        raise ConfigError(f"{where}timeout must be at most {LAMBDA_MAX_TIMEOUT_S} s on Lambda, "
                          f"got {timeout!r}")
    return out


def parse_run(key: str, text: str, where: str = "") -> Any:
    """The run setting ``key`` from text; an unknown key is named with the known ones."""
    refuse_unknown({key: text}, RUN, "settings", where)
    return RUN[key].parse(text, where)


def refuse_unknown(data: Mapping[str, Any], known: Mapping[str, Setting | None], what: str,
                   where: str = "", section: str = "") -> None:
    """Raise a ConfigError naming the keys of ``data`` (in ``section``) not in ``known``."""
    unknown = [k for k in data if f"{section}{k}" not in known]
    if not unknown:
        return
    hint = ""
    if any(str(k).lower() in _SECRET_KEYS for k in unknown):
        hint = (" (credentials do not belong in the cloudbutton config: they come from the AWS "
                "chain: AWS_PROFILE, ~/.aws, environment, instance role)")
    names = ", ".join(f"{section}{k}" for k in unknown)
    raise ConfigError(f"{where}unknown {what}: {names}{hint}; known: "
                      f"{', '.join(k for k in known if k.startswith(section))}")


# Reading the file ------------------------------------------------------------------
def config_path() -> str:
    return os.path.expanduser(os.environ.get(CONFIG_ENV) or DEFAULT_PATH)


def from_dict(data: Any, path: str | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """A validated ``Config`` from the file's mapping (``env``: the environment whose
    CLOUDBUTTON_* variables override the file's run defaults; none by default)."""
    where = f"{path}: " if path else "config: "
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping at the top level, got {type(data).__name__}")
    top_keys = {**RUN, **AWS, "lambda": None, "endpoints": None}
    refuse_unknown(data, top_keys, "config keys", where)
    cfg = Config(path=path)
    for key, s in AWS.items():
        value = data.get(key)
        if value is not None:  # an empty entry in the file means the default
            setattr(cfg, key, s.check(value.strip("/") if key == "prefix" and
                                      isinstance(value, str) else value, where))
    lam = data.get("lambda") or {}
    if not isinstance(lam, dict):
        raise ConfigError(f"{where}lambda must be a mapping, got {type(lam).__name__}")
    refuse_unknown(lam, LAMBDA, "lambda keys", where, "lambda.")
    for key, value in lam.items():
        setattr(cfg.lambda_, key, LAMBDA[f"lambda.{key}"].check(value, where))
    cfg.endpoints = check_endpoints(data.get("endpoints"), where)
    cfg.defaults = check_run({k: v for k, v in data.items() if k in RUN and v is not None}, where)
    if env:
        cfg.defaults.update(env_run_settings(env))
    return cfg


def check_endpoints(value: Any, where: str = "") -> dict[str, str]:
    eps = value or {}
    if not isinstance(eps, dict):
        raise ConfigError(f"{where}endpoints must map service names to http(s) URLs")
    for service, url in eps.items():
        if service not in ENDPOINT_SERVICES:
            raise ConfigError(f"{where}endpoints.{service} is not a service "
                              f"({', '.join(ENDPOINT_SERVICES)})")
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise ConfigError(f"{where}endpoints.{service} must be an http(s) URL, got {url!r}")
    return dict(eps)


def env_run_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The run settings the environment sets (``CLOUDBUTTON_BACKEND=lambda``...)."""
    out = {}
    for key, s in RUN.items():
        if s.env and env.get(s.env) not in (None, ""):
            out[key] = s.parse(env[s.env], f"${s.env}: ")
    return check_run(out)


def validate(cfg: Config) -> Config:
    """Check a ``Config`` changed in Python (e.g. ``cloudbutton deploy --memory``)."""
    where = f"{cfg.path}: " if cfg.path else "config: "
    for key, s in AWS.items():
        s.check(getattr(cfg, key), where)
    for s in LAMBDA.values():
        s.check(getattr(cfg.lambda_, s.name), where)
    check_endpoints(cfg.endpoints, where)
    check_run(cfg.defaults, where)
    return cfg


def load(path: str | None = None) -> Config:
    """The config at ``path`` (or ``$CLOUDBUTTON_CONFIG``, or the default), with the
    environment's run settings over the file's; defaults if there is no file."""
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV))
    path = os.path.expanduser(path) if path else config_path()
    if not os.path.exists(path):
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return from_dict({}, env=os.environ)
    return from_dict(read_file(path), path, env=os.environ)


def load_or_defaults() -> Config:
    """The config file if there is one, else the defaults (never an error for a missing
    file): what the host's data access reads (region, profile, S3 endpoint)."""
    path = config_path()
    return from_dict(read_file(path), path if os.path.exists(path) else None, env=os.environ)


def read_file(path: str) -> Any:
    """The YAML (or JSON) mapping in ``path``, unchecked; {} if the file is absent."""
    if not os.path.exists(path):
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
