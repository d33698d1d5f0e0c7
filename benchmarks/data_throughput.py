"""Read throughput of a data-driven map, beside one process reading the same files.

1. Local backend, local files: ``Executor().map(count, DIR, obj_chunk_size=CHUNK)`` over
   ``--gb`` GB of generated text (each task counts the lines and bytes of its chunk) against
   one process reading every file sequentially doing the same counting. MB/s per task
   (median, from the tasks' own timing) and in total (bytes / wall time, listing included),
   and the ratio total / sequential.
2. The same over S3 (a moto server over HTTP, ``--s3-mb`` MB: moto keeps objects in
   memory), read by local workers with ranged GETs, against one process GETting the
   objects one after the other; and read by the worker deployed on the Lambda emulator
   (``--lambda-workers`` sandboxes of AWS's awslambdaric under a bare interpreter, the
   worker's role granted the data prefix by ``deploy --data``), per task from the tasks'
   own read statistics.
3. Host memory of the listing and planning as the dataset grows: the peak Python
   allocation (tracemalloc) of planning a map over 1 GB and 10 GB of objects (sparse
   files: listing reads no data) at the same chunk size.
4. Host memory of the whole map as the dataset grows (``--flat-gb 1,10``): a data map over
   sparse local files whose tasks read every byte of their chunk and discard it. The host's
   RSS before the executor starts, after the job, and its peak while the job runs
   (sampled every 5 ms, and the kernel's VmHWM reset before each run), plus the bytes the
   host process itself read while the job ran (/proc/self/io rchar, taken before the
   workers end: a reaped child's reads are added to its parent's): the data flows through
   the workers only.

Usage: python benchmarks/data_throughput.py [--gb 1] [--s3-mb 200] [--reps 3] [--chunk-mb 64]
                                            [--flat-gb 1,10] [--lambda-workers 6]
                                            [--only throughput|memory|lambda]
Prints a Markdown table. Figures are medians of ``--reps`` runs; the first run of each
warms the page cache and the workers and is not counted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc

MB = 2 ** 20
LINE = b"the quick brown fox jumps over the lazy dog 0123456789 cloudbutton data\n"


def count(obj):
    start = time.perf_counter()
    n = lines = 0
    while True:
        block = obj.data_stream.read(MB)
        if not block:
            break
        n += len(block)
        lines += block.count(b"\n")
    return n, lines, time.perf_counter() - start


def make_files(root: str, total: int, per_file: int) -> int:
    os.makedirs(root, exist_ok=True)
    block = LINE * (MB // len(LINE))
    written = i = 0
    while written < total:
        size = min(per_file, total - written)
        with open(os.path.join(root, f"part-{i:05d}.txt"), "wb") as f:
            left = size
            while left > 0:
                f.write(block[:left])
                left -= len(block[:left])
        written += size
        i += 1
    return written


def sequential_files(root: str) -> tuple[int, int]:
    n = lines = 0
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name), "rb") as f:
            while True:
                block = f.read(MB)
                if not block:
                    break
                n += len(block)
                lines += block.count(b"\n")
    return n, lines


def timed(fn, reps):
    fn()  # warm-up, not counted
    walls, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t)
    return statistics.median(walls), out


def data_map(ex, location, chunk):
    job = ex.map(count, location, obj_chunk_size=chunk)
    return job.result(timeout=1800)


def row(name, nbytes, seq_wall, map_wall, parts):
    per_task = statistics.median(n / MB / max(s, 1e-9) for n, _l, s in parts)
    total = nbytes / MB / map_wall
    seq = nbytes / MB / seq_wall
    return (f"| {name} | {nbytes / MB:,.0f} MB | {len(parts)} | {per_task:,.0f} MB/s | "
            f"{total:,.0f} MB/s | {seq:,.0f} MB/s | {total / seq:.2f}x |")


def bench_local(args, tmp):
    from cloudbutton_executor import Executor

    root = os.path.join(tmp, "files")
    nbytes = make_files(root, int(args.gb * 1024 * MB), 128 * MB)
    seq_wall, (n, lines) = timed(lambda: sequential_files(root), args.reps)
    with Executor() as ex:
        map_wall, parts = timed(lambda: data_map(ex, root + "/", args.chunk_mb * MB), args.reps)
    assert sum(p[0] for p in parts) == n == nbytes and sum(p[1] for p in parts) == lines
    shutil.rmtree(root)
    return row("local files, local backend", nbytes, seq_wall, map_wall, parts)


def s3_corpus(s3, megabytes: float):
    """16 MB text objects under s3://bench-data/corpus/ (about ``megabytes`` in all): their
    total size, and one process reading them one GET after the other."""
    s3.create_bucket(Bucket="bench-data")
    per_object = 16 * MB
    body = (LINE * (per_object // len(LINE) + 1))[:per_object]
    keys = [f"corpus/{i:05d}.txt" for i in range(max(1, int(megabytes * MB) // per_object))]
    for k in keys:
        s3.put_object(Bucket="bench-data", Key=k, Body=body)

    def sequential():
        return sum(len(s3.get_object(Bucket="bench-data", Key=k)["Body"].read()) for k in keys)
    return len(keys) * len(body), sequential


def bench_s3(args, tmp):
    import boto3
    from moto.server import ThreadedMotoServer

    from cloudbutton_executor import Executor
    from cloudbutton_executor.storage import LocalStorage

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        nbytes, sequential = s3_corpus(boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"),
                                       args.s3_mb)
        seq_wall, n = timed(sequential, args.reps)
        cfg = os.path.join(tmp, "config.yaml")
        with open(cfg, "w") as f:
            f.write(f"region: us-east-1\nendpoints:\n  s3: {endpoint}\n")
        os.environ["CLOUDBUTTON_CONFIG"] = cfg
        with Executor(storage=LocalStorage(os.path.join(tmp, "jobs"))) as ex:
            map_wall, parts = timed(lambda: data_map(ex, "s3://bench-data/corpus/", 4 * MB), args.reps)
        assert sum(p[0] for p in parts) == n == nbytes
        return row("S3 (moto over HTTP), local backend", nbytes, seq_wall, map_wall, parts)
    finally:
        server.stop()


def bench_lambda(args, tmp):
    """The S3 map on the Lambda emulator (AWS's awslambdaric running the deployed worker
    under a bare interpreter, moto S3 over HTTP), beside one process GETting the objects
    one after the other. Per task: the tasks' own read statistics (read_bytes / read_s)."""
    import boto3

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from lambda_overheads import emulated_lambda

    from cloudbutton_executor import Executor, config
    from cloudbutton_executor.backends.aws_lambda import deploy

    with emulated_lambda(concurrency=args.lambda_workers) as (path, data, _root):
        endpoint = data["endpoints"]["s3"]
        nbytes, sequential = s3_corpus(
            boto3.client("s3", endpoint_url=endpoint, region_name=data["region"]), args.s3_mb)
        deploy(config.load(path), data=["s3://bench-data/corpus/"])  # the workers may read it
        seq_wall, n = timed(sequential, args.reps)
        rates = []
        with Executor(backend="lambda", config_path=path) as ex:
            def run():
                job = ex.map(count, "s3://bench-data/corpus/", obj_chunk_size=4 * MB)
                parts = job.result(timeout=1800)
                rates.extend(f.stats["read_bytes"] / MB / f.stats["read_s"] for f in job)
                return parts
            map_wall, parts = timed(run, args.reps)
        assert sum(p[0] for p in parts) == n == nbytes
        per_task = statistics.median(rates[-len(parts):])
        total_rate, seq = nbytes / MB / map_wall, nbytes / MB / seq_wall
        return (f"| S3 (moto over HTTP), Lambda emulator ({args.lambda_workers} sandboxes) | "
                f"{nbytes / MB:,.0f} MB | {len(parts)} | {per_task:,.0f} MB/s | {total_rate:,.0f} MB/s | "
                f"{seq:,.0f} MB/s | {total_rate / seq:.2f}x |")


def bench_listing_memory(args, tmp):
    from cloudbutton_executor.datamap import S3Service, plan

    out = []
    for gb in (1, 10):
        root = os.path.join(tmp, f"sparse-{gb}")
        os.makedirs(root)
        per_file = 256 * MB
        for i in range(gb * 1024 * MB // per_file):
            with open(os.path.join(root, f"part-{i:05d}.bin"), "wb") as f:
                f.truncate(per_file)  # sparse: no disk, no page cache
        tracemalloc.start()
        p = plan(count, root + "/", chunk_size=args.chunk_mb * MB, chunk_number=None, newline="\n",
                 local_files=True, s3=S3Service(), lambda_workers=False)
        _cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.append((gb, p.objects, p.partitions, peak))
        shutil.rmtree(root)
    return [f"| plan a map over {gb} GB ({objects} objects, {parts} chunks of {args.chunk_mb} MB) | "
            f"peak {peak / 1024:,.0f} KiB |" for gb, objects, parts, peak in out]


def drain(obj):
    """Read the chunk and keep nothing."""
    n = 0
    while True:
        block = obj.data_stream.read(MB)
        if not block:
            return n
        n += len(block)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _host_read_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def _peak_rss_since_reset() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024


def bench_host_memory_flat(args, tmp):
    """One row per dataset size: the host's RSS before, after and at its peak around a data
    map whose tasks read every byte (sparse files: no disk, the kernel hands out zeros)."""
    import threading

    from cloudbutton_executor import Executor
    from cloudbutton_executor.storage import LocalStorage

    rows = []
    for gb in [0.25, *args.flat_gb]:  # the first run warms imports and the executor: not shown
        root = os.path.join(tmp, f"flat-{gb:g}")
        os.makedirs(root)
        per_file = 256 * MB
        n_files = max(1, int(gb * 1024 * MB) // per_file)
        for i in range(n_files):
            with open(os.path.join(root, f"part-{i:05d}.bin"), "wb") as f:
                f.truncate(per_file)
        nbytes = n_files * per_file
        peak = [0]
        stop = threading.Event()

        def sample(peak=peak, stop=stop):
            while not stop.wait(0.005):
                peak[0] = max(peak[0], _rss())

        before = _rss()
        read_before = _host_read_bytes()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the kernel's peak RSS (VmHWM) from here on
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.perf_counter()
        with Executor(storage=LocalStorage(os.path.join(tmp, "jobs"))) as ex:
            job = ex.map(drain, root + "/", obj_chunk_size=args.chunk_mb * MB, obj_newline=None)
            read = sum(job.result(timeout=3600))
            # Before the workers end: once reaped, a child's reads count as its parent's.
            host_read = _host_read_bytes() - read_before
            del job
        wall = time.perf_counter() - t
        stop.set()
        sampler.join()
        after = _rss()
        kernel_peak = _peak_rss_since_reset()
        assert read == nbytes, (read, nbytes)
        rows.append((gb, nbytes, n_files, nbytes // (args.chunk_mb * MB), wall, before, after,
                     max(peak[0], kernel_peak), host_read))
        shutil.rmtree(root)
    out = ["| dataset read by the tasks | tasks | wall | total | host RSS before | after | peak "
           "| peak - before | bytes the host read |", "|" + " --- |" * 9]
    for gb, nbytes, _files, tasks, wall, before, after, peak, host_read in rows[1:]:
        out.append(f"| {nbytes / 2**30:,.1f} GiB | {tasks} | {wall:.1f} s | "
                   f"{nbytes / MB / wall:,.0f} MB/s | {before / MB:,.1f} MB | {after / MB:,.1f} MB | "
                   f"{peak / MB:,.1f} MB | {(peak - before) / MB:+,.1f} MB | {host_read / MB:,.1f} MB |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="local dataset size (GB)")
    ap.add_argument("--s3-mb", type=float, default=200, help="S3 dataset size (MB, in moto's memory)")
    ap.add_argument("--chunk-mb", type=int, default=64, help="obj_chunk_size of the local map (MB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--flat-gb", type=lambda t: [float(x) for x in t.split(",")], default=[1.0, 10.0],
                    help="dataset sizes of the host-memory run, comma-separated (GB)")
    ap.add_argument("--lambda-workers", type=int, default=6,
                    help="sandboxes of the Lambda emulator run (0: skip it)")
    ap.add_argument("--only", choices=("throughput", "memory", "lambda"),
                    help="run only the throughput tables or only the host-memory runs")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="cb-data-bench-")
    try:
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
              f"Python {sys.version.split()[0]}\n")
        if args.only != "memory":
            print("| dataset | size | tasks | per task (median) | data map, total | one sequential reader "
                  "| ratio |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            if args.only != "lambda":
                print(bench_local(args, tmp), flush=True)
                print(bench_s3(args, tmp), flush=True)
            if args.lambda_workers:
                print(bench_lambda(args, tmp), flush=True)
        if args.only not in ("throughput", "lambda"):
            print("\n| host memory of listing and planning | |\n| --- | --- |")
            print("\n".join(bench_listing_memory(args, tmp)))
            print()
            print("\n".join(bench_host_memory_flat(args, tmp)), flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
