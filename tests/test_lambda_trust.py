"""Trust nothing in the bucket, stop what was cancelled, finish what a dead host started,
report crashes in seconds: on the Lambda emulator (the deployed zip under awslambdaric,
S3 from moto over HTTP through a proxy that can play the attacker).

- Integrity: a function blob, a status and a result replaced in the bucket are refused
  ("tampered or foreign object"); nothing of them is loaded.
- IAM: workers write only under ``jobs/*/tasks/`` (what they were seen writing, checked
  against the deployed policy's resources).
- Cancel: running invocations stop within seconds of the marker, write nothing, and
  their runtimes are free again (not killed).
- Resume: the host process is killed with more tasks than its in-flight window; attach
  from a new process gets every result.
- Crashes: a segfault, an ``os._exit`` or a killed task process ends its task with that
  reason in seconds; a crashing task runs no more than its retries allow.
- An invoke endpoint that never answers fails the task within its deadline.
"""
from __future__ import annotations

import fnmatch
import json
import pickle
import time

import boto3
import cloudpickle
import pytest

from aws_fixtures import BUCKET, PREFIX, REGION, config_dict, write_config
from cloudbutton_executor import (Executor, InfrastructureError, IntegrityError, WorkerDiedError,
                                  job_modules, protocol, serialize, worker)
from cloudbutton_executor.backends.aws_lambda.iam import access_policy
from lambda_emulator import ROLE_ENV, Faults
from test_integrity import Planted
from test_resume import run_attach, run_host


def s3(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)


def keys_of(moto_endpoint, job_id):
    out = []
    for page in s3(moto_endpoint).get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{PREFIX}/jobs/{job_id}/"):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def wait_until(cond, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# Integrity ----------------------------------------------------------------------------------
def test_a_function_blob_replaced_in_the_bucket_is_refused_by_the_workers(lambda_ex, s3_proxy):
    def quintuple(x):
        return 5 * x

    blob = cloudpickle.dumps(lambda x: "pwned")  # what the attacker's blob would return
    digest = serialize.digest(job_modules.dumps_with_modules(quintuple, "function quintuple")[0])
    s3_proxy.tamper = {f"functions/{digest}.pickle": blob}
    s3_proxy.tamper_for = ROLE_ENV["AWS_ACCESS_KEY_ID"]  # what the workers read
    outcomes = lambda_ex.map(quintuple, [1, 2]).results(timeout=60)
    assert all(isinstance(o, IntegrityError) for o in outcomes), outcomes
    assert "tampered or foreign object" in str(outcomes[0]) and s3_proxy.tampered >= 2


def test_a_status_and_a_result_replaced_in_the_bucket_are_refused_by_the_host(
        lambda_ex, s3_proxy, tmp_path):
    marker = tmp_path / "ran"
    evil_result = pickle.dumps([(True, Planted(marker))])
    forged = json.dumps({"v": 3, "task": "000001-000002", "state": "done", "items": {},
                         "result": {"inline": __import__("base64").b64encode(evil_result).decode()},
                         "stats": {}}).encode()

    def sized(x):
        return bytes(100_000) if x == 2 else x  # item 2's result goes to result.pickle

    s3_proxy.tamper = {"tasks/000001-000002/status.json": forged,
                       "tasks/000002-000003/result.pickle": evil_result}
    s3_proxy.tamper_for = None  # everyone reads the planted objects
    out = lambda_ex.map(sized, [0, 1, 2, 3]).results(timeout=60)
    assert out[0] == 0 and out[3] == 3
    assert isinstance(out[1], IntegrityError) and "status" in str(out[1])
    assert isinstance(out[2], IntegrityError) and "result" in str(out[2])
    assert not marker.exists()


# IAM ----------------------------------------------------------------------------------------
def test_workers_write_only_where_their_policy_lets_them(lambda_ex, s3_proxy, lambda_emulator):
    policy = access_policy(BUCKET, PREFIX, REGION, "123456789012", "cb-worker")
    writes = {st["Sid"]: st for st in policy["Statement"]}
    assert writes["WriteTaskOutputs"]["Action"] == "s3:PutObject"
    allowed = writes["WriteTaskOutputs"]["Resource"].split(":::", 1)[1]
    assert allowed == f"{BUCKET}/{PREFIX}/jobs/*/tasks/*"
    assert not any("DeleteObject" in str(st["Action"]) for st in policy["Statement"])

    def varied(x):
        if x == 3:
            import ctypes

            ctypes.string_at(0)  # a crash: its report is written too
        return bytes(100_000) if x == 1 else x

    s3_proxy.log = []
    job = lambda_ex.map(varied, [b"a" * 200_000, 1, 2, 3], chunksize=1)
    out = job.results(timeout=60)
    assert isinstance(out[3], WorkerDiedError)
    worker_writes = [(m, k) for who, m, k in s3_proxy.log
                     if who == ROLE_ENV["AWS_ACCESS_KEY_ID"] and m in ("PUT", "POST", "DELETE")]
    kinds = {k.rsplit("/", 1)[-1].split("-")[0] for _m, k in worker_writes}
    assert {"status.json", "result.pickle", "crash"} <= kinds, worker_writes
    for method, key in worker_writes:
        assert method == "PUT" and fnmatch.fnmatchcase(f"{BUCKET}/{key}", allowed), key
    # ... and what it read: the function, the inputs, the cancel marker (all under the prefix).
    reads = [k for who, m, k in s3_proxy.log if who == ROLE_ENV["AWS_ACCESS_KEY_ID"]
             and m in ("GET", "HEAD")]
    assert reads and all(k.startswith(f"{PREFIX}/") for k in reads)


# Cancel -------------------------------------------------------------------------------------
def test_cancel_stops_running_invocations_within_seconds(lambda_ex, lambda_emulator, moto_endpoint):
    def nap(s):
        import time

        time.sleep(s)
        return s

    lambda_emulator.reset(Faults())
    job = lambda_ex.map(nap, [60] * 4)
    assert wait_until(lambda: sum(s.current is not None and s.current.taken.is_set()
                                  for s in lambda_emulator.sandboxes) == 4, 30)
    time.sleep(1.0)  # all four are inside their 60 s item
    cold_before = lambda_emulator.counts["cold_starts"]
    runtimes = {s.index: s.proc.pid for s in lambda_emulator.sandboxes if s.current is not None}
    cancelled_at = time.time()
    s3(moto_endpoint).put_object(Bucket=BUCKET, Key=protocol.cancel_key(PREFIX, job.job_id),
                                 Body=protocol.cancel_marker(by="jupyter-panel", at=cancelled_at))
    assert wait_until(lambda: all(s.current is None for s in lambda_emulator.sandboxes), 15)
    freed = time.time() - cancelled_at
    assert job.wait(5) and job.cancelled and job.counts()["cancelled"] == 4
    assert freed < worker.CANCEL_WATCH_S + worker.CANCEL_GRACE_S + 2, freed
    # Nothing was written after the cancel, and the runtimes were freed, not killed.
    assert not [k for k in keys_of(moto_endpoint, job.job_id) if "/tasks/" in k]
    sandboxes = {s.index: s for s in lambda_emulator.sandboxes}
    assert all(sandboxes[i].proc is not None and sandboxes[i].proc.pid == pid
               and sandboxes[i].proc.poll() is None for i, pid in runtimes.items())
    assert lambda_emulator.counts["cold_starts"] == cold_before
    print(f"cancel: runtimes free {freed:.1f} s after the marker")


def test_the_cancel_watch_costs_a_head_every_few_seconds_of_a_long_task(
        deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path):
    """What the watch costs: HEADs of the cancel marker per task-second, measured. (A config
    that presumes an event lost only after 30 s: a backup drawn by a slow cold start would
    make HEADs of its own, which are not the watch's cost.)"""
    def nap(s):
        import time

        time.sleep(s)
        return s

    path = write_config(tmp_path / "patient.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, lost_after=30))
    sent = len(lambda_emulator.payloads)
    s3_proxy.log = []
    seconds = 10.0
    try:
        with Executor(backend="lambda", config_path=path, timeout=20) as ex:
            job = ex.map(nap, [seconds] * 3)
            assert job.result(timeout=60) == [seconds] * 3
        log = s3_proxy.log
    finally:
        s3_proxy.reset()
    assert len(lambda_emulator.payloads) - sent == 3  # one invocation a task, no backups
    heads = [k for who, m, k in log if who == ROLE_ENV["AWS_ACCESS_KEY_ID"]
             and m == "HEAD" and k.endswith("/cancel")]
    per_task_second = len(heads) / (3 * seconds)
    print(f"cancel watch: {len(heads)} HEADs for 3 tasks of {seconds:g} s = "
          f"{per_task_second:.2f} per task-second")
    # One at the start (or none: trusted from a warm container) and one every CANCEL_WATCH_S.
    assert per_task_second <= (1 + seconds / worker.CANCEL_WATCH_S) / seconds + 0.01
    assert len(heads) >= 3 * int(seconds / worker.CANCEL_WATCH_S - 1)


# Resume -------------------------------------------------------------------------------------
def test_a_killed_host_s_lambda_job_is_finished_by_attach_from_a_new_process(
        lambda_ex, tmp_path, lambda_emulator, moto_endpoint):
    """24 tasks, 2 workers: the host keeps 4 invocations in flight (2 x workers) and is
    killed after 4 results; a new process attaches and gets all 24."""
    lambda_emulator.reset(Faults())
    job_id = run_host(tmp_path, backend="lambda", workers=2, n=24, sleep=0.5, die_after=4,
                      timeout=20)
    statuses = [k for k in keys_of(moto_endpoint, job_id) if k.endswith("status.json")]
    assert 4 <= len(statuses) < 24
    out = run_attach(tmp_path, job_id, backend="lambda", workers=2, wait=150)
    assert out["results"] == [x * x for x in range(24)]


# Crashes ------------------------------------------------------------------------------------
def _segfault(_):
    import ctypes

    ctypes.string_at(0)


def _exit(_):
    import os

    os._exit(7)


@pytest.mark.parametrize("fn, reason", [(_segfault, "killed by SIGSEGV"),
                                        (_exit, "exited with code 7")])
def test_a_crashing_task_ends_with_its_reason_in_seconds(lambda_ex, fn, reason):
    t0 = time.time()
    job = lambda_ex.map(fn, [1])
    (out,) = job.results(timeout=60)
    took = time.time() - t0
    assert isinstance(out, WorkerDiedError) and reason in str(out), out
    assert took < 10, took  # not at the timeout (20 s) + grace (3 s)


def test_a_killed_task_process_is_reported_and_the_runtime_lives_on(lambda_ex, lambda_emulator):
    def nap(s):
        import time

        time.sleep(s)
        return s

    faults = Faults(kill_task=1.0, kill_after=(0.5, 0.6))
    lambda_emulator.reset(faults)
    t0 = time.time()
    (out,) = lambda_ex.map(nap, [5]).results(timeout=60)
    took = time.time() - t0
    assert faults.counts["tasks_killed"] == 1
    assert isinstance(out, WorkerDiedError) and "killed by SIGKILL" in str(out)
    assert took < 5, took  # before the task would even have ended
    lambda_emulator.reset(Faults())
    assert lambda_ex.map(nap, [0.1]).result(timeout=30) == [0.1]


@pytest.mark.parametrize("retries", [0, 1])
def test_a_crashing_task_runs_no_more_than_its_retries_allow(
        deployed, lambda_emulator, moto_endpoint, s3_proxy, tmp_path, retries):
    """Among quick peers a task that crashes runs exactly 1 + retries times, ended by its
    crash reports in seconds (not at its deadline). A config that presumes a silent event
    lost only after 30 s: with a shorter one, the cold starts of a loaded machine draw
    legitimate backups before the crash is known (the dispatcher's tests check with a fake
    clock that no backup is sent once a crash is known)."""
    def maybe_crash(x):
        import time

        if x == 0:
            import ctypes

            ctypes.string_at(0)
        time.sleep(0.05)
        return x

    path = write_config(tmp_path / "patient.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, lost_after=30))
    lambda_emulator.reset(Faults())
    with Executor(backend="lambda", config_path=path, timeout=20) as ex:
        t0 = time.time()
        # backups=False: a crashing task's cold start can make it the straggler that
        # draws a speculative backup before its crash is known (test_backups.py).
        job = ex.map(maybe_crash, range(30), retries=retries, backups=False)
        out = job.results(timeout=90)
        assert isinstance(out[0], WorkerDiedError) and out[1:] == list(range(1, 30))
        assert time.time() - t0 < 15  # the deadline is 20 s + 3 s of grace
        tid = job.task_ids()[0]
        time.sleep(3)  # a retry sent by mistake would have run and reported by now
    crashes = [k for k in keys_of(moto_endpoint, job.job_id) if f"/{tid}/crash-" in k]
    sent = [p for p in lambda_emulator.payloads if json.loads(p)["task"] == tid
            and json.loads(p)["job_id"] == job.job_id]
    assert len(sent) == len(crashes) == 1 + retries, (crashes, len(sent), [
        (kind, body[:300]) for _r, kind, body in lambda_emulator.results if tid.encode() in body
        or b"crash" in body or kind != "response"])
    assert job.item_attempts(0) == 1 + retries


# An invoke endpoint that never answers -----------------------------------------------------
def test_a_silent_invoke_endpoint_fails_the_task_within_its_deadline(
        deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path):
    path = write_config(tmp_path / "hang.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, invoke_timeout=1.0))
    faults = Faults(hang=1.0, hang_s=30)
    lambda_emulator.reset(faults)
    try:
        with Executor(backend="lambda", config_path=path, timeout=3) as ex:
            t0 = time.time()
            out = ex.map(abs, [1, 2]).results(timeout=60)
            took = time.time() - t0
    finally:
        lambda_emulator.reset(Faults())
    assert all(type(o) is InfrastructureError and "could not reach Lambda" in str(o) for o in out), out
    # A try lasts about invoke_timeout; all tries together stop at the task's deadline
    # (timeout 3 s + grace 3 s), not at 5 x 30 s as with socket defaults.
    assert faults.counts["hung"] >= 2 and took < 3 + 3 + 4, took
    print(f"silent endpoint: tasks failed after {took:.1f} s")
