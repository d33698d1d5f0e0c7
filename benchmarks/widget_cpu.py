"""Kernel-side CPU spent keeping the job widget live, on 10,000-task jobs.

Runs real jobs on the local backend (chunksize="auto") and drives the view the
way the magic does (``while not job.wait(poll): view.update()``), outside a
kernel: widget messages go to ipywidgets' dummy comm, but everything the
kernel does to produce them (polling, bokeh serialization, JSON) is measured.

    .venv/bin/python benchmarks/widget_cpu.py [--tasks 10000] [--poll 0.05]

Prints a Markdown table. Columns:
- update CPU: thread CPU inside ``view.update()`` + ``view.finish()``
- per render: mean / max thread CPU of one render
- build: CPU to construct the view (tracker, bokeh document)
- to browser: messages and bytes the widgets would send over the comm
- process CPU: the whole process (executor threads included), with the view
  and, for reference, the same job with no view at all
- static: CPU and size of the rendering a finished job leaves in the notebook (HTML with
  the timeline and rate plots as PNG), which a displayed widget sends at the end
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from cloudbutton_executor import Executor, report_flops
from cloudbutton_executor.storage import LocalStorage


def noop(x):
    return x


def sleep_2ms(x):
    time.sleep(0.002)
    return x


def flops_print(x):
    time.sleep(0.002)
    report_flops(1e6)
    if x % 1000 == 0:
        print("checkpoint", x)
    return x


DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - the text view's sink for the whole run

SCENARIOS = [
    ("no-op", noop),
    ("2 ms sleep", sleep_2ms),
    ("2 ms + report_flops + print every 1000th", flops_print),
]


class CommCounter:
    """Records what widgets send (cheaply: sizes are computed after the run)."""

    def __init__(self):
        import ipywidgets

        self.sent = []
        self._orig = ipywidgets.Widget._send
        counter = self

        def _send(widget, msg, buffers=None):
            counter.sent.append((msg, buffers))
            return counter._orig(widget, msg, buffers)

        ipywidgets.Widget._send = _send

    def totals(self):
        n = len(self.sent)
        size = 0
        for msg, buffers in self.sent:
            size += len(json.dumps(msg, default=str))
            size += sum(len(memoryview(b).cast("B")) for b in buffers or ())
        return n, size

    def reset(self):
        self.sent = []


def run(ex, fn, n, poll, kind, comms):
    from cloudbutton_magic.widget import JobWidget, TextProgress

    comms.reset()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    job = ex.map(fn, range(n), chunksize="auto")
    build = 0.0
    view = None
    if kind != "none":
        b0 = time.thread_time()
        view = JobWidget(job) if kind == "widget" else TextProgress(job, file=DEVNULL, out=DEVNULL)
        build = time.thread_time() - b0
        comms.reset()  # the initial state is sent once, at display; count only live traffic
    renders, calls, cpu = [], 0, 0.0
    while not job.wait(poll):
        if view is not None:
            t0 = time.thread_time()
            rendered = view.update()
            dt = time.thread_time() - t0
            calls += 1
            cpu += dt
            if rendered:
                renders.append(dt)
    if view is not None:
        t0 = time.thread_time()
        view.finish()
        renders.append(time.thread_time() - t0)
        calls += 1
        cpu += renders[-1]
    wall = time.perf_counter() - wall0
    proc = time.process_time() - cpu0
    assert job.done() and job.counts()["done"] == n
    if view is not None:
        assert view.tracker.counts["done"] == n, view.tracker.counts
    msgs, size = comms.totals()
    static_cpu = static_kb = 0.0
    if kind == "widget":
        t0 = time.thread_time()
        static_kb = len(view.static_html()) / 1024
        static_cpu = time.thread_time() - t0
    return {"static_cpu": static_cpu, "static_kb": static_kb, "wall": wall, "proc": proc,
            "renders": len(renders), "calls": calls, "cpu": cpu,
            "mean": sum(renders) / len(renders) if renders else 0.0,
            "max": max(renders) if renders else 0.0, "build": build, "msgs": msgs, "bytes": size,
            "invocations": len(job.task_ids())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--poll", type=float, default=0.05, help="the waiting loop's job.wait timeout")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    comms = CommCounter()
    rows = []
    with Executor(workers=args.workers, storage=LocalStorage(tempfile.mkdtemp())) as ex:
        run(ex, noop, 200, args.poll, "widget", comms)  # warm up workers and imports
        for name, fn in SCENARIOS:
            base = run(ex, fn, args.tasks, args.poll, "none", comms)
            for kind in ("widget", "text"):
                r = run(ex, fn, args.tasks, args.poll, kind, comms)
                rows.append((name, kind, r, base))
    print(f"\n{args.tasks} tasks per job, local backend, {args.workers} workers, chunksize='auto', "
          f"update() called every {args.poll} s (renders throttled to 5/s); "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| job | view | invocations | wall s (view / no view) | update() calls / renders "
          "| update CPU s | per render ms (mean / max) | build CPU s | to browser (msgs / KB) "
          "| process CPU s (view / no view) | static (CPU s / KB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, kind, r, base in rows:
        print(f"| {name} | {kind} | {r['invocations']} | {r['wall']:.2f} / {base['wall']:.2f} | "
              f"{r['calls']} / {r['renders']} | "
              f"{r['cpu']:.3f} | {1e3 * r['mean']:.1f} / {1e3 * r['max']:.1f} | {r['build']:.3f} | "
              + (f"{r['msgs']} / {r['bytes'] / 1024:.0f}" if kind == "widget" else "—")
              + f" | {r['proc']:.2f} / {base['proc']:.2f} | "
              + (f"{r['static_cpu']:.2f} / {r['static_kb']:.0f}" if kind == "widget" else "—")
              + " |")


if __name__ == "__main__":
    main()
