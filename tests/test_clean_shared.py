"""`cloudbutton clean` also deletes the function blobs and large values (content-addressed,
shared between jobs) that no remaining job names, and never one a kept job or a job being
submitted still needs: real jobs on local worker processes, their objects on local storage
(through the CLI) and on S3 (a real moto server over HTTP)."""
import io
import os
import time

import numpy as np
import pytest

from aws_fixtures import REGION, write_config
from cloudbutton_executor import Executor, cleanup, cli, largevalues, protocol
from cloudbutton_executor.storage import LocalStorage, S3Storage

BIG_A = np.full(protocol.LARGE_VALUE_BYTES // 8 + 1, 1.0)
BIG_B = np.full(protocol.LARGE_VALUE_BYTES // 8 + 1, 2.0)
HOURS_AGO = time.time() - 2 * 3600


def reads_a(i):
    return len(BIG_A) + i


def reads_a_and_b(i):
    return float(BIG_A[0] + BIG_B[0])


def value_key(prefix, blob_value):
    import pickle

    return protocol.value_key(prefix, largevalues.integrity.sha256(
        pickle.dumps(blob_value, pickle.HIGHEST_PROTOCOL)))


def content(st, prefix):
    return set(st.list(protocol.functions_prefix(prefix))) | set(st.list(protocol.values_prefix(prefix)))


def age_everything(st):
    for dirpath, _dirs, files in os.walk(st.root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (HOURS_AGO, HOURS_AGO))


def clean(*args):
    out = io.StringIO()
    assert cli.main(["clean", "--local", *args], out=out) == 0
    return out.getvalue()


@pytest.fixture
def local_jobs(tmp_path, monkeypatch):
    """Two finished jobs on local storage (the CLI's --local root): one reads value A,
    the other A and B; every object made two hours old."""
    root = str(tmp_path / "store")
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", root)
    st = LocalStorage(root)
    with Executor(workers=1, storage=st, timeout=60) as ex:
        job_a = ex.map(reads_a, [1])
        job_ab = ex.map(reads_a_and_b, [1])
        assert job_a.result(timeout=60) == [len(BIG_A) + 1]
        assert job_ab.result(timeout=60) == [3.0]
        fn_a, fn_ab = job_a.function_key, job_ab.function_key
    val_a, val_b = value_key(ex.prefix, BIG_A), value_key(ex.prefix, BIG_B)
    assert content(st, ex.prefix) == {fn_a, fn_ab, val_a, val_b}
    orphan = largevalues.stash(st, ex.prefix, b"\x80\x05K\x07.").key  # no job names it
    age_everything(st)
    return st, ex.prefix, job_a, job_ab, dict(fn_a=fn_a, fn_ab=fn_ab, a=val_a, b=val_b, orphan=orphan)


def test_clean_deletes_only_what_no_remaining_job_names(local_jobs):
    st, prefix, job_a, job_ab, k = local_jobs
    # --older-than that keeps both jobs: only the old orphan goes.
    out = clean("--older-than", "1d", "--dry-run")
    assert f"would delete {k['orphan']}" in out and content(st, prefix) == set(k.values())
    out = clean("--older-than", "1d")
    assert "0 job(s)" in out and f"deleted {k['orphan']}" in out
    assert content(st, prefix) == {k["fn_a"], k["fn_ab"], k["a"], k["b"]}

    # Job A goes: its function blob too, but not value A (job AB's blob names it).
    out = clean("--job", job_a.job_id)
    assert f"deleted {k['fn_a']}" in out and "1 function blob(s)" in out
    assert content(st, prefix) == {k["fn_ab"], k["a"], k["b"]}

    # A new job starting with job AB's function: it refreshes the old function blob and
    # both values before its manifest exists. Here both jobs are deleted at once, as if
    # cleaned before the new manifest landed: what the new job names is young, so kept.
    with Executor(workers=1, storage=st, timeout=60) as ex:
        assert ex.map(reads_a_and_b, [2]).result(timeout=60) == [3.0]
    out = clean("--older-than", "0s")
    assert "2 job(s)" in out and "0 function blob(s)" in out
    assert content(st, prefix) == {k["fn_ab"], k["a"], k["b"]}

    # Past the grace period nothing names them any more.
    age_everything(st)
    assert "3 function blob(s) and large value(s)" in clean("--older-than", "0s")
    assert content(st, prefix) == set()


def test_on_s3_unreferenced_objects_are_found_and_young_ones_kept(moto_endpoint, s3_bucket, tmp_path):
    st = S3Storage(s3_bucket, region=REGION, endpoint_url=moto_endpoint)
    with Executor(workers=1, storage=st, timeout=60, prefix="cl") as ex:
        job_a = ex.map(reads_a, [1])
        job_ab = ex.map(reads_a_and_b, [1])
        assert job_a.result(timeout=60) == [len(BIG_A) + 1] and job_ab.result(timeout=60) == [3.0]
    later = time.time() + protocol.CONTENT_GRACE_S + 60  # S3 dates are the server's: look ahead
    assert cleanup.unreferenced(st, "cl") == []  # everything is young
    assert cleanup.unreferenced(st, "cl", now=later) == []  # and named by a job
    assert cleanup.unreferenced(st, "cl", excluding=[job_a.job_id], now=later) == [job_a.function_key]
    assert sorted(cleanup.unreferenced(st, "cl", excluding=[job_a.job_id, job_ab.job_id], now=later)) \
        == sorted([job_a.function_key, job_ab.function_key, value_key("cl", BIG_A), value_key("cl", BIG_B)])

    # Through the CLI on S3: jobs go, young shared objects stay (a job may be starting).
    config = write_config(tmp_path / "config.yaml", {
        "region": REGION, "bucket": s3_bucket, "prefix": "cl",
        "endpoints": {"s3": moto_endpoint, "lambda": moto_endpoint, "iam": moto_endpoint,
                      "sts": moto_endpoint}})
    out = io.StringIO()
    assert cli.main(["--config", config, "clean", "--older-than", "0s"], out=out) == 0
    assert "2 job(s)" in out.getvalue() and "0 function blob(s)" in out.getvalue()
    assert len(content(st, "cl")) == 4
    assert cleanup.unreferenced(st, "cl", now=later) and len(cleanup.unreferenced(st, "cl", now=later)) == 4
