#!/usr/bin/env python
"""Where the time of a no-op task goes at chunksize 1: the host and a worker, by phase.

    python benchmarks/profile_tasks.py            # N=2,000 no-op tasks, chunksize 1
    python benchmarks/profile_tasks.py --n 5000 --top 25

Three views of the same run, written to stdout (and summarised in
benchmarks/profile.md):

- host CPU per task (``time.process_time`` of the whole host process over the map,
  all its threads: the caller, the slot threads, the dispatcher) and the host's
  cProfile, grouped by phase (send an event, read the response, read + verify the
  status, apply it, dispatch the next);
- worker wall time per task from the stats every status carries (setup, compute,
  store), and the worker's own cProfile (a runtime started under cProfile: the
  workers of this run dump their profile when their stdin closes);
- the runtime's share: response-to-next-event time in the worker loop.
"""
from __future__ import annotations

import argparse
import cProfile
import glob
import io
import os
import pstats
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "executor"))


def noop(x):
    return x


# Phases of the host and the worker: the functions whose cumulative time is reported.
HOST_PHASES = [
    ("map(): serialize + plan + upload", "executor.py", "map"),
    ("slot: send event (JSON, pipe write)", "local.py", "_begin"),
    ("slot: wait for response (select/read, JSON)", "local_runtime.py", "recv"),
    ("collect: storage.get of the status", "storage.py", "get"),
    ("collect: open_status (verify HMAC, JSON)", "worker.py", "open_status"),
    ("collect: read_result_blob + unpickle", "worker.py", "read_result_blob"),
    ("collect: apply_status (futures, state)", "outcomes.py", "apply_status"),
    ("dispatch: next events", "dispatch.py", "_dispatch_more"),
    ("dispatch: build one event", "dispatch.py", "event"),
    ("listener: on_start (mark running)", "dispatch.py", "on_start"),
    ("listener: on_done (whole collect)", "dispatch.py", "on_done"),
]
WORKER_PHASES = [
    ("runtime: read event (pipe, JSON)", "local_runtime.py", "read_message"),
    ("runtime: serve one invocation", "local_runtime.py", "_serve"),
    ("runtime: setrlimit x2", "local_runtime.py", "_set_memory_limit"),
    ("handler: whole", "worker.py", "handler"),
    ("handler: cancel check (storage)", "worker.py", "_cancelled"),
    ("handler: load function (cached)", "worker.py", "_load_function"),
    ("handler: load inputs", "worker.py", "_load_inputs"),
    ("handler: cancel watch + deadline", "worker.py", "watching"),
    ("handler: run items", "worker.py", "_run_items"),
    ("handler: dump outcomes (pickle)", "worker.py", "_dump_outcomes"),
    ("handler: write status (seal + put_if_absent)", "worker.py", "_write_status"),
    ("storage: put_if_absent", "storage.py", "put_if_absent"),
    ("integrity: seal", "integrity.py", "seal"),
    ("runtime: write response (JSON, pipe)", "local_runtime.py", "encode_message"),
]


def _cum(stats: pstats.Stats, file_end: str, func: str) -> tuple[float, int]:
    tt = 0.0
    calls = 0
    for (fname, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name == func and fname.endswith(file_end):
            tt += ct
            calls += nc
    return tt, calls


def _table(stats: pstats.Stats, phases, n: int, title: str) -> str:
    lines = [f"| {title} | µs per task | calls per task |", "|---|---|---|"]
    for label, fend, func in phases:
        t, calls = _cum(stats, fend, func)
        lines.append(f"| {label} | {t / n * 1e6:,.0f} | {calls / n:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3, help="unprofiled runs for the CPU figure")
    ap.add_argument("--top", type=int, default=0, help="also print the top functions by tottime")
    args = ap.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    os.environ.setdefault("CLOUDBUTTON_STORAGE_DIR", tempfile.mkdtemp(prefix="profile-", dir=shm))
    prof_dir = tempfile.mkdtemp(prefix="worker-prof-")

    from cloudbutton_executor import Executor
    from cloudbutton_executor.backends import local as local_backend
    from cloudbutton_executor.local_runtime import RuntimeProcess

    n = args.n
    items = list(range(n))

    # 1. Unprofiled: wall time and host CPU per task (all host threads).
    ex = Executor()
    ex.map(noop, items[:50]).result()  # warm workers
    walls, cpus, stats_rows = [], [], []
    for _ in range(args.reps):
        c0, t0 = time.process_time(), time.perf_counter()
        job = ex.map(noop, items)
        job.result()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        stats_rows = list(job.outcomes._task_stats.values())
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(f"N={n:,} chunksize 1, {local_backend.os.cpu_count()} workers: "
          f"{n / wall:,.0f} tasks/s; host CPU {cpu / n * 1e6:,.0f} µs per task "
          f"(median of {args.reps}; wall {wall / n * 1e6:,.0f} µs per task)")
    ph = {"worker_start -> setup_done (cancel check, function, inputs)": ("worker_start", "setup_done"),
          "setup_done -> compute_done (run the item)": ("setup_done", "compute_done"),
          "compute_done -> result_stored (pickle, seal, status put)": ("compute_done", "result_stored"),
          "host_submit -> worker_start (queue wait: all events are queued at once)":
              ("host_submit", "worker_start")}
    print("\n| worker phase (from the statuses' stats, last run) | µs per task (median) |\n|---|---|")
    for label, (a, b) in ph.items():
        vals = [s[b] - s[a] for s in stats_rows if s.get(a) and s.get(b)]
        if vals:
            print(f"| {label} | {statistics.median(vals) * 1e6:,.0f} |")
    ex.shutdown()
    local_backend._shutdown_all()
    local_backend._pools.clear()

    # 2. Profiled (per-thread CPU time): the host's threads, and workers started under
    #    cProfile, each dumping its profile when its stdin closes.
    def profiled_process(env, cwd):
        code = ("import cProfile, os\n"
                "from cloudbutton_executor.local_runtime import main\n"
                "import time; p = cProfile.Profile(time.thread_time); p.enable()\n"
                "try:\n    main()\nfinally:\n"
                f"    p.disable(); p.dump_stats(os.path.join({prof_dir!r}, f'w{{os.getpid()}}.prof'))\n")
        return RuntimeProcess([sys.executable, "-s", "-c", code], env=env, cwd=cwd,
                              stderr=local_backend._worker_log())

    local_backend._new_process = profiled_process
    import threading

    # cProfile is per thread: the caller's profiler, and one per thread started from
    # now on (the new pool's slot threads, the dispatcher's monitor).
    main_prof = cProfile.Profile(time.thread_time)  # CPU time: waits are not costs
    host_profiles: list[cProfile.Profile] = [main_prof]
    orig_run = threading.Thread.run

    def run_profiled(self):
        p = cProfile.Profile(time.thread_time)
        host_profiles.append(p)
        p.enable()
        try:
            orig_run(self)
        finally:
            p.disable()

    threading.Thread.run = run_profiled  # type: ignore[method-assign]
    local_backend._shutdown_all()
    local_backend._pools.clear()
    ex = Executor()
    ex.map(noop, items[:50]).result()
    for p in host_profiles:
        p.clear()
    main_prof.enable()
    ex.map(noop, items).result()
    main_prof.disable()
    ex.shutdown()
    local_backend._shutdown_all()
    for pool in list(local_backend._pools.values()):
        pool.join()
    time.sleep(0.5)
    for p in host_profiles:
        p.disable()
    host = pstats.Stats(main_prof)
    for p in host_profiles[1:]:
        try:
            host.add(p)
        except TypeError:
            pass  # a profiler that saw nothing
    print("\n" + _table(host, HOST_PHASES, n,
                         "host phase (cProfile, thread CPU time, cumulative, all threads)"))
    files = glob.glob(os.path.join(prof_dir, "*.prof"))
    if files:
        worker = pstats.Stats(*files)
        print("\n" + _table(worker, WORKER_PHASES, n + 50,
                            "worker phase (cProfile, thread CPU time, cumulative, all workers)"))
    if args.top:
        for title, st in (("host", host), ("worker", worker if files else None)):
            if st is None:
                continue
            out = io.StringIO()
            st.stream = out  # type: ignore[attr-defined]
            st.sort_stats("tottime").print_stats(args.top)
            print(f"\n--- {title}: top {args.top} by own time ---")
            print("\n".join(out.getvalue().splitlines()[6:]))


if __name__ == "__main__":
    main()
