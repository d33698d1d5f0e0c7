"""A map of 200 tasks completes exactly once on the Lambda backend under each fault.

Chain under test: LambdaBackend -> HTTP invoke endpoint -> awslambdaric runtimes
running the zip `cloudbutton deploy` built -> worker.handler -> S3 (moto over HTTP)
-> the host's polling. The emulator's counters prove each fault really happened.
"""
import json
import time
import zlib

import boto3
import pytest

from aws_fixtures import BUCKET, PREFIX, REGION
from cloudbutton_executor import protocol
from lambda_emulator import Faults

N = 200


def square_slowly(x):
    import time

    time.sleep(0.03)  # long enough for a kill to land mid-task
    return x * x


def stored_statuses(moto_endpoint, job_id):
    """The status objects of a job, read from moto directly (not through the fault proxy)."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{PREFIX}/jobs/{job_id}/tasks/"):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith("/status.json")]
    return {k: json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in keys}


def run_200(lambda_ex, moto_endpoint, timeout=150):
    t0 = time.time()
    job = lambda_ex.map(square_slowly, range(N))
    assert job.result(timeout=timeout) == [x * x for x in range(N)]
    elapsed = time.time() - t0
    statuses = stored_statuses(moto_endpoint, job.job_id)
    # Exactly once: one stored status per task, all written by a worker, each item once.
    assert len(statuses) == N
    assert all(st.get("written_by") != "host" and st["state"] == "done" for st in statuses.values())
    ranges = [protocol.task_range(st["task"]) for st in statuses.values()]
    assert all(len(protocol.item_times(st["items"])) == b - a for st, (a, b) in zip(statuses.values(), ranges))
    assert sorted(i for a, b in ranges for i in range(a, b)) == list(range(N))
    assert job.monitor_error is None
    return job, elapsed


FAULTS = {
    "drop": dict(drop=0.1),
    "duplicate": dict(duplicate=0.25),
    "throttle": dict(throttle=0.25, retry_after=0.1),
    "latency": dict(latency=0.05),
    "kill": dict(kill=0.05, kill_after=(0.0, 0.03)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_map_200_completes_exactly_once_under_fault(fault, lambda_ex, lambda_emulator, moto_endpoint):
    faults = Faults(seed=zlib.crc32(fault.encode()) % 1000, **FAULTS[fault])  # hash() varies per run
    lambda_emulator.reset(faults)
    ran_before = lambda_emulator.counts["invocations_run"]
    job, elapsed = run_200(lambda_ex, moto_endpoint)
    c = faults.counts
    if fault == "drop":
        assert c["dropped"] > 0
        assert job.retried >= c["dropped"]  # each lost event was re-sent
    elif fault == "duplicate":
        assert c["duplicated"] > 0
        # Extra deliveries ran (at least once), yet one result each (checked in run_200).
        deadline = time.time() + 10
        while not lambda_emulator.idle() and time.time() < deadline:
            time.sleep(0.1)
        # Every delivery ran, the duplicates included (the counter is session-wide: a delta).
        assert lambda_emulator.counts["invocations_run"] - ran_before >= N + c["duplicated"]
        assert len(lambda_emulator.payloads) >= N
        assert c["accepted"] == len(lambda_emulator.payloads)
    elif fault == "throttle":
        assert c["throttled"] > 0
        assert job.throttled == c["throttled"]  # every 429 was seen, retried and counted
        assert job.stats["throttled"] == job.throttled
    elif fault == "latency":
        assert c["accepted"] >= N
    elif fault == "kill":
        assert c["killed"] > 0
        assert job.retried >= c["killed"]
    print(f"{fault}: {elapsed:.1f} s, faults {c}, retried {job.retried}, "
          f"requests/task {job.stats['requests']['per_task']:.2f}")


def test_s3_errors_on_10_percent_of_requests(lambda_ex, s3_proxy, moto_endpoint):
    before = s3_proxy.injected
    s3_proxy.error_rate = 0.10
    job, _ = run_200(lambda_ex, moto_endpoint)
    s3_proxy.error_rate = 0.0
    assert s3_proxy.injected - before > 20  # host and workers both went through 500/503s


def test_boto3_invoke_path_under_throttling(deployed, lambda_config, lambda_emulator, moto_endpoint):
    """The slower client.invoke path (botocore standard retries) also completes."""
    from cloudbutton_executor import Executor

    faults = Faults(throttle=0.3, retry_after=0.05, seed=3)
    lambda_emulator.reset(faults)
    with Executor(backend="lambda", config_path=lambda_config, fast_invoke=False, timeout=20) as ex:
        job = ex.map(square_slowly, range(60))
        assert job.result(timeout=120) == [x * x for x in range(60)]
    assert faults.counts["throttled"] > 0
    lambda_emulator.reset(Faults())


class ForwardProxy:
    """A plain HTTP forward proxy (absolute-URI requests), counting what it forwards."""

    def __init__(self):
        import collections
        import http.client
        import http.server
        import threading
        import urllib.parse

        seen = self.seen = collections.Counter()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                url = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if not k.lower().startswith("proxy-") and k.lower() != "connection"}
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""),
                             body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                seen["invoke" if "/invocations" in url.path else "other"] += 1
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_a_proxy_in_the_environment_carries_the_invocations(deployed, lambda_config, lambda_emulator,
                                                             monkeypatch):
    """Behind HTTP(S)_PROXY the host invokes through the proxy (boto3's path), and the job runs."""
    from cloudbutton_executor import Executor

    lambda_emulator.reset(Faults())
    proxy = ForwardProxy()
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, proxy.url)
    try:
        with Executor(backend="lambda", config_path=lambda_config, timeout=20) as ex:
            assert ex.backend.config.lambda_.fast_invoke  # the default: the proxy decides
            job = ex.map(square_slowly, range(12))
            assert job.result(timeout=120) == [x * x for x in range(12)]
    finally:
        proxy.close()
    assert proxy.seen["invoke"] >= 12 and proxy.seen["other"] > 0  # invokes, and S3 too
