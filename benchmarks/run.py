#!/usr/bin/env python
"""Side-by-side benchmark: this executor's local backend against its peers.

Peers: concurrent.futures.ProcessPoolExecutor, joblib (loky), Lithops'
localhost backend and Dask's LocalCluster, each with as many workers as CPUs.
Every peer runs in its own fresh Python process (so "cold start" is cold and a
peer that crashes or hangs cannot take the others down); a peer that cannot
be imported or fails is reported as "n/a (reason)", never dropped.

    python benchmarks/run.py              # 5 repetitions, medians (make bench)
    python benchmarks/run.py --quick      # smoke run: 1 repetition, small sizes
    python benchmarks/run.py --peers cloudbutton,joblib --reps 3

The Markdown table is printed and written to benchmarks/results.md; see
benchmarks/README.md for what each figure measures.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKERS = os.cpu_count() or 1

PEERS = ["cloudbutton", "processpool", "joblib", "lithops", "dask"]
TITLES = {
    "cloudbutton": "cloudbutton (local)",
    "processpool": "ProcessPoolExecutor",
    "joblib": "joblib / loky",
    "lithops": "Lithops localhost",
    "dask": "Dask LocalCluster",
}


# Task functions (module level: every peer can ship them) ---------------------
def noop(x):
    return x


def nbytes(blob):
    return len(blob)


def whoami(_):
    return os.getpid()


def array_sum_first(arr):
    """Touches the array (its first and last element) and returns its size in bytes."""
    return int(arr.nbytes) if arr[0] == arr[0] and arr[-1] == arr[-1] else -1


def dgemm(seed, n=2048, loops=3):
    """PyWren's DGEMM benchmark task: ``loops`` n x n float64 np.dot; returns its FLOPs."""
    import numpy as np

    a = np.arange(n * n, dtype=np.float64).reshape(n, n) + seed
    b = np.arange(n * n, dtype=np.float64).reshape(n, n).T.copy()
    for _ in range(loops):
        c = np.dot(a, b)
    del c
    return 2 * n ** 3 * loops


# Peers: each one is a function returning an adapter with the same 3 methods --
#   start()            create a fresh pool (the previous one is shut down first)
#   map(fn, items, cs) run fn over items, chunksize 1 or "auto"; returns results
#   close()            shut the pool down, as its user would
#   forget()           close(), and drop whatever the process keeps for a next pool
#   prewarm()          start what the peer can start ahead of a pool (ours: its workers)
def peer_cloudbutton():
    from cloudbutton_executor import Executor
    from cloudbutton_executor.backends import local as local_backend

    class Peer:
        auto_label = 'chunksize="auto"'
        ex = None

        def start(self):
            self.close()
            self.ex = Executor()  # the default: local backend, workers = CPU count

        def map(self, fn, items, cs):
            return self.ex.map(fn, items, chunksize=cs).result()

        def close(self):
            # The executor's shutdown, as a user's: its pool and its workers go.
            if self.ex is not None:
                self.ex.shutdown(wait=True)
                self.ex = None
            if local_backend._pools:
                raise RuntimeError("the local pool outlived its last executor")

        def prewarm(self):
            # What `%load_ext cloudbutton_magic` does: the pool's workers started ahead.
            local_backend.prewarm()

        def forget(self):
            self.close()
            local_backend._discard_spares()

    return Peer()


def peer_processpool():
    import concurrent.futures as cf

    class Peer:
        auto_label = "chunksize = n / (4 x workers) (multiprocessing.Pool's rule)"
        pool = None

        def start(self):
            self.close()
            self.pool = cf.ProcessPoolExecutor(max_workers=WORKERS)

        def map(self, fn, items, cs):
            if cs == "auto":
                cs = max(1, math.ceil(len(items) / (4 * WORKERS)))
            return list(self.pool.map(fn, items, chunksize=cs))

        def close(self):
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None

        forget = close  # nothing kept for a next pool

        def prewarm(self):  # nothing to start ahead of need
            pass

    return Peer()


def peer_joblib():
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    class Peer:
        auto_label = 'batch_size="auto"'
        started = False

        def start(self):
            self.close()
            self.started = True

        def map(self, fn, items, cs):
            par = Parallel(n_jobs=WORKERS, batch_size=1 if cs == 1 else "auto")
            return par(delayed(fn)(x) for x in items)

        def close(self):
            if self.started:
                get_reusable_executor(max_workers=WORKERS).shutdown(wait=True, kill_workers=True)
                self.started = False

        forget = close  # nothing kept for a next pool

        def prewarm(self):  # nothing to start ahead of need
            pass

    p = Peer()
    p.started = True  # an executor may exist from import time: shut it on first start()
    return p


def peer_lithops():
    import lithops

    tmp = tempfile.mkdtemp(prefix="lithops-bench-")
    config = {
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING",
                    "data_cleaner": True},
        # The absolute interpreter: the default ("python" on PATH) may lack lithops.
        "localhost": {"runtime": sys.executable, "worker_processes": WORKERS},
        "localhost_storage": {"storage_bucket": "bench"},
    }
    # Also as a config file, for the parts of Lithops that read only the file.
    cfg_file = os.path.join(tmp, "lithops.yaml")
    with open(cfg_file, "w") as f:
        json.dump(config, f)  # JSON is YAML
    os.environ["LITHOPS_CONFIG_FILE"] = cfg_file

    class Peer:
        auto_label = "chunksize = n / (4 x workers)"
        fexec = None
        timeout = 90

        def start(self):
            self.close()
            self.fexec = lithops.FunctionExecutor(config=config)

        def map(self, fn, items, cs):
            kw = {}
            if cs == "auto":
                kw["chunksize"] = max(1, math.ceil(len(items) / (4 * WORKERS)))
            futures = self.fexec.map(fn, items, **kw)
            # Bounded: a call lost by the localhost backend would otherwise hang the run.
            return self.fexec.get_result(futures, show_progressbar=False, timeout=self.timeout)

        def close(self):
            if self.fexec is not None:
                try:
                    self.fexec.clean(clean_cloudobjects=True)
                except Exception:
                    pass
                self.fexec = None

        forget = close  # nothing kept for a next pool

        def prewarm(self):  # nothing to start ahead of need
            pass

    return Peer()


def peer_dask():
    import dask.bag as db
    from dask.distributed import Client, LocalCluster

    class Peer:
        auto_label = "dask.bag, 4 x workers partitions"
        client = cluster = None

        def start(self):
            self.close()
            self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                        dashboard_address=None)
            self.client = Client(self.cluster)

        def map(self, fn, items, cs):
            if cs == "auto":
                bag = db.from_sequence(items, npartitions=min(len(items), 4 * WORKERS))
                return bag.map(fn).compute(scheduler=self.client)
            return self.client.gather(self.client.map(fn, items, pure=False))

        def close(self):
            if self.client is not None:
                self.client.close()
                self.cluster.close()
                self.client = self.cluster = None

        forget = close  # nothing kept for a next pool

        def prewarm(self):  # nothing to start ahead of need
            pass

    return Peer()


PEER_FUNCS = {"cloudbutton": peer_cloudbutton, "processpool": peer_processpool,
              "joblib": peer_joblib, "lithops": peer_lithops, "dask": peer_dask}


# Measurements (run inside the peer's own process) ----------------------------
class Recorder:
    """Writes each figure as soon as it is measured, so a timeout keeps the rest."""

    def __init__(self, path):
        self.path = path
        self.data = {"figures": {}, "meta": {}}

    def put(self, key, value):
        self.data["figures"][key] = value
        self.flush()

    def flush(self):
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.data, f)
        os.replace(self.path + ".tmp", self.path)


def _reps_within(fn, reps, budget_s):
    """Run fn() up to ``reps`` times (at least once) while the budget lasts."""
    out, start = [], time.perf_counter()
    for _ in range(reps):
        out.append(fn())
        if time.perf_counter() - start > budget_s:
            break
    return out


def _timed(fn, *args):
    t = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t, result


def _summary(values, reps=None, note=None):
    med = statistics.median(values)
    d = {"median": med, "values": values, "reps": len(values), "reps_wanted": reps}
    if note:
        d["note"] = note
    return d


def measure(peer_name, args, rec):
    peer = PEER_FUNCS[peer_name]()
    reps, budget = args.reps, args.budget
    me = os.getpid()

    # 1. Cold start to first result: a fresh pool, then a 1-task map; shutting the
    #    previous pool down is not timed. "cold_first": nothing started ahead, as for
    #    the first pool of a fresh process; "cold": after the peer's prewarm() (ours:
    #    the pool's workers started, as `%load_ext` does), given the moment a user takes to
    #    write the first cell.
    def cold(prewarm):
        peer.forget()
        if prewarm:
            peer.prewarm()
            time.sleep(0.3)
        t, res = _timed(lambda: (peer.start(), peer.map(whoami, [0], 1))[1])
        if res[0] == me:
            raise RuntimeError("the task ran in the benchmark process itself")
        return t

    for key, prewarm in (("cold_first", False), ("cold", True)):
        try:
            rec.put(key, _summary(_reps_within(lambda p=prewarm: cold(p), reps, budget), reps=reps))
        except Exception as exc:
            rec.put(key, {"error": _reason(exc)})
            peer.start()
    # The pool stays up (warm) for the other figures.

    # 2. No-op maps: tasks/s; a short probe first doubles as the warm-up.
    for n in args.sizes:
        for cs in (1, "auto"):
            key = f"noop_{n}_{cs}"
            try:
                items = list(range(n))
                probe = items[: min(n, args.probe)]
                t_probe, _ = _timed(peer.map, noop, probe, cs)
                est = t_probe * n / len(probe)
                # A peer with a large fixed cost per map (dask.bag) looks slow on a
                # tiny probe: probe 10x bigger while that still fits the budget.
                while est > budget and len(probe) * 10 <= n and t_probe * 10 <= budget / 2:
                    probe = items[: len(probe) * 10]
                    t_probe, _ = _timed(peer.map, noop, probe, cs)
                    est = t_probe * n / len(probe)
                if est > budget and n > len(probe):
                    rec.put(key, {"median": len(probe) / t_probe, "reps": 1, "probe": len(probe),
                                  "note": f"{len(probe)}-task probe; a {n:,}-task run would take "
                                          f"~{_fmt_duration(est)}"})
                    continue

                def run():
                    t, res = _timed(peer.map, noop, items, cs)
                    if len(res) != n or res[-1] != n - 1:
                        raise RuntimeError(f"wrong results ({len(res)} of {n})")
                    return n / t

                rec.put(key, _summary(_reps_within(run, reps, budget), reps=reps))
            except Exception as exc:
                rec.put(key, {"error": _reason(exc)})
    rec.data["meta"]["auto_label"] = peer.auto_label

    # 3. 100 x 1 MB inputs: MB/s from submit to the last (tiny) result.
    try:
        n_in, size = args.inputs, 1 << 20
        blobs = [os.urandom(size) for _ in range(n_in)]
        t_probe, _ = _timed(peer.map, nbytes, blobs[:10], 1)
        est = t_probe * n_in / 10
        if est > budget:
            rec.put("inputs", {"median": 10 * size / 1e6 / t_probe, "reps": 1, "probe": 10,
                               "note": f"10-input probe; {n_in} inputs would take ~{_fmt_duration(est)}"})
        else:
            def run():
                t, res = _timed(peer.map, nbytes, blobs, 1)
                if res != [size] * n_in:
                    raise RuntimeError("wrong results")
                return n_in * size / 1e6 / t

            rec.put("inputs", _summary(_reps_within(run, reps, budget), reps=reps))
    except Exception as exc:
        rec.put("inputs", {"error": _reason(exc)})

    # 3b. Large numpy inputs: MB/s from submit to the last (tiny) result, chunksize 1.
    for key, count, mb in (("np_10x10", 10, 10), ("np_1x100", 1, 100)):
        try:
            import numpy as np

            arrays = [np.random.default_rng(k).random(mb * (1 << 20) // 8) for k in range(count)]
            peer.map(array_sum_first, arrays[:1], 1)  # warm-up (numpy imported in a worker)

            def run(arrays=arrays, count=count, mb=mb):
                t, res = _timed(peer.map, array_sum_first, arrays, 1)
                if res != [a.nbytes for a in arrays]:
                    raise RuntimeError(f"wrong results {res[:3]}")
                return count * mb * (1 << 20) / 1e6 / t

            rec.put(key, _summary(_reps_within(run, reps, budget), reps=reps))
            del arrays
        except Exception as exc:
            rec.put(key, {"error": _reason(exc)})

    # 3c. Host memory per task: tracemalloc's peak of this (host) process's Python
    #     allocations during a no-op map, results held, divided by the items.
    for n, cs in args.mem_sizes:
        key = f"mem_{n}_{cs}"
        try:
            items = list(range(n))
            t_probe, _ = _timed(peer.map, noop, items[: max(1, n // 100)], cs)
            if t_probe * 100 * 3 > budget * 2:  # tracemalloc slows a map down ~3x
                rec.put(key, {"error": f"skipped: a {n:,}-item run would take "
                                       f"~{_fmt_duration(t_probe * 300)} traced"})
                continue
            gc.collect()
            tracemalloc.start()
            try:
                res = peer.map(noop, items, cs)
                _cur, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            if len(res) != n:
                raise RuntimeError(f"wrong results ({len(res)} of {n})")
            del res
            rec.put(key, _summary([peak / n / 1024], reps=1))
        except Exception as exc:
            rec.put(key, {"error": _reason(exc)})

    # 4. DGEMM: 8 tasks x 3 np.dot of n x n; effective GFLOPS over the job's wall time.
    try:
        n_mat = args.dgemm_n
        peer.map(_dgemm_small, [0] * WORKERS, 1)  # warm-up: numpy imported in the workers

        def run():
            t, res = _timed(peer.map, _dgemm_call(n_mat), list(range(8)), 1)
            return sum(res) / t / 1e9

        rec.put("dgemm", _summary(_reps_within(run, reps, budget), reps=reps))
    except Exception as exc:
        rec.put("dgemm", {"error": _reason(exc)})
    peer.close()


def _dgemm_small(seed):
    return dgemm(seed, 256, 1)  # warm-up: imports numpy in the workers


def _dgemm_2048(seed):
    return dgemm(seed, 2048, 3)


def _dgemm_1024(seed):
    return dgemm(seed, 1024, 3)


def _dgemm_call(n):
    return {2048: _dgemm_2048, 1024: _dgemm_1024}[n]


def _reason(exc) -> str:
    text = str(exc).strip()
    if " - " in text and text.startswith("ExecutorID"):  # Lithops' "ExecutorID x | JobID y - msg"
        text = text.split(" - ", 1)[1]
    msg = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return msg.splitlines()[0][:160]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fmt_duration(s):
    return f"{s / 60:.0f} min" if s >= 120 else f"{s:.0f} s"


def numpy_peak(n, reps=5):
    """numpy's own DGEMM peak in this process (all cores: the 2-thread figure on 2 CPUs):
    the best of ``reps`` timed np.dot calls."""
    import numpy as np

    a = np.arange(n * n, dtype=np.float64).reshape(n, n)
    b = a.T.copy()
    np.dot(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        np.dot(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


# Orchestration ----------------------------------------------------------------
def run_peer_process(name, args, out_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--peer", name, "--result-file", out_path,
           "--reps", str(args.reps), "--budget", str(args.budget), "--probe", str(args.probe),
           "--sizes", ",".join(map(str, args.sizes)), "--inputs", str(args.inputs),
           "--dgemm-n", str(args.dgemm_n),
           "--mem-sizes", ",".join(f"{n}:{cs}" for n, cs in args.mem_sizes)]
    env = dict(os.environ)
    storage = tempfile.mkdtemp(prefix=f"bench-{name}-", dir=args.storage_root)
    env["CLOUDBUTTON_STORAGE_DIR"] = storage  # a fresh storage dir for our runs
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(ROOT, "executor"), HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=args.peer_timeout, capture_output=True, text=True)
        failure = None if proc.returncode == 0 else (
            _last_error_line(proc.stderr) or f"exited with code {proc.returncode}")
    except subprocess.TimeoutExpired:
        failure = f"timed out after {args.peer_timeout:g} s"
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    try:
        with open(out_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {"figures": {}, "meta": {}}
    data["meta"]["failure"] = failure
    data["meta"]["seconds"] = time.perf_counter() - t
    return data


def _last_error_line(stderr: str) -> str | None:
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "No module" in ln:
            return ln[:160]
    return lines[-1][:160] if lines else None


FIGURES = [
    ("cold", "Cold start to first result, after prewarm() (s, lower is better)", "s"),
    ("cold_first", "Cold start to first result, nothing pre-warmed (s, lower is better)", "s"),
    # noop rows are added per size
    ("inputs", "100 x 1 MB inputs (MB/s)", "MB/s"),
    ("dgemm", "DGEMM: 8 tasks x 3 np.dot 2048² (effective GFLOPS)", "GFLOPS"),
]


def _fmt(v, unit):
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "KB":
        return f"{v:.2f} KB"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


# The targets: (peer or "peak" or None for an absolute bound, factor, higher is better)
TARGETS = {
    "cold": ("processpool", 2.0, False),
    "cold_first": ("processpool", 2.0, False),
    "noop_*_1": ("processpool", 1.0, True),
    "noop_*_auto": ("processpool", 1.0, True),
    "np_10x10": ("joblib", 1.0, True),
    "np_1x100": ("joblib", 1.0, True),
    "mem_*": (None, 1.0, False),  # KB per task
    "dgemm": ("peak", 0.95, True),
}


def _target(key, ours, results, peak):
    """The (target, met?) cells of a figure: ours against the issue's target."""
    import fnmatch

    rule = next((r for pat, r in TARGETS.items() if fnmatch.fnmatch(key, pat)), None)
    mine = (ours.get(key) or {}).get("median")
    if rule is None:
        return "-", "-"
    peer, factor, higher = rule
    if peer is None:
        base, name, text = 1.0, "", f"{'≥' if higher else '≤'} {factor:g} KB"
    elif peer == "peak":
        base, name = peak, "numpy's peak"
        text = f"≥ {factor:.2f} x {name}"
    else:
        fig = results.get(peer, {}).get("figures", {}).get(key) or {}
        base, name = fig.get("median"), TITLES[peer]
        text = f"{'≥' if higher else '≤'} {factor:.1f} x {name}"
    if not mine or not base:
        return text, "n/a"
    ratio = mine / base
    ok = ratio >= factor if higher else ratio <= factor
    got = f"{mine:.2f} KB" if peer is None else f"{ratio:.2f} x"
    return text, f"{'yes' if ok else 'no'} ({got})"


def build_table(results, args, peak):
    order = [p for p in PEERS if p in results]
    rows = [("cold", FIGURES[0][1], "s"), ("cold_first", FIGURES[1][1], "s")]
    for n in args.sizes:
        rows.append((f"noop_{n}_1", f"No-op map N={n:,}, chunksize 1 (tasks/s)", "/s"))
        rows.append((f"noop_{n}_auto", f'No-op map N={n:,}, "auto" (tasks/s)', "/s"))
    rows += [("inputs", f"{args.inputs} x 1 MB inputs (MB/s)", "MB/s"),
             ("np_10x10", "10 x 10 MB numpy inputs (MB/s)", "MB/s"),
             ("np_1x100", "1 x 100 MB numpy input (MB/s)", "MB/s")]
    for n, cs in args.mem_sizes:
        how = '"auto"' if cs == "auto" else f"chunksize {cs}"
        rows.append((f"mem_{n}_{cs}", f"Host memory per task, no-op map N={n:,}, {how} "
                                      "(KB, lower is better)", "KB"))
    rows.append(("dgemm", f"DGEMM: 8 tasks x 3 np.dot {args.dgemm_n}² (effective GFLOPS)", "GFLOPS"))
    footnotes = []
    header = ("| Figure | " + " | ".join(TITLES[p] for p in order)
              + " | target (cloudbutton) | met? |")
    lines = [header, "|" + "---|" * (len(order) + 3)]
    ours = results.get("cloudbutton", {}).get("figures", {})
    for key, label, unit in rows:
        cells = []
        for p in order:
            data = results[p]
            fig = data["figures"].get(key)
            if fig is None:
                reason = data["meta"].get("failure") or "not measured"
                cells.append(f"n/a ({reason})")
                continue
            if "error" in fig:
                cells.append(f"n/a ({fig['error']})")
                continue
            cell = _fmt(fig["median"], unit)
            base = ours.get(key)
            if p != "cloudbutton" and base and "median" in base and base["median"] and fig["median"]:
                ratio = fig["median"] / base["median"]
                cell += f" ({ratio:.2f}x)"
            marks = []
            if fig.get("note"):
                footnotes.append(f"{TITLES[p]}, {label}: {fig['note']}.")
                marks.append(f"[{len(footnotes)}]")
            elif fig.get("reps_wanted") and fig["reps"] < fig["reps_wanted"]:
                marks.append(f"({fig['reps']} rep{'s' if fig['reps'] > 1 else ''})")
            cells.append(" ".join([cell] + marks))
        target, met = _target(key, ours, results, peak)
        lines.append(f"| {label} | " + " | ".join(_cell(c) for c in cells + [target, met]) + " |")
    if peak:
        ours_dgemm = ours.get("dgemm", {}).get("median")
        frac = f"; cloudbutton reaches {ours_dgemm / peak:.2f} x peak" if ours_dgemm else ""
        lines.append("")
        lines.append(f"numpy's own DGEMM peak in the parent process ({args.dgemm_n}², all "
                     f"{WORKERS} cores): **{peak:.1f} GFLOPS**{frac}.")
    auto = [f"{TITLES[p]}: {results[p]['meta']['auto_label']}" for p in order
            if results[p]["meta"].get("auto_label")]
    lines.append("")
    lines.append("Ratios in parentheses are peer / cloudbutton (for cold start and memory lower "
                 "is better, for everything else higher). \"auto\" means: " + "; ".join(auto) + ".")
    for i, note in enumerate(footnotes, 1):
        lines.append(f"[{i}] {note}")
    return "\n".join(lines)


def _machine_line(args, started, load_before):
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    fmt = lambda la: "/".join(f"{x:.2f}" for x in la) if la else "?"  # noqa: E731
    versions = []
    for mod in ("cloudpickle", "joblib", "lithops", "distributed", "numpy"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    where = f"storage in {args.storage_root or tempfile.gettempdir()}"
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {platform.machine()} "
            f"{WORKERS} CPUs, Python {platform.python_version()}, {args.reps} reps (medians), "
            f"{where}, "
            f"load average {fmt(load_before)} before / {fmt(load_after)} after; "
            + ", ".join(versions) + ".")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions per figure (median reported)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 repetition, N=200/1,000, 20 inputs, DGEMM 1024²")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds per figure and peer; slower peers get fewer reps or a probe")
    ap.add_argument("--probe", type=int, default=20, help="tasks in the warm-up probe of a map")
    ap.add_argument("--peer-timeout", type=float, default=900.0,
                    help="seconds for one peer's whole process; past it the peer's remaining "
                         "figures show as n/a")
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"))
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--dgemm-n", type=int, default=2048, choices=(1024, 2048))
    ap.add_argument("--mem-sizes", default="100000:auto,1000000:auto,10000:1",
                    help="the host-memory-per-task maps, as N:chunksize")
    ap.add_argument("--storage-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the fresh CLOUDBUTTON_STORAGE_DIR is made (default: /dev/shm, "
                         "a tmpfs, when there is one; the peers move data through memory too)")
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--result-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.sizes, args.inputs, args.dgemm_n = 1, "200,1000", 20, 1024
        args.mem_sizes = "10000:auto,1000:1"
        args.budget = min(args.budget, 20.0)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.mem_sizes = [(int(n), cs if cs == "auto" else int(cs))
                      for n, cs in (m.split(":") for m in str(args.mem_sizes).split(",") if m)]

    if args.peer:  # inside one peer's own process
        rec = Recorder(args.result_file)
        try:
            measure(args.peer, args, rec)
        except BaseException:
            traceback.print_exc()
            sys.exit(1)
        return

    started = time.time()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers: {', '.join(sorted(unknown))}")
    peaks = []

    def measure_peak():
        try:
            peaks.append(numpy_peak(args.dgemm_n))
            print(f"numpy peak ({args.dgemm_n}², {WORKERS} threads): {peaks[-1]:.1f} GFLOPS",
                  flush=True)
        except Exception as exc:
            print(f"numpy peak: n/a ({_reason(exc)})", flush=True)

    measure_peak()
    results = {}
    tmp = tempfile.mkdtemp(prefix="bench-results-")
    try:
        for name in peers:
            print(f"running {TITLES[name]} ...", flush=True)
            results[name] = run_peer_process(name, args, os.path.join(tmp, f"{name}.json"))
            meta = results[name]["meta"]
            print(f"  done in {meta['seconds']:.0f} s"
                  + (f" (failed: {meta['failure']})" if meta["failure"] else ""), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    measure_peak()  # before and after the peers: the better of the two is the peak
    peak = max(peaks) if peaks else None
    table = build_table(results, args, peak)
    text = f"{table}\n\n{_machine_line(args, started, load_before)}\n"
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return results


if __name__ == "__main__":
    main()
