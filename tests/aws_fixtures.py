"""AWS without AWS: moto over HTTP, an S3 fault proxy, and the awslambdaric-based Lambda emulator.

Session fixtures (one moto server, one deploy, one warm emulator for the whole run):

- ``moto_endpoint``: ThreadedMotoServer on 127.0.0.1 (S3, IAM, STS, Lambda control plane).
- ``s3_proxy``: a forwarding proxy in front of moto's S3; set ``error_rate`` to inject 500/503.
- ``lambda_emulator``: the Lambda endpoint (invoke -> awslambdaric runtimes, rest -> moto).
- ``lambda_config``: a config file pointing at those endpoints (``$CLOUDBUTTON_CONFIG``).
- ``deployed``: ``cloudbutton deploy`` run once against it.
- ``lambda_ex``: an ``Executor(backend="lambda")`` with faults reset afterwards.

The host uses dummy credentials (HOST_CREDS); runtimes get other dummy values
(lambda_emulator.ROLE_ENV): the leak test searches for both.
"""
from __future__ import annotations

import contextlib
import os
import socket

import pytest

HOST_CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIAHOSTDUMMYKEY0001",
    "AWS_SECRET_ACCESS_KEY": "HostDummySecretKeyForTestsDoNotLeak00001",
}
REGION = "us-east-1"
BUCKET = "cb-lambda-tests"
PREFIX = "cbtest"
FUNCTION = "cb-worker"
CONCURRENCY = 6
# The host's AWS environment while a test talks to moto; set per test (``aws_env``) and
# restored after it, so tests that do not ask for AWS never see these credentials.
AWS_ENV = {**HOST_CREDS, "AWS_DEFAULT_REGION": REGION}


@contextlib.contextmanager
def aws_environment(extra: dict | None = None):
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(k, raising=False)
        for k, v in {**AWS_ENV, "AWS_CONFIG_FILE": os.devnull,
                     "AWS_SHARED_CREDENTIALS_FILE": os.devnull, **(extra or {})}.items():
            mp.setenv(k, v)
        yield


@pytest.fixture
def aws_env():
    with aws_environment():
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto server over HTTP on 127.0.0.1 (S3, IAM, STS, Lambda control plane)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, aws_env):
    import uuid

    import boto3

    name = f"cb-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_proxy(moto_endpoint):
    from lambda_emulator import ForwardingProxy

    proxy = ForwardingProxy(moto_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def lambda_emulator(moto_endpoint, tmp_path_factory):
    from lambda_emulator import LambdaEmulator

    emu = LambdaEmulator(moto_endpoint, str(tmp_path_factory.mktemp("lambda-emulator")),
                         region=REGION, concurrency=CONCURRENCY)
    yield emu
    emu.close()


def config_dict(moto_endpoint, s3_url, lambda_url, **lambda_overrides) -> dict:
    lam = {"function_name": FUNCTION, "memory": 512, "timeout": 30, "workers": CONCURRENCY,
           "invoke_threads": 16, "poll_interval": 0.1, "deadline_grace": 3, "lost_after": 1.5,
           "redeliveries": 5, "throttle_retry_s": 60}
    lam.update(lambda_overrides)
    return {"region": REGION, "bucket": BUCKET, "prefix": PREFIX, "lambda": lam,
            "endpoints": {"s3": s3_url, "lambda": lambda_url, "iam": moto_endpoint,
                          "sts": moto_endpoint}}


def write_config(path, data) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


@pytest.fixture(scope="session")
def lambda_config_file(moto_endpoint, s3_proxy, lambda_emulator, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cbconfig") / "config.yaml",
                        config_dict(moto_endpoint, s3_proxy.url, lambda_emulator.url))


@pytest.fixture
def lambda_config(lambda_config_file, aws_env, monkeypatch):
    """The emulator's config file, as ``$CLOUDBUTTON_CONFIG`` for this test only."""
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", lambda_config_file)
    return lambda_config_file


@pytest.fixture(scope="session")
def first_deploy(lambda_config_file):
    from cloudbutton_executor import config
    from cloudbutton_executor.backends.aws_lambda import deploy

    with aws_environment():
        return deploy(config.load(lambda_config_file))


@pytest.fixture
def deployed(first_deploy, aws_env):
    """The first deploy's actions (``cloudbutton deploy`` against moto, once per run)."""
    return first_deploy


@pytest.fixture
def lambda_ex(deployed, lambda_config, lambda_emulator, s3_proxy):
    from cloudbutton_executor import Executor

    from lambda_emulator import Faults

    lambda_emulator.reset(Faults())
    s3_proxy.error_rate = 0.0
    ex = Executor(backend="lambda", config_path=lambda_config, timeout=20)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)
    lambda_emulator.reset(Faults())
    s3_proxy.error_rate = 0.0
