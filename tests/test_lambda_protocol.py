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


def _task_pids(job):
    """The task processes that ran a job's tasks (from their statuses' stats)."""
    pids = {job.outcomes.task_record(job.item_task(i))[0].get("pid") for i in range(len(job))}
    assert None not in pids, pids
    return pids


def test_warm_containers_do_not_download_the_function_again(lambda_ex, lambda_emulator):
    warm = lambda_ex.map(abs, range(12))  # warm every sandbox for this function
    warm.result(timeout=60)
    warm_pids = _task_pids(warm)
    cold_before = lambda_emulator.counts["cold_starts"]
    job = lambda_ex.map(abs, range(-60, 0))
    assert job.result(timeout=60) == list(range(60, 0, -1))
    new_cold = lambda_emulator.counts["cold_starts"] - cold_before
    # Task processes this job met first: a new container's, or a warm container's whose
    # task process an earlier test ended (the supervisor starts another).
    new_pids = _task_pids(job) - warm_pids
    gets = job.stats["requests"]["workers"].get("GET", 0)
    assert gets <= len(new_pids), (gets, new_pids)  # only new task processes fetch the blob
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

    from cloudbutton_executor.backends.aws_lambda.invoke import SigV4Signer

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


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudbutton test endpoint")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_the_fast_invoker_verifies_tls_with_aws_ca_bundle(tmp_path, monkeypatch):
    """An HTTPS endpoint whose certificate only AWS_CA_BUNDLE vouches for: trusted with the
    bundle (the signed request arrives, keep-alive reused), refused without it."""
    import http.server
    import ssl
    import threading

    import boto3

    from cloudbutton_executor import InfrastructureError
    from cloudbutton_executor.backends.aws_lambda.invoke import FastInvoker

    cert, key = _self_signed(tmp_path)
    seen = []

    class Invoke(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers.get("Authorization", ""), body, id(self.connection)))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Invoke)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    session = boto3.session.Session(aws_access_key_id="AKIAHOSTDUMMYKEY0001",
                                    aws_secret_access_key="x" * 40, region_name=REGION)
    try:
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        with pytest.raises(InfrastructureError, match="could not reach Lambda.*CERTIFICATE_VERIFY_FAILED"):
            FastInvoker(session, REGION, url, "fn", timeout_s=2).invoke(b"{}")
        assert seen == []
        monkeypatch.setenv("AWS_CA_BUNDLE", cert)
        inv = FastInvoker(boto3.session.Session(aws_access_key_id="AKIAHOSTDUMMYKEY0001",
                                                aws_secret_access_key="x" * 40, region_name=REGION),
                          REGION, url, "fn", timeout_s=2)
        inv.invoke(b'{"a": 1}')
        inv.invoke(b'{"a": 2}')
    finally:
        server.shutdown()
        server.server_close()
    assert [(p, b) for p, _, b, _ in seen] == [("/2015-03-31/functions/fn/invocations", b'{"a": 1}'),
                                              ("/2015-03-31/functions/fn/invocations", b'{"a": 2}')]
    assert all(a.startswith("AWS4-HMAC-SHA256 Credential=AKIAHOSTDUMMYKEY0001/") for _, a, _, _ in seen)
    assert seen[0][3] == seen[1][3]  # one pooled keep-alive connection


def test_an_invoke_endpoint_that_never_answers_fails_within_seconds(monkeypatch):
    """Each try has a short timeout (connect and answer), then botocore-style retries."""
    import socket

    import boto3

    from cloudbutton_executor import InfrastructureError
    from cloudbutton_executor.backends.aws_lambda.invoke import FastInvoker

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never answers
    try:
        session = boto3.session.Session(aws_access_key_id="AKIAHOSTDUMMYKEY0001",
                                        aws_secret_access_key="x" * 40, region_name=REGION)
        inv = FastInvoker(session, REGION, f"http://127.0.0.1:{silent.getsockname()[1]}", "fn",
                           timeout_s=0.3)
        t0 = time.time()
        with pytest.raises(InfrastructureError, match="could not reach Lambda"):
            inv.invoke(b"{}")
        took = time.time() - t0
        # Tries never run past the task's deadline: the first try is cut to what is left of
        # it (1 s of 2), and no second one starts (5 tries of 2 s would take 10 s).
        slow = FastInvoker(session, REGION, f"http://127.0.0.1:{silent.getsockname()[1]}", "fn",
                           timeout_s=2.0)
        t1 = time.time()
        with pytest.raises(InfrastructureError, match=r"could not reach Lambda.*\(1 tries in"):
            slow.invoke(b"{}", deadline=t1 + 1.0)
        cut = time.time() - t1
    finally:
        silent.close()
    assert 4 * 0.3 <= took < 5 * 0.3 + 3, took
    assert 0.9 <= cut < 2.0, cut


def test_the_backend_gives_up_on_a_silent_endpoint_at_the_tasks_deadline():
    """The backend passes each event's deadline (submitted + timeout + deadline_grace) to
    its invoker: with 2 s per try, a task of timeout 1 s and a grace of 1 s fails after
    about 2 s (one try), not after 5 tries of 2 s."""
    import socket
    import threading

    from cloudbutton_executor import InfrastructureError
    from cloudbutton_executor.backends.aws_lambda import LambdaBackend

    class Listener:
        def __init__(self):
            self.failed: list[tuple[float, BaseException]] = []
            self.done = threading.Event()

        def on_accepted(self, event, at):
            raise AssertionError("a silent endpoint accepted nothing")

        def on_throttled(self, event, retry_after):
            raise AssertionError("a silent endpoint throttles nothing")

        def on_failure(self, event, err):
            self.failed.append((time.time(), err))
            self.done.set()

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    session = boto3.session.Session(aws_access_key_id="AKIAHOSTDUMMYKEY0001",
                                    aws_secret_access_key="x" * 40, region_name=REGION)
    be = LambdaBackend(config=config_dict(url, url, url, invoke_timeout=2.0, deadline_grace=1),
                       storage=object(), session=session)
    listener = Listener()
    try:
        submitted = time.time()
        be.invoke([{"job_id": "20260101-000000000-abcdef", "task": "000000-000001",
                    "host_submit": submitted, "timeout": 1}], listener)
        assert listener.done.wait(30)
    finally:
        silent.close()
        be.shutdown()
    (at, err), = listener.failed
    assert isinstance(err, InfrastructureError) and "could not reach Lambda" in str(err), err
    assert at - submitted < 1 + 1 + 1.5, at - submitted


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


def test_shutdown_leaves_no_thread_of_ours_behind(deployed, lambda_config, lambda_emulator):
    """After ``shutdown(wait=True)`` a Lambda executor leaves no thread: not the invoker's,
    not the job's follower, not the status fetchers (a poll that finds many new statuses
    fetches them on threads; a pool kept for the process's life used to stay)."""
    import threading

    from lambda_emulator import Faults

    lambda_emulator.reset(Faults())
    before = set(threading.enumerate())
    with Executor(backend="lambda", config_path=lambda_config, timeout=20) as ex:
        job = ex.map(time.sleep, [0.3] * 24)
        assert job.results(timeout=60) == [None] * 24
    left = [t.name for t in set(threading.enumerate()) - before
            if t.is_alive() and t.name.startswith("cloudbutton")]
    assert left == [], left
