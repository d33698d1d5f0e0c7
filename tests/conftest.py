import os
import tempfile

import pytest

# Plugins contributed by the suites of each layer.
pytest_plugins = ["aws_fixtures"]


def pytest_configure(config):
    # Keep every test's jobs out of the user's cache dir.
    os.environ.setdefault("CLOUDBUTTON_STORAGE_DIR", tempfile.mkdtemp(prefix="cloudbutton-tests-"))


@pytest.fixture
def storage(tmp_path):
    from cloudbutton_executor.storage import LocalStorage

    return LocalStorage(str(tmp_path / "storage"))


@pytest.fixture
def ex(storage):
    from cloudbutton_executor import Executor

    with Executor(workers=2, storage=storage, timeout=60) as executor:
        yield executor


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto server over HTTP on 127.0.0.1 (S3, IAM, Lambda control plane)."""
    import socket

    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint):
    import uuid

    import boto3

    name = f"cb-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
