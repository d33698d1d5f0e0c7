"""`cloudbutton clean --older-than` deletes exactly the jobs older than the duration
(job ids start with their UTC creation time), on S3 (a real moto server over HTTP)."""
import datetime
import io

import pytest

from aws_fixtures import REGION, write_config
from cloudbutton_executor import cli, protocol
from cloudbutton_executor.storage import S3Storage

PREFIX = "cleantest"


def job_id_aged(seconds: float, suffix: str) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    return f"{t:%Y%m%d-%H%M%S}{t.microsecond // 1000:03d}-{suffix}"


@pytest.fixture
def jobs(moto_endpoint, s3_bucket, tmp_path):
    """Jobs of known ages in a bucket, and a config that points the CLI at it."""
    config = write_config(tmp_path / "config.yaml", {
        "region": REGION, "bucket": s3_bucket, "prefix": PREFIX,
        "endpoints": {"s3": moto_endpoint, "lambda": moto_endpoint, "iam": moto_endpoint,
                      "sts": moto_endpoint}})
    storage = S3Storage(s3_bucket, region=REGION, endpoint_url=moto_endpoint)
    ages = {
        "20200101-000000-aaaaaa": None,  # years old, an id without milliseconds
        job_id_aged(8 * 86400, "bbbbbb"): 8 * 86400,
        job_id_aged(2 * 3600, "cccccc"): 2 * 3600,
        job_id_aged(30 * 60, "dddddd"): 30 * 60,
        protocol.new_job_id(): 0,
    }
    for job_id in ages:
        storage.put(protocol.manifest_key(PREFIX, job_id), b"{}")
        storage.put(protocol.status_key(PREFIX, job_id, "000000-000001"), b"{}")
    storage.put(f"{PREFIX}/jobs/not-a-job-id/keep.txt", b"x")  # never touched
    return config, storage, list(ages)


def clean(config, *args):
    out = io.StringIO()
    code = cli.main(["--config", config, "clean", *args], out=out)
    return code, out.getvalue()


def remaining(storage):
    return sorted(storage.children(f"{PREFIX}/jobs/"))


def test_older_than_deletes_only_older_jobs(jobs):
    config, storage, (ancient, week, two_hours, half_hour, new) = jobs
    everything = remaining(storage)

    code, out = clean(config, "--older-than", "1h", "--dry-run")
    assert code == 0
    assert {line.split()[2] for line in out.splitlines() if line.startswith("would delete")} == {
        ancient, week, two_hours}
    assert "3 job(s), 6 object(s) (dry run)" in out
    assert remaining(storage) == everything

    code, out = clean(config, "--older-than", "7d")
    assert code == 0 and "2 job(s), 4 object(s)" in out
    assert remaining(storage) == sorted([two_hours, half_hour, new, "not-a-job-id"])

    code, out = clean(config, "--older-than", "45m")
    assert code == 0 and f"deleted {two_hours} (2 objects)" in out
    assert remaining(storage) == sorted([half_hour, new, "not-a-job-id"])

    code, out = clean(config, "--older-than", "1d")
    assert code == 0 and "0 job(s), 0 object(s)" in out
    assert remaining(storage) == sorted([half_hour, new, "not-a-job-id"])
    assert storage.exists(f"{PREFIX}/jobs/not-a-job-id/keep.txt")


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("15m", 900), ("12h", 43200), ("2", 2 * 86400), ("1.5d", 1.5 * 86400),
    ("1w", 7 * 86400), (" 3 h ", 3 * 3600)])
def test_durations(text, seconds):
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5y", "-1d", "1 d h"])
def test_bad_durations_are_named(text):
    with pytest.raises(ValueError, match="--older-than"):
        cli.parse_duration(text)


def test_job_created_reads_the_id():
    assert protocol.job_created("20240102-030405678-abcdef") == datetime.datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc).timestamp()
    assert protocol.job_created("20240102-030405-abcdef") == protocol.job_created(
        "20240102-030405999-abcdef")
