#!/usr/bin/env python
"""CPU time of a warm no-op map, on the host and in its local workers, for any checkout.

    python benchmarks/host_cpu.py                          # this checkout, N=1,000 "auto"
    python benchmarks/host_cpu.py --tree /tmp/old --n 10000 --chunksize auto --reps 7
    python benchmarks/host_cpu.py --n 1000 --chunksize 1 \\
        --time dispatch:Dispatcher._collect outcomes:OutcomeStore.apply_status

CPU time, not wall time: on a shared machine wall-clock figures move with the others'
load, a process's CPU time much less. The host figure is ``time.process_time`` over
the map (all its threads); the workers' is the utime + stime of the host's child
processes (clock ticks: 10 ms steps). ``--time`` adds the inclusive CPU time
(``time.thread_time``, unprofiled: a wrapper per call) of the named functions per map,
to split the host's figure by phase. ``--tree``: the checkout whose ``executor/`` is
imported (an older commit in a ``git worktree``, to compare with the same Python).
"""
from __future__ import annotations

import argparse
import collections
import functools
import importlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def noop(x: Any) -> Any:
    return x


def children_cpu_s() -> float:
    """utime + stime of this process's children (its local workers), from /proc."""
    me, total, tick = os.getpid(), 0, os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def timed(acc: dict[str, list[float]], label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    depth = threading.local()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outer = not getattr(depth, "n", 0)
        depth.n = getattr(depth, "n", 0) + 1
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            depth.n -= 1
            if outer:  # a recursive call is counted once
                acc[label][0] += time.thread_time() - t0
            acc[label][1] += 1
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=os.path.dirname(HERE))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--chunksize", default="auto")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--time", nargs="*", default=[], metavar="MODULE:ATTR",
                    help="e.g. dispatch:Dispatcher.start (module under cloudbutton_executor)")
    args = ap.parse_args()
    cs: int | str = args.chunksize if args.chunksize == "auto" else int(args.chunksize)
    sys.path.insert(0, os.path.join(args.tree, "executor"))
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    os.environ["CLOUDBUTTON_STORAGE_DIR"] = tempfile.mkdtemp(prefix="host-cpu-", dir=shm)
    acc: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for spec in args.time:
        module, attr = spec.split(":")
        owner: Any = importlib.import_module(f"cloudbutton_executor.{module}")
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, timed(acc, spec, getattr(owner, name)))

    from cloudbutton_executor import Executor

    items = list(range(args.n))
    with Executor() as ex:
        for _ in range(2):  # warm workers, function blob uploaded
            ex.map(noop, items, chunksize=cs).result()
        acc.clear()
        host, workers, wall = [], [], []
        for _ in range(args.reps):
            k0, c0, w0 = children_cpu_s(), time.process_time(), time.perf_counter()
            ex.map(noop, items, chunksize=cs).result()
            wall.append(time.perf_counter() - w0)
            host.append(time.process_time() - c0)
            workers.append(children_cpu_s() - k0)
    med = statistics.median
    print(f"{args.tree} N={args.n:,} chunksize={cs!r}: host CPU {med(host) * 1e3:.2f} ms per map "
          f"(min {min(host) * 1e3:.2f}; {med(host) / args.n * 1e6:.1f} µs per item), "
          f"workers CPU {med(workers) * 1e3:.0f} ms, wall {med(wall) * 1e3:.1f} ms "
          f"(medians of {args.reps})")
    for label, (t, calls) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
        print(f"  {label:50s} {t / args.reps * 1e3:8.3f} ms per map  {calls / args.reps:8.1f} calls")


if __name__ == "__main__":
    main()
