"""Overheads of the Lambda backend, measured without AWS.

1. Submitting 1,000 async invocations to an invoke endpoint that adds 20 ms per
   request (a separate process, so it does not share the host's GIL).
   Target: <= 0.5 s.
2. Through the full test chain (moto S3 over HTTP + the faithful awslambdaric
   emulator running the deployed zip and layers under a bare interpreter): median
   time from result stored to host seen (target <= 0.3 s) and S3 requests per task
   at chunksize 1 (target <= 3) and with chunksize="auto" on tiny tasks (target <= 0.1).
3. A numpy DGEMM job's effective GFLOPS on the emulator (numpy from a layer made by
   `deploy --sync`) against the local backend's for the same job (target >= 0.9x).
4. Size and build time of the synced layer for numpy + scikit-learn (wheels from the
   registry; a warm wheel cache makes the build time mostly unzip/zip).

Usage: python benchmarks/lambda_overheads.py [--invocations 1000] [--latency 0.02]
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from cloudbutton_executor import protocol

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # the emulator lives with the tests

_ENDPOINT = r'''
import http.server, socketserver, sys, time
LAT = float(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(LAT)
        self.send_response(202); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True; request_queue_size = 1024
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''


class _Listener:
    """What the dispatcher would hear: acceptances (counted) and failures."""

    def __init__(self):
        self.accepted, self.failures = 0, []
        self._lock = threading.Lock()

    def on_accepted(self, event, at):
        with self._lock:
            self.accepted += 1

    def on_throttled(self, event, retry_after):
        pass

    def on_failure(self, event, err):
        self.failures.append(err)

    on_lost = on_failure

    def wait_accepted(self, n):
        while self.accepted < n:
            time.sleep(0.002)


def bench_submit(n: int, latency: float, fast: bool, threads: int) -> float:
    from cloudbutton_executor.backends.aws_lambda import LambdaBackend
    from cloudbutton_executor.storage import LocalStorage

    proc = subprocess.Popen([sys.executable, "-c", _ENDPOINT, str(latency)], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIABENCHMARKDUMMY01")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "benchmark-dummy-secret")
        be = LambdaBackend(storage=LocalStorage(tempfile.mkdtemp()), config={
            "region": "us-east-1", "bucket": "bench-bucket",
            "lambda": {"invoke_threads": threads, "fast_invoke": fast},
            "endpoints": {"lambda": f"http://127.0.0.1:{port}"}})
        events = [{"job_id": "bench", "task": protocol.task_id(i, i + 1, n), "prefix": "p",
                   "data": {"inline": "x" * 200}} for i in range(n)]
        listener = _Listener()
        be.invoke(events[:threads], listener)  # open the connections first (a warm host)
        listener.wait_accepted(threads)
        t0 = time.perf_counter()
        be.invoke(events, listener)
        listener.wait_accepted(threads + n)
        took = time.perf_counter() - t0
        assert not listener.failures, listener.failures[:3]
        be.shutdown()
        return took
    finally:
        proc.kill()
        proc.wait()


def bench_chain(tasks: int, tiny: int) -> dict:
    """Median stored->seen and requests/task through moto + the awslambdaric emulator."""
    import logging

    import yaml

    import aws_fixtures
    from cloudbutton_executor import Executor, config
    from cloudbutton_executor.backends.aws_lambda import deploy
    from lambda_emulator import LambdaEmulator

    os.environ.update(aws_fixtures.HOST_CREDS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    os.environ.setdefault("CLOUDBUTTON_WHEEL_CACHE", aws_fixtures.WHEEL_CACHE)
    moto, url = aws_fixtures.start_moto()
    root = tempfile.mkdtemp(prefix="cb-bench-")
    runtime, runtime_dir = aws_fixtures.emulator_runtime()
    emu = LambdaEmulator(url, os.path.join(root, "emu"), runtime_dir, runtime, concurrency=6)
    try:
        data = aws_fixtures.config_dict(url, url, emu.url)
        # Production defaults for polling; only the endpoints and concurrency are local.
        for k in ("poll_interval", "deadline_grace", "lost_after", "redeliveries"):
            data["lambda"].pop(k)
        path = os.path.join(root, "config.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
        deploy(config.load(path))
        out = {}
        with Executor(backend="lambda", config_path=path) as ex:
            ex.map(abs, range(12)).result(timeout=120)  # warm the runtimes
            job = ex.map(lambda x: x * x, range(tasks))
            job.result(timeout=300)
            lags = [f.stats["host_seen"] - f.stats["result_stored"] for f in job]
            out["seen_median"] = statistics.median(lags)
            out["seen_p90"] = statistics.quantiles(lags, n=10)[-1]
            out["req_1"] = job.stats["requests"]["per_task"]
            out["req_1_detail"] = job.stats["requests"]
            out["tasks_per_s"] = tasks / job.stats["elapsed_s"]
            job = ex.map(lambda x: x + 1, range(tiny), chunksize="auto")
            job.result(timeout=300)
            out["req_auto"] = job.stats["requests"]["per_task"]
            out["auto_invocations"] = job.stats["invocations"]
        # DGEMM: numpy from a synced layer on the emulator vs the local backend, same job.
        dgemm_path = os.path.join(root, "dgemm.yaml")
        data["lambda"].update(function_name="cb-bench-numpy", memory=1769, timeout=120, workers=2)
        with open(dgemm_path, "w") as f:
            yaml.safe_dump(data, f)
        deploy(config.load(dgemm_path), modules=["numpy"])
        with Executor(backend="lambda", config_path=dgemm_path) as ex:
            ex.map(_dgemm, [256] * 4).result(timeout=300)  # warm
            out["gflops_lambda"] = statistics.median(_gflops(ex) for _ in range(3))
        with Executor(workers=2, timeout=120) as ex:
            ex.map(_dgemm, [256] * 4).result(timeout=300)
            out["gflops_local"] = statistics.median(_gflops(ex) for _ in range(3))
        return out
    finally:
        emu.close()
        moto.stop()


DGEMM_N, DGEMM_TASKS = 1024, 8


def _dgemm(n):
    import numpy as np

    from cloudbutton_executor import report_flops

    a = np.ones((n, n))
    for _ in range(3):
        a @ a
    report_flops(3 * 2 * n ** 3)
    return n


def _gflops(ex) -> float:
    job = ex.map(_dgemm, [DGEMM_N] * DGEMM_TASKS)
    job.result(timeout=600)
    return job.stats["gflops"]


def bench_layer() -> dict:
    """Size and build time of the synced layer for numpy + scikit-learn."""
    import aws_fixtures
    from cloudbutton_executor import packaging

    os.environ.setdefault("CLOUDBUTTON_WHEEL_CACHE", aws_fixtures.WHEEL_CACHE)
    runtime = packaging.runtime_for_host()
    pins = packaging.host_pins(["numpy", "scikit-learn"], runtime)
    layer = packaging.build_layer(pins, runtime, "x86_64")
    site = layer.site
    return {"zip": len(layer.zip), "unzipped": site.unzipped_bytes, "build_s": site.build_s,
            "resolved": site.resolution.resolved, "fallbacks": site.resolution.fallbacks,
            "excluded": site.excluded, "runtime": runtime}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--invocations", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.02, help="seconds added per invoke request")
    ap.add_argument("--threads", type=int, default=96, help="invoke threads")
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--tiny", type=int, default=5000, help="tiny tasks for the auto-batching row")
    args = ap.parse_args()
    fast = min(bench_submit(args.invocations, args.latency, True, args.threads) for _ in range(3))
    slow = bench_submit(args.invocations, args.latency, False, args.threads)
    chain = bench_chain(args.tasks, args.tiny)
    layer = bench_layer()
    ms = int(args.latency * 1000)
    rows = [
        (f"submit {args.invocations} invocations, {ms} ms endpoint latency, {args.threads} threads",
         f"{fast:.3f} s", "<= 0.5 s", "yes" if fast <= 0.5 else "NO"),
        ("  same through boto3 `client.invoke` (fast_invoke: false)", f"{slow:.3f} s", "-", "-"),
        ("median result stored -> host seen (poll 0.2 s)", f"{chain['seen_median']:.3f} s", "<= 0.3 s",
         "yes" if chain["seen_median"] <= 0.3 else "NO"),
        ("  p90 result stored -> host seen", f"{chain['seen_p90']:.3f} s", "-", "-"),
        (f"S3 requests per task, chunksize 1 ({args.tasks} tasks)", f"{chain['req_1']:.2f}", "<= 3",
         "yes" if chain["req_1"] <= 3 else "NO"),
        (f"S3 requests per task, chunksize auto ({args.tiny} tiny tasks, "
         f"{chain['auto_invocations']} invocations)", f"{chain['req_auto']:.3f}", "<= 0.1",
         "yes" if chain["req_auto"] <= 0.1 else "NO"),
        ("tasks/s through the emulator (6 runtimes, 2 cores)", f"{chain['tasks_per_s']:.0f}", "-", "-"),
        (f"DGEMM {DGEMM_TASKS} x 3 np.dot {DGEMM_N}^2, effective GFLOPS: emulator (layer numpy) / local",
         f"{chain['gflops_lambda']:.1f} / {chain['gflops_local']:.1f} "
         f"({chain['gflops_lambda'] / chain['gflops_local']:.2f}x)", ">= 0.9x",
         "yes" if chain["gflops_lambda"] >= 0.9 * chain["gflops_local"] else "NO"),
        (f"synced layer numpy + scikit-learn for {layer['runtime']}: zip / unzipped / build",
         f"{layer['zip'] / 1e6:.1f} MB / {layer['unzipped'] / 1e6:.0f} MB / {layer['build_s']:.1f} s",
         "-", "-"),
    ]
    print("| measurement | value | target | met |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    d = chain["req_1_detail"]
    print(f"\nchunksize 1 requests: host {d['host']}, workers {d['workers']}")
    print(f"layer resolved: {layer['resolved']}; left out (provided): {layer['excluded']}")
    for name, fb in layer["fallbacks"].items():
        print(f"layer fallback: {fb['reason']}")


if __name__ == "__main__":
    main()
