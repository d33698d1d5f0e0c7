"""The S3 protocol on the Lambda backend: request budget, no leaked credentials, the deployed
zip is what runs, warm caching, timeouts, errors and cancellation."""
import base64
import json
import re
import time

import boto3
import pytest

from aws_fixtures import BUCKET, HOST_CREDS, PREFIX, REGION, config_dict, write_config
from cloudbutton_executor import Executor, TaskTimeoutError, config, protocol, supervisor
from cloudbutton_executor.backends.aws_lambda import deploy
from lambda_emulator import ROLE_ENV


def test_deployed_zip_is_what_runs(lambda_ex, lambda_emulator):
    import cloudbutton_executor

    def where(_):
        import os
        import sys

        import cloudbutton_executor
        import cloudpickle

        # The task runs in the supervisor's task process; its parent is Lambda's runtime
        # (awslambdaric, started by the emulator's sandbox boot).
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().replace(b"\0", b" ").decode()
        return cloudbutton_executor.__file__, cloudpickle.__file__, os.environ["AWS_LAMBDA_FUNCTION_NAME"], \
            "lambda_sandbox_boot.py" in parent and "cloudbutton_executor.local_runtime" in sys.modules

    exe, cp, fn, ric = lambda_ex.map(where, [0]).result(timeout=60)[0]
    assert exe.startswith(lambda_emulator.root) and cp.startswith(lambda_emulator.root)
    assert exe != cloudbutton_executor.__file__
    assert fn == "cb-worker" and ric


def test_s3_requests_per_task_at_chunksize_1(lambda_ex):
    job = lambda_ex.map(lambda x: x + 1, range(200))
    assert job.result(timeout=120) == list(range(1, 201))
    req = job.stats["requests"]
    print("requests", req)
    assert req["total"] == sum(req["host"].values()) + sum(req["workers"].values())
    assert req["workers"]["PUT"] == 200  # one status each, nothing else written
    assert req["per_task"] <= 3.0, req


def test_s3_requests_per_task_with_auto_batching(lambda_ex):
    job = lambda_ex.map(lambda x: x + 1, range(3000), chunksize="auto")
    assert job.result(timeout=120) == list(range(1, 3001))
    req = job.stats["requests"]
    print("requests", req, "invocations", job.stats["invocations"])
    assert job.stats["invocations"] < 300
    assert req["per_task"] <= 0.1, req


def test_warm_containers_do_not_download_the_function_again(lambda_ex, lambda_emulator):
    lambda_ex.map(abs, range(12)).result(timeout=60)  # warm every sandbox for this function
    cold_before = lambda_emulator.counts["cold_starts"]
    job = lambda_ex.map(abs, range(-60, 0))
    assert job.result(timeout=60) == list(range(60, 0, -1))
    new_cold = lambda_emulator.counts["cold_starts"] - cold_before
    gets = job.stats["requests"]["workers"].get("GET", 0)
    assert gets <= new_cold, (gets, new_cold)  # only cold containers fetch the function blob
    assert sum(f.stats["cold_start"] for f in job) == new_cold


def _secret_patterns():
    values = list(HOST_CREDS.values()) + list(ROLE_ENV.values())
    return [re.compile(rb"(?:AKIA|ASIA)[A-Z0-9]{16}"),
            re.compile(rb"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")] + \
        [re.compile(re.escape(v.encode())) for v in values]


def _expand(blob: bytes):
    """What to scan: the blob itself, or for JSON its text with every base64 field
    (inline inputs and results) replaced by its decoded bytes, scanned separately."""
    try:
        doc = json.loads(blob)
    except ValueError:
        yield blob
        return
    decoded = []

    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, str) and len(x) > 20:
            try:
                decoded.append(base64.b64decode(x, validate=True))
                return "<base64>"
            except ValueError:
                pass
        return x

    yield json.dumps(walk(doc)).encode()
    yield from decoded


def test_no_credentials_in_any_event_or_object(lambda_ex, lambda_emulator, moto_endpoint):
    # Big inputs (data.pickle byte ranges), big results (result.pickle), small inline ones,
    # a user error and stdout: every kind of object the protocol writes.
    def work(x):
        import os

        print("task", len(x))
        if "AWS_SECRET_ACCESS_KEY" not in os.environ:  # the runtime has its role...
            raise RuntimeError("no role")  # (no assert: pytest's rewrite is not on Lambda)
        if len(x) == 3:
            raise ValueError("boom")
        return x * 2 if len(x) > 10 else len(x)

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    lambda_emulator.reset()
    job = lambda_ex.map(work, [b"a" * 70_000, b"b" * 70_000, b"abc", b"xy"], chunksize=2)
    outcomes = job.results(timeout=60)
    assert outcomes[0] == b"a" * 140_000 and outcomes[3] == 2 and isinstance(outcomes[2], ValueError)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{PREFIX}/") for o in page.get("Contents", [])]
    job_keys = [k for k in keys if job.job_id in k]
    assert any(k.endswith("data.pickle") for k in job_keys)
    assert any(k.endswith("result.pickle") for k in job_keys)
    blobs = {f"event {i}": p for i, p in enumerate(lambda_emulator.payloads)}
    assert len(blobs) >= 2
    for k in job_keys + [job.function_key]:  # manifest, data, statuses, results, function
        blobs[k] = s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
    patterns = _secret_patterns()
    for name, blob in blobs.items():
        for part in _expand(blob):
            for pat in patterns:
                m = pat.search(part)
                assert m is None, f"{name} contains {m.group(0)!r} ({pat.pattern!r})"
    # ...and the scan does find the secrets where they are (so it can fail).
    leaky = json.dumps({"k": ROLE_ENV["AWS_ACCESS_KEY_ID"]}).encode()
    assert any(p.search(leaky) for p in patterns)


def test_user_exception_travels_with_remote_traceback(lambda_ex):
    def fail(x):
        raise KeyError(f"missing {x}")

    job = lambda_ex.map(fail, ["a"])
    with pytest.raises(KeyError, match="missing a") as info:
        job.result(timeout=60)
    assert "fail" in str(info.value.__cause__)


def test_task_over_the_lambda_timeout_ends_as_timeout_error(
        deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path):
    path = write_config(tmp_path / "short.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-short", timeout=3))
    deploy(config.load(path))
    killed_before = lambda_emulator.counts["timeouts"]
    with Executor(backend="lambda", config_path=path) as ex:  # job timeout 300 s, capped at 3 s
        t0 = time.time()
        job = ex.map(lambda s: __import__("time").sleep(s), [60])
        with pytest.raises(TaskTimeoutError, match="timeout of 3 s"):
            job[0].result(timeout=60)
        took = time.time() - t0
        status = json.loads(ex.storage.get(protocol.status_key(PREFIX, job.job_id, job.task_ids()[0])))
    # The task stops itself just before Lambda would (supervisor.TASK_MARGIN_S), stores its
    # timeout, and the host sees it at once (not at the timeout plus a grace); the runtime
    # is not killed.
    assert 3 - supervisor.TASK_MARGIN_S <= took < 3 + 5, took
    assert status.get("written_by") != "host" and status["items"]["errors"]["0"]["kind"] == "timeout"
    assert lambda_emulator.counts["timeouts"] == killed_before


def test_cancel_stops_sending_and_ends_futures(lambda_ex, lambda_emulator):
    job = lambda_ex.map(lambda s: __import__("time").sleep(s), [0.5] * 100)
    time.sleep(1.0)
    n = job.cancel()
    assert n > 0 and job.done()
    time.sleep(1.0)
    sent = len(lambda_emulator.payloads)
    assert sent < 100  # the window kept most events unsent
    time.sleep(0.5)
    assert len(lambda_emulator.payloads) == sent


def test_status_reports_readiness_without_secrets(lambda_ex):
    st = lambda_ex.backend.status()
    assert st["ok"] and st["deployed"] and st["versions_match"] and st["credentials"]
    assert st["bucket"] == BUCKET and st["region"] == REGION
    text = json.dumps(st)
    assert not any(v in text for v in list(HOST_CREDS.values()) + list(ROLE_ENV.values()))


@pytest.mark.parametrize("token", [None, "session-token-value"])
def test_fast_invoke_signature_is_botocores(token):
    """The fast path's headers carry the signature botocore computes for that request
    (recomputed independently of the signer object, from the date it stamped)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from cloudbutton_executor.backends.aws_lambda import SigV4Signer

    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    host, path = "lambda.eu-west-1.amazonaws.com", "/2015-03-31/functions/my%3Afn/invocations"
    for body in (b'{"a": 1}', b"", "é".encode() * 1000):
        ours = SigV4Signer(creds, "eu-west-1", "lambda").headers(
            "POST", host, path, {"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"}, body)
        req = AWSRequest(method="POST", url=f"https://{host}{path}", data=body,
                         headers={k: v for k, v in ours.items() if k not in ("Authorization", "Host")})
        req.context["timestamp"] = ours["X-Amz-Date"]
        auth = SigV4Auth(creds, "lambda", "eu-west-1")
        expected = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
        assert ours["Authorization"].endswith(f"Signature={expected}")
        assert ("X-Amz-Security-Token" in ours) == bool(token)
        assert ours["Host"] == host


def test_an_invoke_endpoint_that_never_answers_fails_within_seconds(monkeypatch):
    """Each try has a short timeout (connect and answer), then botocore-style retries."""
    import socket

    import boto3

    from cloudbutton_executor import InfrastructureError
    from cloudbutton_executor.backends.aws_lambda import _FastInvoker

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never answers
    try:
        session = boto3.session.Session(aws_access_key_id="AKIAHOSTDUMMYKEY0001",
                                        aws_secret_access_key="x" * 40, region_name=REGION)
        inv = _FastInvoker(session, REGION, f"http://127.0.0.1:{silent.getsockname()[1]}", "fn",
                           timeout_s=0.3)
        t0 = time.time()
        with pytest.raises(InfrastructureError, match="could not reach Lambda"):
            inv.invoke(b"{}")
        took = time.time() - t0
    finally:
        silent.close()
    assert 4 * 0.3 <= took < 5 * 0.3 + 3, took


def test_every_event_lost_still_ends_by_the_timeout(
        deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path):
    """Nothing waits forever: with every event dropped (no peer ever finishes, so no
    backup rule can fire), tasks end at the Lambda timeout + grace."""
    from lambda_emulator import Faults

    path = write_config(tmp_path / "short.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-short", timeout=3))
    deploy(config.load(path))
    faults = Faults(drop=1.0)
    lambda_emulator.reset(faults)
    try:
        with Executor(backend="lambda", config_path=path) as ex:
            t0 = time.time()
            job = ex.map(abs, [1, 2, 3])
            outcomes = job.results(timeout=60)
            took = time.time() - min(job[i].stats["host_submit"] for i in range(3))
            assert time.time() - t0 < 30
    finally:
        lambda_emulator.reset()
    assert all(isinstance(o, TaskTimeoutError) for o in outcomes), outcomes
    assert "lost" in str(outcomes[0])
    assert faults.counts["dropped"] == 3 and 3 <= took < 3 + 3 + 2, took


def test_status_without_credentials(lambda_config, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probing
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    from cloudbutton_executor.backends.aws_lambda import LambdaBackend

    be = LambdaBackend(config=config.load(lambda_config))
    st = be.status()
    assert st["credentials"] is False and st["ok"] is False and "AWS_PROFILE" in st["message"]
    with pytest.raises(RuntimeError, match="no AWS credentials"):
        be.invoke([], None)
