# ---
# jupyter:
#   jupytext:
#     formats: ipynb,src//py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="batching-why-one-page"
# # Batching: why one page per task is slow
#
# In the talk "Serverless for data science", scraping conference abstracts
# one paper per Lambda task was slow: each task is quick, so the fixed cost
# of every invocation dominates. Mapping over *batches* of papers amortises
# it. Here we scrape a small site this notebook serves on 127.0.0.1 (the
# workers are processes on this machine, so they can reach it).
#
# The site mimics a real one: each page takes a little time to serve, and a
# client first opens a session (`/login`). A worker opens one session per
# invocation (the session token is kept in the invocation's scratch `/tmp`),
# which plays the role of the per-invocation overhead: on AWS Lambda that is
# the invocation, the cold start and the S3 round trips, tens of
# milliseconds to seconds; the local backend's own overhead is only about a
# millisecond.

# %% id="load-ext-cloudbutton-jupyter"
# %load_ext cloudbutton_jupyter

# %% id="scale"
import os

# CLOUDBUTTON_DEMO_SCALE=small: the sizes CI uses (seconds); unset: the full local demo.
SMALL = os.environ.get("CLOUDBUTTON_DEMO_SCALE", "") == "small"

PAGES = 120 if SMALL else 400
PAGE_DELAY_S = 0.001     # the server's time per page
LOGIN_DELAY_S = 0.008    # the server's time to open a session

# %% id="site"
import http.server
import random
import threading
import time

WORDS = ["serverless", "stateless", "lambda", "function", "batch", "map", "reduce", "cloud", "worker", "python", "numpy", "scale", "elastic", "storage", "latency", "throughput", "invocation", "overhead"]
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

# %% [markdown] id="the-scraper-open-session"
# The scraper. `open_session` logs in once per invocation; `scrape` fetches
# one paper and parses its title and abstract.

# %% id="scraper"
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

# %% [markdown] id="to-compare-the-modes"
# To compare the modes we read each job back from storage
# (`Executor().jobs()` lists the manifests, `attach` rebuilds the job with
# its futures' timestamps): wall time from the first submit to the last
# stored result, and the number of invocations.

# %% id="executor"
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

# %% [markdown] id="1-one-page-per"
# ## 1. One page per task

# %% id="logins-before"
logins_before = server_log['logins']

# %% id="cloud-map-paper-ids"
# %%cloud map paper_ids as i -o one_per_task --chunksize 1
scrape(i)

# %% id="modes-one-page-per"
modes["one page per task"] = summarize(last_job(), logins_before)
modes["one page per task"]

# %% [markdown] id="2-batches-of-20"
# ## 2. Batches of 20 pages per invocation
#
# `--chunksize 20` sends 20 items per invocation; the cell still runs once
# per item, and the results still come back one per page, in order.

# %% id="logins-before-2"
logins_before = server_log['logins']

# %% id="cloud-map-paper-ids-2"
# %%cloud map paper_ids as i -o batched --chunksize 20
scrape(i)

# %% id="modes-batches-of-20"
modes["batches of 20"] = summarize(last_job(), logins_before)
modes["batches of 20"]

# %% [markdown] id="3-let-the-executor"
# ## 3. Let the executor choose: `--chunksize auto`
#
# The auto rule (joblib's) measures how long invocations take and grows the
# batches until one lasts about 50 ms locally (1 s on Lambda), while keeping
# enough batches to keep every worker busy until the end.

# %% id="logins-before-3"
logins_before = server_log['logins']

# %% id="cloud-map-paper-ids-3"
# %%cloud map paper_ids as i -o auto_batched --chunksize auto
scrape(i)

# %% id="modes-auto-summarize-last"
modes["auto"] = summarize(last_job(), logins_before)
modes["auto"]

# %% [markdown] id="comparison"
# ## Comparison

# %% id="print-f-mode-20"
print(f"{'mode':<20}{'wall time':>12}{'invocations':>13}{'logins':>8}{'pages/s':>10}")
for name, m in modes.items():
    print(f"{name:<20}{m['wall_s']:>10.2f} s{m['invocations']:>13}{m['logins']:>8}"
          f"{m['pages'] / m['wall_s']:>10.0f}")
assert one_per_task == batched == auto_batched  # same pages, same order
print(f"\nBatching is {modes['one page per task']['wall_s'] / modes['batches of 20']['wall_s']:.1f}x "
      "faster: every invocation pays its overhead once, whatever it carries.")

# %% [markdown] id="in-the-timelines-above"
# In the timelines above, one page per task shows a tall staircase of tiny
# tasks, each with its own submit, setup and return; batched, a few long
# rows do the same work. The lesson from the talk: when a task is short,
# accumulate work until the per-invocation overhead is worth paying.
#
# *The line below is read by the CI tests.*

# %% id="summary"
import json

server.shutdown()
print("CLOUDBUTTON_SUMMARY " + json.dumps({
    "notebook": "batched_scraping", "pages": PAGES, "modes": modes,
    "titles_ok": all(p["title"] == PAPERS[p["id"]][0] for p in one_per_task),
    "ids": [p["id"] for p in auto_batched]}))
