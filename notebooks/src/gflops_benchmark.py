# ---
# jupyter:
#   jupytext:
#     formats: ipynb,src//py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="how-many-gflops-pywren"
# # How many GFLOPS? PyWren's DGEMM benchmark
#
# PyWren's blog post ("Microservices and Teraflops", 2016) measured what a
# fleet of Lambda workers can compute: 1,600 tasks, each multiplying random
# 4096×4096 matrices 10 times (BLAS `DGEMM`), peaking at over 25 TFLOPS in
# flight. Each task here does the same and reports its floating-point
# operations with `report_flops(n)`: a product of two n×n matrices costs
# 2n³ FLOPs.
#
# The sizes below are scaled to finish in about a minute on 2 local cores.
# On Lambda, use the original configuration (second cell).

# %% id="scale"
import os

# CLOUDBUTTON_DEMO_SCALE=small: the sizes CI uses (seconds); unset: the full local demo.
SMALL = os.environ.get("CLOUDBUTTON_DEMO_SCALE", "") == "small"

if SMALL:
    N, LOOPCNT, TASKS = 256, 3, 8          # CI: a few seconds
else:
    N, LOOPCNT, TASKS = 1024, 10, 28       # about a minute on 2 cores
BACKEND = "local"
# The original PyWren configuration, for AWS Lambda (about 1.4 PFLOP in all):
# N, LOOPCNT, TASKS, BACKEND = 4096, 10, 1600, "lambda"
print(f"{TASKS} tasks x {LOOPCNT} products of {N}x{N} matrices = "
      f"{TASKS * LOOPCNT * 2 * N**3 / 1e9:,.1f} GFLOP on the {BACKEND} backend")

# %% id="numpy"
import numpy as np

from cloudbutton_executor import Executor, report_flops


def big_flops(std_dev):
    running_sum = 0.0
    for _ in range(LOOPCNT):
        A = np.random.normal(0, std_dev, (N, N))
        B = np.random.normal(0, std_dev, (N, N))
        c = np.dot(A, B)
        report_flops(2 * N**3)
        running_sum += float(np.sum(c))
    return running_sum

std_devs = np.linspace(1, 10, TASKS)

# %% id="load-ext"
# The magics; and a Job shows its live widget
# %load_ext cloudbutton_jupyter

# %% [markdown] id="run-it-and-watch"
# Run it and watch the timeline (one row per task) and the GFLOPS plot:
# *effective* GFLOPS (all FLOPs of the finished tasks divided by the time since
# the job started, overhead included) and GFLOPS *in flight* (what the tasks
# computing at that moment produce together).

# %% id="run"
ex = Executor(BACKEND)
job = ex.map(big_flops, std_devs)
job  # a Job as the last expression shows its live widget; the cell does not wait

# %% id="result"
sums = job.result()  # waits for every task


# %% [markdown] id="the-phases-of-a"
# ## The phases of a task
#
# The timeline colours each task's life, with the names of PyWren's plot:
#
# - **host submit**: the host has pickled the function and inputs into
#   storage and sent the invocation (grey bar: queued until a worker is free,
#   which here is most of the wait: 2 workers for many tasks);
# - **start**: the worker's handler begins (a black triangle marks a cold
#   start: a fresh process, or a fresh Lambda container);
# - **setup done**: the function and the task's input are loaded from storage
#   (orange; on Lambda this includes S3 downloads);
# - **done**: the computation ended (green) and its result is stored; the
#   purple bar is the host noticing and fetching it.
#
# The same numbers, from the futures' timestamps:

# %% id="phase-table"
def phase_table(job):
    rows = [f.stats for f in job]
    t0 = min(s["host_submit"] for s in rows)
    def mean(a, b):
        return np.mean([s[b] - s[a] for s in rows])
    print(f"queue + invoke  {mean('host_submit', 'worker_start'):7.3f} s per task (mean)")
    print(f"setup           {mean('worker_start', 'setup_done'):7.3f} s")
    print(f"compute         {mean('compute_start', 'compute_done'):7.3f} s")
    print(f"store + fetch   {mean('compute_done', 'host_fetched'):7.3f} s")
    print(f"job: {len(rows)} tasks, last result {max(s['host_fetched'] for s in rows) - t0:.1f} s "
          f"after the first submit; {sum(bool(s.get('cold_start')) for s in rows)} cold starts")

phase_table(job)


# %% [markdown] id="effective-and-peak-in"
# ## Effective and peak in-flight GFLOPS
#
# As in the blog post: effective = total FLOPs / wall time from the first
# submit to the last result; in flight at time t = sum, over the tasks
# computing at t, of their FLOPs / compute time. Its maximum is the peak.

# %% id="gflops"
def gflops(job):
    st = [f.stats for f in job]
    t0 = min(s["host_submit"] for s in st)
    wall = max(s["host_fetched"] for s in st) - t0
    total = sum(s["flops"] for s in st)
    # In-flight rate: a step function that changes at each compute start and end.
    events = []
    for s in st:
        rate = s["flops"] / max(s["compute_done"] - s["compute_start"], 1e-9)
        events += [(s["compute_start"] - t0, rate), (s["compute_done"] - t0, -rate)]
    level = peak = 0.0
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    return {"tasks": len(st), "wall_s": wall, "total_gflop": total / 1e9,
            "effective_gflops": total / wall / 1e9, "peak_inflight_gflops": peak / 1e9}

g = gflops(job)
print(f"{g['tasks']} tasks, {g['total_gflop']:.1f} GFLOP in {g['wall_s']:.1f} s: "
      f"{g['effective_gflops']:.2f} GFLOPS effective, {g['peak_inflight_gflops']:.2f} GFLOPS peak in flight")
print(f"job.stats agrees: {job.stats['gflops']:.2f} GFLOPS over the job's life "
      f"({job.stats['elapsed_s']:.1f} s), estimated Lambda cost ${job.stats['cost_usd']:.4f}")

# %% [markdown] id="effective-gflops-is-lower"
# Effective GFLOPS is lower than the peak: queueing, setup and stragglers are
# paid for in wall time. On 2 local cores the peak is about two cores' worth;
# on Lambda with 1,600 tasks in flight it was 25 TFLOPS.
#
# *The line below is read by `make demo` and the CI tests.*

# %% id="summary"
import json

print("CLOUDBUTTON_SUMMARY " + json.dumps({
    "notebook": "gflops_benchmark", "n": N, "loopcnt": LOOPCNT,
    "finite_results": int(np.isfinite(sums).sum()), **{k: round(v, 4) if isinstance(v, float) else v
                                                       for k, v in g.items()},
    "reported_flops": job.stats["flops"], "expected_flops": TASKS * LOOPCNT * 2 * N**3}))
