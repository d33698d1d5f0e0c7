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


# Wheels the tests download (the emulator's runtime, the layers deploy builds) are kept
# here, git-ignored: the first run on a fresh clone downloads, later ones build offline.
CACHE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "lambda")
WHEEL_CACHE = os.path.join(CACHE_ROOT, "wheels")


# The host's AWS environment while a test talks to moto. Set for each test that uses moto
# (_aws_environment_for_moto_users) and restored after it, never for the whole session:
# a test that does not use moto sees no credentials.
AWS_ENV = {**HOST_CREDS, "AWS_DEFAULT_REGION": REGION}


@contextlib.contextmanager
def aws_environment():
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(k, raising=False)
        for k, v in {**AWS_ENV, "AWS_CONFIG_FILE": os.devnull,
                     "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
            mp.setenv(k, v)
        if "CLOUDBUTTON_WHEEL_CACHE" not in os.environ:
            mp.setenv("CLOUDBUTTON_WHEEL_CACHE", WHEEL_CACHE)
        yield


@pytest.fixture(autouse=True)
def _aws_environment_for_moto_users(request, hermetic_environment):
    """AWS_ENV for the tests that use moto (directly or through another fixture), and
    ``$CLOUDBUTTON_CONFIG`` pointing at the emulator's config for those that use it."""
    if "moto_endpoint" not in request.fixturenames:
        yield
        return
    with aws_environment(), pytest.MonkeyPatch.context() as mp:
        if "lambda_config" in request.fixturenames:
            mp.setenv("CLOUDBUTTON_CONFIG", request.getfixturevalue("lambda_config"))
        yield


def start_moto():
    """A ThreadedMotoServer on a port the OS chose and that stays bound (no race)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def emulator_runtime():
    """(runtime name, its runtime dir) for the host's Python."""
    from cloudbutton_executor.packaging import runtime_for_host

    from lambda_emulator import build_runtime_dir

    runtime = runtime_for_host()
    return runtime, build_runtime_dir(runtime, CACHE_ROOT)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto server over HTTP on 127.0.0.1 (S3, IAM, STS, Lambda control plane)."""
    server, url = start_moto()
    yield url
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint):
    import uuid

    import boto3

    name = f"cb-test-{uuid.uuid4().hex[:10]}"
    with aws_environment():  # also when requested late (getfixturevalue), after the autouse one
        boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION).create_bucket(Bucket=name)
        yield name


@pytest.fixture(scope="session")
def s3_proxy(moto_endpoint):
    from lambda_emulator import ForwardingProxy

    proxy = ForwardingProxy(moto_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def lambda_emulator(moto_endpoint):
    import shutil
    import tempfile

    from lambda_emulator import LambdaEmulator

    runtime, runtime_dir = emulator_runtime()
    root = tempfile.mkdtemp(prefix="cb-lambda-emulator-")
    emu = LambdaEmulator(moto_endpoint, root, runtime_dir, runtime, region=REGION,
                         concurrency=CONCURRENCY)
    yield emu
    emu.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _emulator_errors_fail_the_test(request):
    """Anything unexpected inside the emulator (a slot's exception, a runtime dying on
    its own) fails the test during which it happened."""
    if "lambda_emulator" not in request.fixturenames:
        yield
        return
    emu = request.getfixturevalue("lambda_emulator")
    emu.take_errors()
    yield
    errors = emu.take_errors()
    if errors:
        pytest.fail("the Lambda emulator reported:\n" + "\n---\n".join(errors), pytrace=False)


def config_dict(moto_endpoint, s3_url, lambda_url, **lambda_overrides) -> dict:
    from lambda_emulator import RUNTIME_CALENDAR

    lam = {"function_name": FUNCTION, "memory": 512, "timeout": 30, "workers": CONCURRENCY,
           "invoke_threads": 16, "poll_interval": 0.1, "deadline_grace": 3, "lost_after": 1.5,
           "redeliveries": 5, "throttle_retry_s": 60,
           "runtime_calendar": RUNTIME_CALENDAR}  # the emulator is not AWS (see lambda_emulator)
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
def lambda_config(moto_endpoint, s3_proxy, lambda_emulator, tmp_path_factory):
    """The emulator's config file; ``$CLOUDBUTTON_CONFIG`` during each test that uses it."""
    return write_config(tmp_path_factory.mktemp("cbconfig") / "config.yaml",
                        config_dict(moto_endpoint, s3_proxy.url, lambda_emulator.url))


@pytest.fixture(scope="session")
def deployed(lambda_config):
    """The first deploy's actions (``cloudbutton deploy`` against moto)."""
    from cloudbutton_executor import config
    from cloudbutton_executor.backends.aws_lambda import deploy

    with aws_environment():  # session-scoped: set up before the test's own environment
        return deploy(config.load(lambda_config))


@pytest.fixture
def lambda_ex(deployed, lambda_config, lambda_emulator, s3_proxy):
    from cloudbutton_executor import Executor

    from lambda_emulator import Faults

    lambda_emulator.reset(Faults())
    s3_proxy.reset()
    ex = Executor(backend="lambda", config_path=lambda_config, timeout=20)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)
    lambda_emulator.reset(Faults())
    s3_proxy.reset()
