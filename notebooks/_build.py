"""Writes the example notebooks (without outputs) from the sources below.

    python notebooks/_build.py          # rewrite every notebook
    python notebooks/_build.py --check  # exit 1 if a committed notebook differs

The notebooks are generated so they stay tidy: no outputs, no widget state,
stable cell ids (clean diffs). Edit here, not in the .ipynb files.

Every notebook ends with one line ``CLOUDBUTTON_SUMMARY {json}``: the numbers
`make demo` and the CI tests read (results, wall time, GFLOPS...), so the
checks read what the notebook computed instead of re-deriving it.
"""
from __future__ import annotations

import os
import sys
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

SCALE = '''\
import os
# CLOUDBUTTON_DEMO_SCALE=small: the sizes CI uses (seconds); unset: the full local demo.
SMALL = os.environ.get("CLOUDBUTTON_DEMO_SCALE", "") == "small"'''


def md(text):
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text):
    return ("code", textwrap.dedent(text).strip("\n"))


NOTEBOOKS = {}

# ---------------------------------------------------------------------------
NOTEBOOKS["quickstart"] = [
    md("""
    # cloudbutton quickstart

    Run a notebook cell once per element of a list, on many short-lived stateless
    workers: local worker processes by default (same semantics as AWS Lambda),
    AWS Lambda with `--backend lambda` (see `lambda_setup.ipynb`).

    Load the magics:
    """),
    code("%load_ext cloudbutton_jupyter"),
    md("""
    ## PyWren's first example: add one

    In 2016 PyWren's first demo added 1 to the first 10 numbers on AWS Lambda.
    Here is the same with the `%%cloud map` cell magic: the cell runs once per
    element of `xlist` (bound to `x`), the value of its last expression is that
    task's result, and the results land in `results`, in order.
    """),
    code("xlist = list(range(10))"),
    code("""
    %%cloud map xlist as x
    x + 1
    """),
    code("results"),
    md("""
    ## A map over a list, with the names it needs

    The cell's free names travel with it: here the list `words`, the function
    `describe` defined in this notebook and the `time` module. Each task sleeps
    a little so you can watch the widget: counts, the per-task timeline
    (queue/invoke, setup, compute, return) and the rate plot. What the tasks
    print shows under the widget. `-o described` names the results.
    """),
    code("""
    import time

    words = ["cloud", "button", "serverless", "lambda", "pywren", "wren", "map", "reduce",
             "future", "notebook", "kernel", "worker", "stateless", "elastic", "burst",
             "python", "numpy", "jupyter", "storage", "manifest"]

    def describe(word):
        return {"word": word, "length": len(word), "vowels": sum(c in "aeiou" for c in word)}
    """),
    code("""
    %%cloud map words as word -o described
    time.sleep(0.3)
    print("working on", word)
    describe(word)
    """),
    code("""
    longest = max(described, key=lambda d: d["length"])
    print(f"{len(described)} results; the longest word is {longest['word']!r}")
    """),
    md("""
    ## The same with the Python API

    `Executor().map` returns a `Job`: a list of futures in input order, in the
    vocabulary of `concurrent.futures` (`result()`, `done()`, `wait`,
    `as_completed`). This is PyWren's example almost word for word.
    """),
    code("""
    from cloudbutton_executor import Executor

    def addone(x):
        return x + 1

    ex = Executor()                 # Executor(backend="lambda") for AWS Lambda
    futures = ex.map(addone, xlist)
    print([f.result() for f in futures])
    """),
    code("""
    futures.stats  # counts, timings, storage requests and what it would cost on Lambda
    """),
    md("*The line below is read by `make demo` and the CI tests.*"),
    code("""
    import json

    st = futures.stats
    print("CLOUDBUTTON_SUMMARY " + json.dumps({
        "notebook": "quickstart", "magic_results": [int(r) for r in results],
        "api_results": [int(f.result()) for f in futures], "described": len(described),
        "tasks": len(xlist) + len(words) + len(futures), "wall_s": round(st["elapsed_s"], 3)}))
    """),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["gflops_benchmark"] = [
    md("""
    # How many GFLOPS? PyWren's DGEMM benchmark

    PyWren's blog post ("Microservices and Teraflops", 2016) measured what a
    fleet of Lambda workers can compute: 1,600 tasks, each multiplying random
    4096×4096 matrices 10 times (BLAS `DGEMM`), peaking at over 25 TFLOPS in
    flight. Each task here does the same and reports its floating-point
    operations with `report_flops(n)`: a product of two n×n matrices costs
    2n³ FLOPs.

    The sizes below are scaled to finish in about a minute on 2 local cores.
    On Lambda, use the original configuration (second cell).
    """),
    code(SCALE + '''

if SMALL:
    N, LOOPCNT, TASKS = 256, 3, 8          # CI: a few seconds
else:
    N, LOOPCNT, TASKS = 1024, 10, 28       # about a minute on 2 cores
BACKEND = "local"
# The original PyWren configuration, for AWS Lambda (about 1.4 PFLOP in all):
# N, LOOPCNT, TASKS, BACKEND = 4096, 10, 1600, "lambda"
print(f"{TASKS} tasks x {LOOPCNT} products of {N}x{N} matrices = "
      f"{TASKS * LOOPCNT * 2 * N**3 / 1e9:,.1f} GFLOP on the {BACKEND} backend")'''),
    code("""
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
    """),
    code("# The magics; and a Job shows its live widget\n%load_ext cloudbutton_jupyter"),
    md("""
    Run it and watch the timeline (one row per task) and the GFLOPS plot:
    *effective* GFLOPS (all FLOPs of the finished tasks divided by the time since
    the job started, overhead included) and GFLOPS *in flight* (what the tasks
    computing at that moment produce together).
    """),
    code("""
    ex = Executor(BACKEND)
    job = ex.map(big_flops, std_devs)
    job  # a Job as the last expression shows its live widget; the cell does not wait
    """),
    code("sums = job.result()  # waits for every task"),
    md("""
    ## The phases of a task

    The timeline colours each task's life, with the names of PyWren's plot:

    - **host submit**: the host has pickled the function and inputs into
      storage and sent the invocation (grey bar: queued until a worker is free,
      which here is most of the wait: 2 workers for many tasks);
    - **start**: the worker's handler begins (a black triangle marks a cold
      start: a fresh process, or a fresh Lambda container);
    - **setup done**: the function and the task's input are loaded from storage
      (orange; on Lambda this includes S3 downloads);
    - **done**: the computation ended (green) and its result is stored; the
      purple bar is the host noticing and fetching it.

    The same numbers, from the futures' timestamps:
    """),
    code("""
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
    """),
    md("""
    ## Effective and peak in-flight GFLOPS

    As in the blog post: effective = total FLOPs / wall time from the first
    submit to the last result; in flight at time t = sum, over the tasks
    computing at t, of their FLOPs / compute time. Its maximum is the peak.
    """),
    code("""
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
    """),
    md("""
    Effective GFLOPS is lower than the peak: queueing, setup and stragglers are
    paid for in wall time. On 2 local cores the peak is about two cores' worth;
    on Lambda with 1,600 tasks in flight it was 25 TFLOPS.

    *The line below is read by `make demo` and the CI tests.*
    """),
    code("""
    import json

    print("CLOUDBUTTON_SUMMARY " + json.dumps({
        "notebook": "gflops_benchmark", "n": N, "loopcnt": LOOPCNT,
        "finite_results": int(np.isfinite(sums).sum()), **{k: round(v, 4) if isinstance(v, float) else v
                                                           for k, v in g.items()},
        "reported_flops": job.stats["flops"], "expected_flops": TASKS * LOOPCNT * 2 * N**3}))
    """),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["monte_carlo"] = [
    md("""
    # Monte Carlo in parallel: π, then a European option

    Monte Carlo estimates are embarrassingly parallel: each task draws its own
    random numbers from its own seed, and the partial sums combine at the end.
    `map_reduce(map_fn, seeds, reduce_fn)` runs the tasks, then one more task
    that receives the list of their results and reduces it next to the stored
    results (only the final value comes back). It returns a future.
    """),
    code(SCALE + '''

TASKS = 8 if SMALL else 32
SAMPLES = 200_000 if SMALL else 2_000_000   # per task'''),
    code("# The magics; and a Job shows its live widget\n%load_ext cloudbutton_jupyter"),
    md("""
    ## π

    A point drawn uniformly in the unit square falls inside the quarter disc
    with probability π/4.
    """),
    code("""
    import numpy as np
    from cloudbutton_executor import Executor

    def count_inside(seed):
        rng = np.random.default_rng(seed)
        xy = rng.random((SAMPLES, 2))
        return int(np.count_nonzero((xy ** 2).sum(axis=1) <= 1.0))

    def estimate_pi(counts):
        return 4.0 * sum(counts) / (len(counts) * SAMPLES)

    ex = Executor()
    seeds = list(range(TASKS))
    pi_future = ex.map_reduce(count_inside, seeds, estimate_pi)
    display(pi_future.map_job)  # the map job's live widget
    pi_hat = pi_future.result()
    print(f"pi ≈ {pi_hat:.5f} from {TASKS * SAMPLES:,} points (error {pi_hat - np.pi:+.5f})")
    """),
    md("""
    ## A European call under Black–Scholes dynamics

    Under the risk-neutral measure the stock follows
    S_T = S_0 exp((r − σ²/2) T + σ √T Z) with Z standard normal; a call pays
    max(S_T − K, 0) at T, and its price is the discounted mean payoff. Each
    task returns partial sums (Σ payoff, Σ payoff², n); the reduce step turns
    them into the price and its standard error. Black and Scholes' closed form
    gives the exact answer to compare with.
    """),
    code("""
    import math

    S0, K, r, sigma, T = 100.0, 105.0, 0.05, 0.2, 1.0

    def payoff_sums(seed):
        z = np.random.default_rng(1000 + seed).standard_normal(SAMPLES)
        st = S0 * np.exp((r - 0.5 * sigma**2) * T + sigma * math.sqrt(T) * z)
        pay = np.maximum(st - K, 0.0)
        return float(pay.sum()), float((pay ** 2).sum()), SAMPLES

    def price_from_sums(parts):
        s, s2, n = (sum(p[i] for p in parts) for i in range(3))
        mean = s / n
        sd = math.sqrt(max(s2 / n - mean**2, 0.0))
        disc = math.exp(-r * T)
        return {"price": disc * mean, "stderr": disc * sd / math.sqrt(n), "paths": n}

    def black_scholes_call(S0, K, r, sigma, T):
        Phi = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
        d1 = (math.log(S0 / K) + (r + 0.5 * sigma**2) * T) / (sigma * math.sqrt(T))
        d2 = d1 - sigma * math.sqrt(T)
        return S0 * Phi(d1) - K * math.exp(-r * T) * Phi(d2)

    option_future = ex.map_reduce(payoff_sums, seeds, price_from_sums)
    display(option_future.map_job)
    mc = option_future.result()
    exact = black_scholes_call(S0, K, r, sigma, T)
    print(f"Monte Carlo: {mc['price']:.4f} ± {mc['stderr']:.4f} ({mc['paths']:,} paths)")
    print(f"closed form: {exact:.4f}  (difference {(mc['price'] - exact) / mc['stderr']:+.2f} standard errors)")
    """),
    md("*The line below is read by the CI tests.*"),
    code("""
    import json

    print("CLOUDBUTTON_SUMMARY " + json.dumps({
        "notebook": "monte_carlo", "pi": pi_hat, "points": TASKS * SAMPLES,
        "mc_price": mc["price"], "mc_stderr": mc["stderr"], "bs_price": exact,
        "map_tasks": len(pi_future.map_job) + len(option_future.map_job)}))
    """),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["hyperparameter_search"] = [
    md("""
    # Hyperparameter search: K for K-nearest neighbours

    From the talk "Serverless for data science": two classes, two features, a
    K-nearest-neighbours classifier. K (how many neighbours vote) is a
    hyperparameter: try every value and keep the most accurate model. Each try
    is independent, so it is one task per K, and each task returns a *trained
    scikit-learn model*, not just a number.
    """),
    code("%load_ext cloudbutton_jupyter"),
    code("""
    import numpy as np
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    X, y = make_moons(n_samples=1000, noise=0.35, random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    print(f"{len(X_train)} training and {len(X_test)} test points, classes {np.bincount(y)}")
    """),
    md("A first model, trained locally with a guess for K:"),
    code("""
    local = KNeighborsClassifier(n_neighbors=1).fit(X_train, y_train)
    print(f"K=1: accuracy {local.score(X_test, y_test):.3f}")
    """),
    md("""
    Now one task per K (the odd values avoid ties between the two classes). The
    cell uses `X_train`, `y_train` and `KNeighborsClassifier` from the notebook:
    they travel with it. Its last expression, the fitted model, is the task's result.
    """),
    code("ks = list(range(1, 60, 2))"),
    code("""
    %%cloud map ks as k -o models
    KNeighborsClassifier(n_neighbors=k).fit(X_train, y_train)
    """),
    code("""
    scores = {m.n_neighbors: m.score(X_test, y_test) for m in models}
    best_k = max(scores, key=scores.get)
    best_model = next(m for m in models if m.n_neighbors == best_k)
    print(f"best K = {best_k}: accuracy {scores[best_k]:.3f} (K=1 gave {scores[1]:.3f})")
    """),
    code("""
    try:
        from bokeh.io import output_notebook, show
        from bokeh.plotting import figure
        from bokeh.resources import INLINE

        output_notebook(INLINE, hide_banner=True)  # inline BokehJS: works offline
        p = figure(height=250, width=600, title="Test accuracy by K", x_axis_label="K",
                   y_axis_label="accuracy")
        p.line(list(scores), list(scores.values()), line_width=2)
        p.scatter([best_k], [scores[best_k]], size=10, color="#d62728")
        show(p)
    except ImportError:
        pass
    """),
    md("""
    `best_model` is a real `KNeighborsClassifier`; use it like any other (the
    talk went on to serve it from a Lambda function):
    """),
    code("best_model.predict([[0.0, 1.0], [1.0, -0.5]])"),
    md("*The line below is read by the CI tests.*"),
    code("""
    import json

    print("CLOUDBUTTON_SUMMARY " + json.dumps({
        "notebook": "hyperparameter_search", "ks": ks, "best_k": best_k,
        "best_accuracy": scores[best_k], "accuracies": [scores[k] for k in ks],
        "model_types": sorted({type(m).__name__ for m in models}),
        "model_ks": [m.n_neighbors for m in models]}))
    """),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["batched_scraping"] = [
    md("""
    # Batching: why one page per task is slow

    In the talk "Serverless for data science", scraping conference abstracts
    one paper per Lambda task was slow: each task is quick, so the fixed cost
    of every invocation dominates. Mapping over *batches* of papers amortises
    it. Here we scrape a small site this notebook serves on 127.0.0.1 (the
    workers are processes on this machine, so they can reach it).

    The site mimics a real one: each page takes a little time to serve, and a
    client first opens a session (`/login`). A worker opens one session per
    invocation (the session token is kept in the invocation's scratch `/tmp`),
    which plays the role of the per-invocation overhead: on AWS Lambda that is
    the invocation, the cold start and the S3 round trips, tens of
    milliseconds to seconds; the local backend's own overhead is only about a
    millisecond.
    """),
    code("%load_ext cloudbutton_jupyter"),
    code(SCALE + '''

PAGES = 120 if SMALL else 400
PAGE_DELAY_S = 0.001     # the server's time per page
LOGIN_DELAY_S = 0.008    # the server's time to open a session'''),
    code("""
    import http.server
    import random
    import threading
    import time

    WORDS = ("serverless stateless lambda function batch map reduce cloud worker python numpy "
             "scale elastic storage latency throughput invocation overhead").split()
    PAPERS = {i: (f"Paper {i}: " + " ".join(random.Random(i).choices(WORDS, k=4)).title(),
                  " ".join(random.Random(-i).choices(WORDS, k=60)))
              for i in range(PAGES)}
    server_log = {"logins": 0, "pages": 0}

    class PaperSite(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/login":
                time.sleep(LOGIN_DELAY_S)
                server_log["logins"] += 1
                body = f"token-{server_log['logins']}"
            elif self.path.startswith("/paper/") and "?token=" in self.path:
                time.sleep(PAGE_DELAY_S)
                server_log["pages"] += 1
                i = int(self.path.split("/")[2].split("?")[0])
                title, abstract = PAPERS[i]
                body = f"<html><head><title>{title}</title></head><body><p class='abstract'>{abstract}</p></body></html>"
            else:
                self.send_error(403 if self.path.startswith("/paper/") else 404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the notebook quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PaperSite)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    BASE = f"http://127.0.0.1:{server.server_address[1]}"
    print("serving", PAGES, "papers at", BASE)
    """),
    md("""
    The scraper. `open_session` logs in once per invocation; `scrape` fetches
    one paper and parses its title and abstract.
    """),
    code("""
    import os
    import re
    import tempfile
    import urllib.request

    def open_session():
        path = os.path.join(tempfile.gettempdir(), "paper-site-session")
        if not os.path.exists(path):
            with urllib.request.urlopen(BASE + "/login") as r, open(path, "w") as f:
                f.write(r.read().decode())
        with open(path) as f:
            return f.read()

    def scrape(i):
        token = open_session()
        with urllib.request.urlopen(f"{BASE}/paper/{i}?token={token}") as r:
            page = r.read().decode()
        title = re.search(r"<title>(.*)</title>", page).group(1)
        abstract = re.search(r"<p class='abstract'>(.*)</p>", page).group(1)
        return {"id": i, "title": title, "abstract": abstract}

    paper_ids = list(range(PAGES))
    """),
    md("""
    To compare the modes we read each job back from storage
    (`Executor().jobs()` lists the manifests, `attach` rebuilds the job with
    its futures' timestamps): wall time from the first submit to the last
    stored result, and the number of invocations.
    """),
    code("""
    from cloudbutton_executor import Executor

    def last_job():
        ex = Executor()
        newest = max(ex.jobs(5), key=lambda m: m["created"])
        job = ex.attach(newest["job_id"])
        job.wait()
        return job

    def summarize(job, logins_before):
        st = [f.stats for f in job]
        wall = max(s["result_stored"] for s in st) - min(s["host_submit"] for s in st)
        return {"wall_s": round(wall, 3), "invocations": len({f.task_id for f in job}),
                "logins": server_log["logins"] - logins_before, "pages": len(job)}

    modes = {}
    """),
    md("## 1. One page per task"),
    code("logins_before = server_log['logins']"),
    code("""
    %%cloud map paper_ids as i -o one_per_task --chunksize 1
    scrape(i)
    """),
    code("""
    modes["one page per task"] = summarize(last_job(), logins_before)
    modes["one page per task"]
    """),
    md("""
    ## 2. Batches of 20 pages per invocation

    `--chunksize 20` sends 20 items per invocation; the cell still runs once
    per item, and the results still come back one per page, in order.
    """),
    code("logins_before = server_log['logins']"),
    code("""
    %%cloud map paper_ids as i -o batched --chunksize 20
    scrape(i)
    """),
    code("""
    modes["batches of 20"] = summarize(last_job(), logins_before)
    modes["batches of 20"]
    """),
    md("""
    ## 3. Let the executor choose: `--chunksize auto`

    The auto rule (joblib's) measures how long invocations take and grows the
    batches until one lasts about 50 ms locally (1 s on Lambda), while keeping
    enough batches to keep every worker busy until the end.
    """),
    code("logins_before = server_log['logins']"),
    code("""
    %%cloud map paper_ids as i -o auto_batched --chunksize auto
    scrape(i)
    """),
    code("""
    modes["auto"] = summarize(last_job(), logins_before)
    modes["auto"]
    """),
    md("## Comparison"),
    code("""
    print(f"{'mode':<20}{'wall time':>12}{'invocations':>13}{'logins':>8}{'pages/s':>10}")
    for name, m in modes.items():
        print(f"{name:<20}{m['wall_s']:>10.2f} s{m['invocations']:>13}{m['logins']:>8}"
              f"{m['pages'] / m['wall_s']:>10.0f}")
    assert one_per_task == batched == auto_batched  # same pages, same order
    print(f"\\nBatching is {modes['one page per task']['wall_s'] / modes['batches of 20']['wall_s']:.1f}x "
          "faster: every invocation pays its overhead once, whatever it carries.")
    """),
    md("""
    In the timelines above, one page per task shows a tall staircase of tiny
    tasks, each with its own submit, setup and return; batched, a few long
    rows do the same work. The lesson from the talk: when a task is short,
    accumulate work until the per-invocation overhead is worth paying.

    *The line below is read by the CI tests.*
    """),
    code("""
    import json

    server.shutdown()
    print("CLOUDBUTTON_SUMMARY " + json.dumps({
        "notebook": "batched_scraping", "pages": PAGES, "modes": modes,
        "titles_ok": all(p["title"] == PAPERS[p["id"]][0] for p in one_per_task),
        "ids": [p["id"] for p in auto_batched]}))
    """),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["lambda_setup"] = [
    md("""
    # From local to AWS Lambda

    Everything in these notebooks runs on the local backend by default. Moving
    to AWS Lambda takes three steps: credentials, a one-time deploy, and
    `--backend lambda` (or `Executor(backend="lambda")`).

    ## 1. Credentials and configuration

    Credentials come only from the standard AWS chain (`AWS_PROFILE`,
    `~/.aws/credentials`, environment variables, an instance role); the
    cloudbutton configuration never holds them and rejects a file that does.
    The configuration (`~/.cloudbutton/config.yaml`, or the file named by
    `$CLOUDBUTTON_CONFIG`) holds names and tuning only; every key is optional:

    ```yaml
    region: eu-west-1            # else AWS_REGION / the profile's region
    profile: research            # else AWS_PROFILE / the default chain
    bucket: my-cloudbutton       # default: cloudbutton-<account id>-<region>
    prefix: cloudbutton          # every object (and the IAM policy) lives under it
    lambda:
      function_name: cloudbutton-worker
      memory: 1024               # MB: also buys CPU (1,769 MB = one full vCPU)
      timeout: 300               # s, at most 900
      workers: 100               # concurrent invocations per job
    ```

    This cell shows the configuration this kernel will use:
    """),
    code("""
    import os
    from cloudbutton_executor import config

    cfg = config.load()
    print("config file:", cfg.path or "none (defaults)")
    print("region:", cfg.region, "| bucket:", cfg.bucket or "(default)", "| prefix:", cfg.prefix)
    print("function:", cfg.lambda_.function_name, f"| {cfg.lambda_.memory} MB, {cfg.lambda_.timeout} s,",
          cfg.lambda_.workers, "workers")
    """),
    md("""
    ## 2. Deploy the worker, once

    `cloudbutton deploy` creates (or updates, idempotently) the S3 bucket, an
    IAM role that can reach only the configured prefix and its logs, and the
    worker function: a zip of `cloudbutton_executor` and `cloudpickle`. Extra
    packages your tasks import go in a layer (`--requirements requirements.txt`)
    or a container image (`--image-uri`). In a terminal:

    ```
    cloudbutton deploy
    cloudbutton status      # credentials, deployed function, version check
    ```

    From the notebook, the same CLI as a function (it returns the exit status):
    """),
    code("""
    from cloudbutton_executor.cli import main as cloudbutton

    assert cloudbutton(["deploy"]) == 0
    """),
    code('assert cloudbutton(["status"]) == 0'),
    md("""
    ## 3. Run on Lambda

    The same cell as in the quickstart, with `--backend lambda` (or
    `%cloud config backend=lambda` to make it the session's default).
    Invocations are asynchronous; results and statuses go to S3 and the kernel
    polls for them.
    """),
    code("%load_ext cloudbutton_jupyter"),
    code("xs = list(range(20))"),
    code("""
    %%cloud map xs as x --backend lambda
    x * x
    """),
    code("print(results)"),
    md("""
    The Python API is the same switch:
    """),
    code("""
    from cloudbutton_executor import Executor

    lam = Executor(backend="lambda")
    job = lam.map(lambda x: x + 1, range(10))
    print(job.result())
    """),
    md("""
    ## 4. What it costs

    Lambda bills requests ($0.20 per million) and GB-seconds (memory × duration,
    about $0.0000167 per GB-s on x86); S3 bills requests ($0.005 per 1,000 PUTs,
    $0.0004 per 1,000 GETs). Every job's `stats` counts its invocations, its
    storage requests (host and workers) and its GB-seconds, and estimates the
    bill; the widget shows the same estimate while a job runs, also on the
    local backend ("≈ $… on Lambda"), so you know before moving.
    """),
    code("""
    st = job.stats
    print(f"{st['invocations']} invocations, {st['requests']['total']} storage requests "
          f"({st['requests']['per_task']:.1f} per task), {st['gb_seconds']:.3f} GB-s: ${st['cost_usd']:.6f}")
    """),
    md("""
    For scale: PyWren's 1,600-task DGEMM benchmark (about 75 s per task at
    1.5 GB) is about 180,000 GB-s, roughly $3 per run. Clean old jobs from S3
    with `cloudbutton clean --older-than 7d`.

    *The line below is read by the CI tests.*
    """),
    code("""
    import json

    print("CLOUDBUTTON_SUMMARY " + json.dumps({
        "notebook": "lambda_setup", "magic_results": results, "api_results": job.result(),
        "backend": job.backend.name, "invocations": st["invocations"], "cost_usd": st["cost_usd"]}))
    """),
]


def build(name, cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(src)
        cell.id = f"{name.replace('_', '-')}-{i:02d}"  # stable ids: clean diffs
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv) -> int:
    check = "--check" in argv
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = os.path.join(HERE, f"{name}.ipynb")
        text = nbformat.writes(build(name, cells)) + "\n"
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        stale.append(path)
            except FileNotFoundError:
                stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        print("out of date (run python notebooks/_build.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
