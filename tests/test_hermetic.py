"""The environment every test starts in (conftest.hermetic_environment): its own config
file and job cache, no AWS account unless it uses the moto fixtures, and a temp dir
that the run removes at its end."""
import os
import tempfile

import hermetic
from aws_fixtures import HOST_CREDS


def test_no_aws_account_unless_asked():
    for var in hermetic.AWS_ACCOUNT_VARS:
        assert var not in os.environ, var
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull


def test_tests_that_use_moto_get_the_dummy_credentials(moto_endpoint):
    # For this test only: the server is the session's, its credentials are not.
    assert {k: os.environ[k] for k in HOST_CREDS} == HOST_CREDS
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"


def test_config_and_job_cache_are_the_tests_own(tmp_path):
    from cloudbutton_executor.storage import LocalStorage
    from cloudbutton_jupyter.manager import CloudManager

    assert os.environ["CLOUDBUTTON_CONFIG"].startswith(str(tmp_path))
    assert LocalStorage().root.startswith(str(tmp_path))
    assert CloudManager().config_file.startswith(str(tmp_path))


def test_temp_files_go_to_the_runs_directory():
    run_dir = os.environ["TMPDIR"]
    assert os.path.basename(run_dir).startswith("cloudbutton-testrun-")
    assert tempfile.gettempdir() == run_dir
