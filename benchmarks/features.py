"""What the result cache and live stdout cost.

1. Result cache, local backend: a 10,000-item map computed (and its results added to the
   cache) against the same map re-run with every item cached: wall time of each, and the
   lookup's own time (list the function's entries, verify each seal and blob sha256,
   unpickle). Medians of --reps runs, each in a fresh storage directory.
2. Live stdout on the Lambda emulator (moto S3 over HTTP, the deployed zip under
   awslambdaric, production polling): S3 requests of N tasks that print every 0.1 s for
   --print-s seconds against the same tasks silent; the difference per task, and per task
   and second of printing (target: about 1 or less).

Usage: python benchmarks/features.py [--items 10000] [--reps 3] [--tasks 8] [--print-s 6]
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def square(x):
    return x * x


def bench_cache(items: int, reps: int, chunksize) -> dict:
    from cloudbutton_executor import Executor
    from cloudbutton_executor.storage import LocalStorage

    computed, cached, lookup = [], [], []
    for _ in range(reps):
        storage = LocalStorage(tempfile.mkdtemp(prefix="cb-bench-cache-"))
        with Executor(workers=2, storage=storage) as ex:
            ex.map(square, range(20)).result(timeout=60)  # warm the workers
            t = time.perf_counter()
            first = ex.map(square, range(items), chunksize=chunksize, cache=True)
            first.result(timeout=600)
            computed.append(time.perf_counter() - t)
            t = time.perf_counter()
            again = ex.map(square, range(items), chunksize=chunksize, cache=True)
            assert again.result(timeout=600) == [x * x for x in range(items)]
            cached.append(time.perf_counter() - t)
            assert again.counts()["cached"] == items
            lookup.append(again.dispatcher.cache_lookup["lookup_s"])
    return {"computed": statistics.median(computed), "cached": statistics.median(cached),
            "lookup": statistics.median(lookup)}


def _printer(seconds):
    import time

    end = time.time() + seconds
    k = 0
    while time.time() < end:
        print(f"line {k}")
        k += 1
        time.sleep(0.1)
    return k


def _quiet(seconds):
    import time

    time.sleep(seconds)
    return 0


def bench_live_stdout(tasks: int, print_s: float) -> dict:
    from cloudbutton_executor import Executor

    from lambda_overheads import emulated_lambda

    with emulated_lambda(concurrency=tasks) as (path, _data, _root), \
            Executor(backend="lambda", config_path=path) as ex:
        ex.map(abs, range(tasks)).result(timeout=120)  # warm the runtimes
        out = {}
        for name, fn in (("silent", _quiet), ("printing", _printer)):
            job = ex.map(fn, [print_s] * tasks)
            job.result(timeout=300)
            out[name] = job.stats["requests"]
        lines = sum(len(f.stdout.splitlines()) for f in job)
        out["lines"] = lines
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--print-s", type=float, default=6.0)
    args = ap.parse_args()
    rows = []
    for chunksize in (1, "auto"):
        c = bench_cache(args.items, args.reps, chunksize)
        rows.append((f"{args.items} items, chunksize {chunksize}: computed (+ cache written) / "
                     "all cached re-run / its lookup",
                     f"{c['computed']:.2f} s / {c['cached']:.2f} s / {c['lookup']:.3f} s",
                     f"{c['computed'] / c['cached']:.1f}x faster"))
    live = bench_live_stdout(args.tasks, args.print_s)
    quiet, loud = live["silent"], live["printing"]
    # Its own requests: the workers' PUTs of live objects and the host's GETs of them (the
    # totals also differ by the host's LISTs and HEADs, which depend on timing).
    own = ((loud["workers"].get("PUT", 0) - quiet["workers"].get("PUT", 0))
           + (loud["host"].get("GET", 0) - quiet["host"].get("GET", 0))) / args.tasks
    extra = (loud["total"] - quiet["total"]) / args.tasks
    rows.append((f"live stdout on the emulator, {args.tasks} tasks printing every 0.1 s for "
                 f"{args.print_s:g} s ({live['lines']} lines): its PUTs + GETs per task",
                 f"{own:.1f}", f"{own / args.print_s:.2f} per task-second (target <= ~1)"))
    rows.append(("  all S3 requests, printing minus silent, per task", f"{extra:.1f}",
                 f"{extra / args.print_s:.2f} per task-second"))
    rows.append(("  requests printing / silent",
                 f"host {loud['host']}, workers {loud['workers']}",
                 f"host {quiet['host']}, workers {quiet['workers']}"))
    print("| measurement | value | ratio |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
