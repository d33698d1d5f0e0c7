"""The environment every test starts in (conftest.hermetic_environment): its own config
file and job cache, no AWS account unless it asks for the moto fixtures, and a temp dir
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


def test_the_moto_server_leaves_no_credentials_behind(moto_endpoint):
    # A session fixture: started once per run, but its credentials are not the run's.
    assert "AWS_ACCESS_KEY_ID" not in os.environ and "AWS_DEFAULT_REGION" not in os.environ


def test_aws_env_gives_the_dummy_credentials(aws_env):
    assert {k: os.environ[k] for k in HOST_CREDS} == HOST_CREDS


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
