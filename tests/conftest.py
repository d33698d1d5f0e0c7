import os
import tempfile

import pytest

# Plugins contributed by the suites of each layer.
pytest_plugins = ["aws_fixtures"]


def pytest_configure(config):
    # Keep every test's jobs out of the user's cache dir, and its host key out of ~/.cloudbutton.
    os.environ.setdefault("CLOUDBUTTON_STORAGE_DIR", tempfile.mkdtemp(prefix="cloudbutton-tests-"))
    os.environ.setdefault("CLOUDBUTTON_KEY_FILE", os.path.join(
        tempfile.mkdtemp(prefix="cloudbutton-key-"), "host.key"))


@pytest.fixture
def storage(tmp_path):
    from cloudbutton_executor.storage import LocalStorage

    return LocalStorage(str(tmp_path / "storage"))


@pytest.fixture
def ex(storage):
    from cloudbutton_executor import Executor

    with Executor(workers=2, storage=storage, timeout=60) as executor:
        yield executor

# moto_endpoint, s3_bucket and the Lambda emulator fixtures live in aws_fixtures.py.
