# ---
# jupyter:
#   jupytext:
#     formats: ipynb,src//py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="cloudbutton-quickstart"
# # cloudbutton quickstart
#
# Run a notebook cell once per element of a list, on many short-lived stateless
# workers: local worker processes by default (same semantics as AWS Lambda),
# AWS Lambda with `--backend lambda` (see `lambda_setup.ipynb`).
#
# Load the magics:

# %% id="load-ext-cloudbutton-jupyter"
# %load_ext cloudbutton_jupyter

# %% [markdown] id="pywren-s-first-example"
# ## PyWren's first example: add one
#
# In 2016 PyWren's first demo added 1 to the first 10 numbers on AWS Lambda.
# Here is the same with the `%%cloud map` cell magic: the cell runs once per
# element of `xlist` (bound to `x`), the value of its last expression is that
# task's result, and the results land in `results`, in order.

# %% id="xlist"
xlist = list(range(10))

# %% id="cloud-map-xlist-as"
# %%cloud map xlist as x
x + 1

# %% id="results"
results

# %% [markdown] id="a-map-over-a"
# ## A map over a list, with the names it needs
#
# The cell's free names travel with it: here the list `words`, the function
# `describe` defined in this notebook and the `time` module. Each task sleeps
# a little so you can watch the widget: counts, the per-task timeline
# (queue/invoke, setup, compute, return) and the rate plot. What the tasks
# print shows under the widget. `-o described` names the results.

# %% id="time"
import time

words = ["cloud", "button", "serverless", "lambda", "pywren", "wren", "map", "reduce",
         "future", "notebook", "kernel", "worker", "stateless", "elastic", "burst",
         "python", "numpy", "jupyter", "storage", "manifest"]

def describe(word):
    return {"word": word, "length": len(word), "vowels": sum(c in "aeiou" for c in word)}


# %% id="cloud-map-words-as"
# %%cloud map words as word -o described
time.sleep(0.3)
print("working on", word)
describe(word)

# %% id="longest"
longest = max(described, key=lambda d: d["length"])
print(f"{len(described)} results; the longest word is {longest['word']!r}")

# %% [markdown] id="the-same-with-the"
# ## The same with the Python API
#
# `Executor().map` returns a `Job`: a list of futures in input order, in the
# vocabulary of `concurrent.futures` (`result()`, `done()`, `wait`,
# `as_completed`). This is PyWren's example almost word for word.

# %% id="executor"
from cloudbutton_executor import Executor


def addone(x):
    return x + 1

ex = Executor()                 # Executor(backend="lambda") for AWS Lambda
futures = ex.map(addone, xlist)
print([f.result() for f in futures])

# %% id="futures-stats-counts-timings"
futures.stats  # counts, timings, storage requests and what it would cost on Lambda

# %% [markdown] id="summary-note"
# *The line below is read by `make demo` and the CI tests.*

# %% id="summary"
import json

st = futures.stats
print("CLOUDBUTTON_SUMMARY " + json.dumps({
    "notebook": "quickstart", "magic_results": [int(r) for r in results],
    "api_results": [int(f.result()) for f in futures], "described": len(described),
    "tasks": len(xlist) + len(words) + len(futures), "wall_s": round(st["elapsed_s"], 3)}))
