"""What the Jupyter panel sees through CloudManager, value by value: a job's detail (tasks,
failures, tracebacks and stdout cut to their limits, re-runs), the job list and what
polling it costs in requests, the backend's status, and where the config is read from.
Jobs are real ones (local workers), or stored as an older or dead host leaves them."""
from __future__ import annotations

import json
import os
import time

import pytest

from cloudbutton_executor import integrity, protocol
from cloudbutton_executor.storage import LocalStorage
from cloudbutton_jupyter.manager import (
    TRACEBACK_LIMIT, CloudManager, Conflict, InvalidInput, JobNotFound)

TAIL = "the end of what item 1 printed"


def mixed(x, died):
    """Item 1 fails with a long traceback after printing a lot; item 4 fails silently;
    item 6's worker dies on its first attempt (retried)."""
    import os

    if x == 6 and not os.path.exists(died):
        open(died, "w").close()
        os._exit(3)
    if x == 1:
        print("a" * 2400 + TAIL)
        raise ValueError("m" * 9000 + " bad one")
    if x == 4:
        raise KeyError(x)
    print(f"item {x}")
    return x


def stored_statuses(storage, job_id, prefix="cloudbutton"):
    keys = storage.list(protocol.tasks_prefix(prefix, job_id))
    return {protocol.task_id_from_status_key(k): json.loads(storage.get(k))
            for k in keys if protocol.task_id_from_status_key(k)}


def stored_manifest(storage, job_id):
    return integrity.unsealed(storage.get(protocol.manifest_key("cloudbutton", job_id)))


def relative_times(stats, created):
    return {k: (stats[k] - created if isinstance(stats.get(k), (int, float)) else None)
            for k in ("host_submit", "worker_start", "setup_done", "compute_done",
                      "result_stored")}


def test_the_detail_shows_each_task_and_failure_as_its_status_stored_them(ex, storage, tmp_path):
    job = ex.map(mixed, range(7), chunksize=3, retries=1, extra_args=(str(tmp_path / "died"),))
    job.wait(60)
    detail = CloudManager(storage=storage).job_detail(job.job_id)
    statuses = stored_statuses(storage, job.job_id)
    created = stored_manifest(storage, job.job_id)["created"]
    assert detail["created"] == created
    assert detail["manifest"] == stored_manifest(storage, job.job_id)

    rows = detail["tasks_detail"]
    assert [r["task"] for r in rows] == ["000000-000003", "000003-000006", "000006-000007"]
    for row in rows:
        st = statuses[row["task"]]
        stats = st["stats"]
        assert row["t"] == relative_times(stats, created)
        assert (row["cold_start"], row["peak_mem_mb"], row["requests"]) == (
            stats["cold_start"], stats["peak_mem_mb"], stats["requests"])
        assert row["infra"] is None
    assert [(r["items"], r["state"], r["ok"], r["failed"], r["attempt"]) for r in rows] == [
        ([0, 3], "error", 2, 1, 0), ([3, 6], "error", 2, 1, 0), ([6, 7], "done", 1, 0, 1)]
    shown = {d["i"]: d for r in rows for d in r["item_detail"]}
    printed = "a" * 2400 + TAIL + "\n"
    assert shown[1] == {"i": 1, "input": "1", "stdout": printed[-2000:]}
    assert shown[4] == {"i": 4, "input": "4", "stdout": ""}  # failed without printing
    assert shown[6] == {"i": 6, "input": "6", "stdout": "item 6\n"}

    one, four = detail["failures"]
    traceback_1 = protocol.item_errors(statuses["000000-000003"])[1]["traceback"]
    assert len(traceback_1) > TRACEBACK_LIMIT  # the message is in it, and longer
    assert one == {"i": 1, "task": "000000-000003", "type": "ValueError",
                   "message": "m" * 2000, "kind": None,  # the worker keeps 2,000 characters
                   "traceback": traceback_1[-TRACEBACK_LIMIT:], "stdout": printed[-2000:]}
    assert len(one["traceback"]) == TRACEBACK_LIMIT
    assert one["traceback"].endswith("m" * 7000 + " bad one\n")
    assert four["i"] == 4 and four["task"] == "000003-000006" and four["type"] == "KeyError"
    assert four["message"] == "4" and four["stdout"] == "" and four["kind"] is None
    assert four["traceback"] == protocol.item_errors(statuses["000003-000006"])[4]["traceback"]
    assert four["traceback"].endswith("raise KeyError(x)\nKeyError: 4\n")


def sleeps_on_one(x):
    import time

    if x == 1:
        time.sleep(30)
    return x


def test_a_task_the_host_ended_shows_its_infrastructure_error(ex, storage):
    job = ex.map(sleeps_on_one, range(2), timeout=1)
    job.wait(60)
    detail = CloudManager(storage=storage).job_detail(job.job_id)
    statuses = stored_statuses(storage, job.job_id)
    created = stored_manifest(storage, job.job_id)["created"]
    infra = statuses["000001-000002"]["infra"]
    assert infra["type"] == "TaskTimeoutError" and infra["kind"] == "timeout"
    ok_row, timed_out = detail["tasks_detail"]
    assert ok_row["state"] == "done" and ok_row["infra"] is None
    assert timed_out == {
        "task": "000001-000002", "items": [1, 2], "state": "error", "ok": 0, "failed": 1,
        "attempt": 0, "cold_start": None, "peak_mem_mb": None, "requests": None,
        "infra": infra, "t": relative_times(statuses["000001-000002"]["stats"], created),
        "item_detail": [{"i": 1, "input": "1", "stdout": ""}]}
    assert timed_out["t"]["host_submit"] > 0 and timed_out["t"]["worker_start"] is None
    assert detail["failures"] == [{
        "i": 1, "task": "000001-000002", "type": "TaskTimeoutError", "message": infra["message"],
        "kind": "timeout", "traceback": "", "stdout": ""}]


def flaky(x, fixed):
    import os

    if x % 2 and not os.path.exists(fixed):
        raise ValueError(f"bad {x}")
    return x


def counted(storage):
    """A second reader of the same directory, whose requests are the manager's only."""
    return LocalStorage(storage.root)


def delta(store, before):
    now = store.request_counts
    return {k: now.get(k, 0) - before.get(k, 0) for k in set(now) | set(before)
            if now.get(k, 0) != before.get(k, 0)}


def test_a_detail_finds_its_reruns_and_rereads_nothing_it_read_once(ex, storage, tmp_path):
    fixed = tmp_path / "fixed"
    job = ex.map(flaky, range(4), extra_args=(str(fixed),))
    job.wait(30)
    # A job being created between the failed job and its re-run: no manifest yet, only
    # the inputs it will show (written first).
    creating = job.job_id[:-6] + "ffffff"
    storage.put(protocol.inputs_shown_key("cloudbutton", creating), b"[]")
    fixed.write_text("")
    again = job.rerun_failed()
    again.wait(30)
    job.wait(30)
    other = ex.map(abs, [-1])
    other.result(timeout=30)
    link = {"job_id": again.job_id, "state": "done", "outcome": "all succeeded",
            "text": f"failed → re-run as {again.job_id}: all succeeded"}

    store = counted(storage)
    manager = CloudManager(storage=store)
    before = store.request_counts
    detail = manager.job_detail(job.job_id)  # nothing read before: the re-run is found
    assert detail["rerun_by"] == link and detail["state"] == "failed"
    # GETs: its manifest, inputs and cancel marker, its 4 statuses, the manifests of the
    # three newer jobs (one being created), the re-run's 2 statuses and cancel marker.
    # LISTs: its statuses (for the detail, and for its summary), the jobs, the re-run's.
    assert delta(store, before) == {"GET": 3 + 4 + 3 + 2 + 1, "LIST": 2 + 1 + 1}
    before = store.request_counts
    assert manager.job_detail(job.job_id)["rerun_by"] == link
    # Again: statuses, inputs and the newer manifests are not read again (only the one
    # being created, which may have one now), nor the re-run's statuses.
    assert delta(store, before) == {"GET": 2 + 1 + 1, "LIST": 2 + 1 + 1}

    fresh = CloudManager(storage=store)
    rows = fresh.list_jobs()
    assert [r["job_id"] for r in rows] == [other.job_id, again.job_id, job.job_id]
    assert rows[2]["rerun_by"] == link
    before = store.request_counts
    assert fresh.list_jobs() == rows
    # All finished, the failed one too: nothing of theirs is read again (the job being
    # created may have a manifest now).
    assert delta(store, before) == {"LIST": 1, "GET": 1}
    before = store.request_counts
    assert fresh.job_detail(job.job_id)["rerun_by"] == link
    # The listing read the statuses and manifests: its manifest, inputs and cancel marker,
    # the being-created job's manifest and the re-run's cancel marker.
    assert delta(store, before) == {"GET": 3 + 1 + 1, "LIST": 2 + 1 + 1}


def put_json(storage, key, doc):
    storage.put(key, json.dumps(doc).encode())


def plant_manifest(storage, job_id, created, n_items=3, timeout=3600, **more):
    put_json(storage, protocol.manifest_key("cloudbutton", job_id), {
        "job_id": job_id, "created": created, "n_items": n_items, "timeout": timeout,
        "memory_mb": 1024, "backend": "local", "function": "f", "label": None, **more})


def test_a_job_whose_host_died_is_lost_by_its_dispatch_record(tmp_path):
    storage = LocalStorage(str(tmp_path / "s"))
    now = time.time()
    dead, older = "20300101-000000000-aaaaaa", "20290101-000000000-aaaaaa"
    plant_manifest(storage, dead, now - 600)
    # Its host wrote the record last ten minutes ago; what it sent is past its deadline.
    put_json(storage, protocol.dispatch_key("cloudbutton", dead),
             {"job_id": dead, "updated": now - 600, "deadline": now - 500})
    plant_manifest(storage, older, now - 600)  # no record: an older version, still within
    manager = CloudManager(storage=storage)
    rows = manager.list_jobs()
    assert [(r["job_id"], r["state"]) for r in rows] == [(dead, "lost"), (older, "running")]
    assert rows[0]["counts"]["lost"] == 3
    assert manager.job_detail(dead)["state"] == "lost"


def test_statuses_missing_their_fields_are_shown_with_defaults(tmp_path):
    """The manager reads statuses unverified (it holds no job key): one written by hand or
    tampered with, as a version-1 list of item records with fields left out, is shown
    with defaults rather than refused."""
    storage = LocalStorage(str(tmp_path / "s"))
    job_id = "20300101-000000000-abcdef"
    plant_manifest(storage, job_id, 100.0)
    for tid, status in {
        "000000-000001": {"items": [{"i": 0, "ok": True, "stdout": "hi\n"}]},
        "000001-000002": {"state": "error", "items": [{"i": 1, "ok": False}]},
        "000002-000003": {"infra": {"type": "WorkerDiedError", "kind": "died",
                                    "message": "gone"}, "items": []},
    }.items():
        put_json(storage, protocol.status_key("cloudbutton", job_id, tid), {"task": tid, **status})
    # A manifest without its item count: listed (nothing is pending), not an error.
    bare = "20300101-000000001-abcdef"
    put_json(storage, protocol.manifest_key("cloudbutton", bare), {"job_id": bare, "created": 1.0})
    manager = CloudManager(storage=storage)
    assert [(r["job_id"], r["state"], r["n_items"]) for r in manager.list_jobs()] == [
        (bare, "done", 0), (job_id, "failed", 3)]
    detail = manager.job_detail(job_id)
    no_times = dict.fromkeys(("host_submit", "worker_start", "setup_done", "compute_done",
                              "result_stored"))
    assert [(r["task"], r["state"], r["ok"], r["failed"], r["attempt"], r["t"])
            for r in detail["tasks_detail"]] == [
        ("000000-000001", "done", 1, 0, 0, no_times), ("000001-000002", "error", 0, 1, 0, no_times),
        ("000002-000003", "error", 0, 1, 0, no_times)]
    assert detail["tasks_detail"][0]["item_detail"] == [{"i": 0, "input": None, "stdout": "hi\n"}]
    assert detail["failures"] == [
        {"i": 1, "task": "000001-000002", "type": "Error", "message": "", "kind": None,
         "traceback": "", "stdout": ""},
        {"i": 2, "task": "000002-000003", "type": "WorkerDiedError", "message": "gone",
         "kind": "died", "traceback": "", "stdout": ""}]


def test_polling_a_running_job_reads_its_manifest_once(tmp_path):
    storage = LocalStorage(str(tmp_path / "s"))
    running = "20300101-000000000-bbbbbb"
    plant_manifest(storage, running, time.time())
    creating = "20300101-000000001-cccccc"  # newest, no manifest yet: skipped, not the end
    storage.put(protocol.inputs_shown_key("cloudbutton", creating), b"[]")
    manager = CloudManager(storage=storage)
    (row,) = manager.list_jobs()
    assert row["job_id"] == running and row["state"] == "running"
    before = storage.request_counts
    assert [(r["job_id"], r["state"]) for r in manager.list_jobs()] == [(running, "running")]
    # The jobs and its statuses listed; the being-created job's manifest, and the running
    # job's cancel marker and dispatch record: its manifest is not read again.
    assert delta(storage, before) == {"LIST": 2, "GET": 3}


def test_the_list_shows_the_newest_thirty_by_default(tmp_path):
    storage = LocalStorage(str(tmp_path / "s"))
    ids = [f"20300101-0000{k:02d}000-dddddd" for k in range(31)]
    for job_id in ids:
        plant_manifest(storage, job_id, time.time())
    rows = CloudManager(storage=storage).list_jobs()
    assert [r["job_id"] for r in rows] == ids[::-1][:30]


def test_the_local_backends_status_names_its_workers_and_storage(tmp_path, monkeypatch):
    storage = LocalStorage(str(tmp_path / "s"))
    manager = CloudManager(storage=storage, config_file=str(tmp_path / "c.yaml"))
    assert manager.backend_status() == {
        "backend": "local", "ok": True, "workers": os.cpu_count(), "storage": storage.describe(),
        "message": f"local worker processes ({os.cpu_count()})"}
    manager.put_config({"workers": 3})
    assert manager.backend_status("local") == {
        "backend": "local", "ok": True, "workers": 3, "storage": storage.describe(),
        "message": "local worker processes (3)"}
    with pytest.raises(InvalidInput) as info:
        manager.backend_status("gcp")
    assert str(info.value) == "backend must be 'local' or 'lambda', got 'gcp'"


def test_lambda_without_credentials_shows_the_backends_status_or_why_there_is_none(tmp_path):
    from cloudbutton_executor.backends.aws_lambda import lambda_status

    manager = CloudManager(storage=LocalStorage(str(tmp_path / "s")),
                           config_file=str(tmp_path / "c.yaml"))
    manager.put_config({"region": "eu-west-1", "bucket": "my-bucket"})
    own = lambda_status(manager.config_file)
    out = manager.backend_status("lambda")
    # The backend's own status (the function's default name: the file names none), built
    # from the panel's subset of the file rather than from a path.
    assert out == {**own, "config": None}
    assert (out["backend"], out["ok"], out["credentials"], out["deployed"]) == (
        "lambda", False, False, None)
    assert out["function"] == "cloudbutton-worker" and out["bucket"] == "my-bucket"
    assert out["message"] == ("no AWS credentials found (set AWS_PROFILE or configure "
                              "~/.aws/credentials)")
    # No bucket: the backend cannot even be made; the panel's settings and why.
    manager.put_config({"region": "eu-west-1", "lambda": {"function_name": "fn"}})
    assert manager.backend_status("lambda") == {
        "backend": "lambda", "ok": False, "region": "eu-west-1", "bucket": None,
        "function": "fn", "error": "NoCredentialsError: Unable to locate credentials"}


def test_the_lambda_backend_is_kept_while_the_files_settings_are_unchanged(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backend: lambda\nregion: eu-west-1\nbucket: my-bucket\n"
                    "lambda: {memory: 512, function_name: fn}\n")
    manager = CloudManager(config_file=str(path))
    store = manager.storage()
    assert store.bucket == "my-bucket" and manager.storage() is store
    # The same settings written in another order (by hand, or by another tool).
    path.write_text("lambda: {function_name: fn, memory: 512}\nbucket: my-bucket\n"
                    "region: eu-west-1\nbackend: lambda\n")
    assert manager.storage() is store
    path.write_text("backend: lambda\nregion: eu-west-1\nbucket: my-bucket\n"
                    "lambda: {memory: 1024, function_name: fn}\n")
    assert manager.storage() is not store


def test_a_setting_yaml_reads_as_a_date_is_refused_by_its_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("region: eu-west-1\nbucket: 2024-01-01\n")
    manager = CloudManager(storage=LocalStorage(str(tmp_path / "s")), config_file=str(path))
    assert manager.get_config()["warning"] == (
        f"{path}: bucket must be an S3 bucket name (3-63 lowercase letters, digits, . and -), "
        "got datetime.date(2024, 1, 1); showing the defaults")
    assert manager.backend_status("lambda") == {
        "backend": "lambda", "ok": False, "region": None, "bucket": None, "function": None,
        "error": "ConfigError: config: bucket must be an S3 bucket name (3-63 lowercase "
                 "letters, digits, . and -), got datetime.date(2024, 1, 1)"}


def test_an_unreadable_config_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("workers: [unclosed\n")
    manager = CloudManager(storage=LocalStorage(str(tmp_path / "s")), config_file=str(path))
    with pytest.raises(InvalidInput) as info:
        manager.get_config()
    assert str(info.value).startswith(f"cannot read the config file {path}: ")
    assert len(str(info.value)) > len(f"cannot read the config file {path}: ")


def test_a_bare_config_file_name_is_saved_in_the_working_directory_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manager = CloudManager(storage=LocalStorage(str(tmp_path / "s")), config_file="c.yaml")
    manager.put_config({"retries": 1})
    assert set(os.listdir(tmp_path)) - {"hermetic"} == {"c.yaml"}  # (the test's own dir)


def test_a_warning_names_the_file_the_lambda_backend_cannot_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lambda: {nonsense: 1}\n")
    manager = CloudManager(storage=LocalStorage(str(tmp_path / "s")), config_file=str(path))
    out = manager.put_config({"backend": "local"})
    assert out["warning"].startswith("saved, but the Lambda backend cannot read the file: ")
    assert str(path) in out["warning"]


# The Lambda backend against moto (S3 and Lambda's control plane; nothing deployed): its
# storage and prefix come from the config file, not from the manager's defaults.
def lambda_manager(tmp_path, moto_endpoint, bucket, **lam):
    from aws_fixtures import REGION, write_config

    path = write_config(tmp_path / "lambda.yaml", {
        "backend": "lambda", "region": REGION, "bucket": bucket, "prefix": "cbtest",
        "lambda": lam, "endpoints": {"s3": moto_endpoint, "lambda": moto_endpoint,
                                     "iam": moto_endpoint, "sts": moto_endpoint}})
    return CloudManager(config_file=path), path


def test_lambdas_status_is_the_backends_own_with_the_panels_settings(tmp_path, moto_endpoint,
                                                                     s3_bucket):
    from cloudbutton_executor.backends.aws_lambda import lambda_status

    manager, path = lambda_manager(tmp_path, moto_endpoint, s3_bucket)
    out = manager.backend_status()
    own = lambda_status(path)
    assert own["function"] and own["deployed"] is False
    # The function's default name (the file names none), the backend's message; what the
    # backend was built from is the panel's subset of the file, not a path.
    assert out == {**own, "config": None, "ok": False, "backend": "lambda"}
    assert out["message"] == f"{own['function']} is not deployed: run `cloudbutton deploy`"
    assert out["bucket"] == s3_bucket and out["region"] == "us-east-1"


def test_lambda_jobs_are_read_from_the_configured_bucket_and_prefix(tmp_path, moto_endpoint,
                                                                    s3_bucket):
    manager, path = lambda_manager(tmp_path, moto_endpoint, s3_bucket, function_name="fn")
    store = manager.storage()
    assert manager.storage() is store  # one backend while the file is unchanged
    assert store.bucket == s3_bucket
    finished, running = "20300101-000000000-eeeeee", "20300101-000000001-ffffff"
    for job_id in (finished, running):
        put_json(store, protocol.manifest_key("cbtest", job_id), {
            "job_id": job_id, "created": time.time(), "n_items": 1, "timeout": 3600,
            "memory_mb": 1024, "backend": "lambda", "function": "f", "label": None})
    put_json(store, protocol.status_key("cbtest", finished, "000000-000001"), {
        "task": "000000-000001", "state": "done", "attempt": 0, "items": {},
        "stats": {"worker_start": time.time(), "result_stored": time.time()}})
    assert [(r["job_id"], r["state"]) for r in manager.list_jobs()] == [
        (running, "running"), (finished, "done")]
    before = store.request_counts
    assert manager.job_detail(finished)["tasks_detail"][0]["state"] == "done"
    # The newer job's manifest, read by the listing, is not read again (S3 describes
    # itself in another key order than sorted: the caches must agree on one).
    # GETs: its manifest, cancel marker and inputs; LISTs: its statuses (twice), the jobs.
    assert delta(store, before) == {"GET": 3, "LIST": 3}
    with pytest.raises(JobNotFound):
        manager.job_detail("20300101-000000002-aaaaaa")
    with pytest.raises(Conflict) as info:
        manager.cancel(finished)
    assert str(info.value) == f"job {finished} already finished (done)"
    assert manager.cancel(running) == {"job_id": running, "cancelled": True, "already": False}
    assert store.exists(protocol.cancel_key("cbtest", running))

    # Another bucket in the file: another backend, whose storage is that bucket.
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=s3_bucket + "-2")
    manager.put_config({**manager.get_config(), "bucket": s3_bucket + "-2"})
    other = manager.storage()
    assert other is not store and other.bucket == s3_bucket + "-2"
    assert manager.list_jobs() == []
