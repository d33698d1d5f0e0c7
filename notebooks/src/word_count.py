# ---
# jupyter:
#   jupytext:
#     formats: ipynb,src//py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="word-count-over-objects"
# # Word count over objects in storage
#
# A data-driven map: `ex.map(fn, "s3://bucket/prefix/", obj_chunk_size=...)` lists the
# prefix once, here, splits every object into chunks at line boundaries, and runs `fn`
# once per chunk. Each task streams only its own byte range (`obj.data_stream`, ranged
# GETs); no line is lost or counted twice, whatever the chunk size.
#
# The data goes to the S3 bucket `WORDCOUNT_DATA` names (`s3://bucket/prefix/`, with the
# config file's S3 endpoint: CI uses a moto server), else to a local directory that the
# local backend's workers read directly.

# %% id="scale"
import os
import tempfile

# CLOUDBUTTON_DEMO_SCALE=small: the sizes CI uses (seconds); unset: a few hundred MB.
SMALL = os.environ.get("CLOUDBUTTON_DEMO_SCALE", "") == "small"
OBJECTS = 8 if SMALL else 32
LINES = 4_000 if SMALL else 400_000        # per object (about 60 bytes a line)
CHUNK = 64 * 1024 if SMALL else 8 * 2**20  # bytes per task

DATA = os.environ.get("WORDCOUNT_DATA") or tempfile.mkdtemp(prefix="wordcount-") + "/"

# %% id="load-ext"
# %load_ext cloudbutton_jupyter

# %% [markdown] id="generate"
# ## Generated text
#
# Each object holds lines of words drawn from a small vocabulary, so the right answer is
# known here before anything runs.

# %% id="make-data"
import collections
import random

from cloudbutton_executor import Executor, ObjectStorage

VOCABULARY = ["cloud", "button", "lambda", "notebook", "chunk", "stream", "byte", "range",
              "worker", "task", "object", "prefix", "line", "word", "count", "data"]

def text(seed):
    rnd = random.Random(seed)
    lines = (" ".join(rnd.choices(VOCABULARY, k=rnd.randint(0, 14))) for _ in range(LINES))
    return ("\n".join(lines) + "\n").encode()

expected = collections.Counter()
total_bytes = 0
if DATA.startswith("s3://"):
    bucket, _, prefix = DATA[5:].partition("/")
    store = ObjectStorage()  # the host's S3, as the config file says
for i in range(OBJECTS):
    body = text(i)
    expected.update(body.split())
    total_bytes += len(body)
    name = f"part-{i:04d}.txt"
    if DATA.startswith("s3://"):
        store.put_object(bucket, prefix + name, body)
    else:
        with open(os.path.join(DATA, name), "wb") as f:
            f.write(body)
print(f"{OBJECTS} objects, {total_bytes / 2**20:.1f} MiB, {sum(expected.values()):,} words in {DATA}")

# %% [markdown] id="the-map"
# ## The map
#
# A task function whose parameter is named `obj` gets its chunk; it counts the words of
# the lines that start in it, and measures how fast it read.

# %% id="run"
import time


def count_words(obj):
    start = time.perf_counter()
    counts = collections.Counter()
    n = 0
    for line in obj.data_stream:
        n += len(line)
        counts.update(line.split())
    return {"counts": counts, "bytes": n, "seconds": time.perf_counter() - start}

ex = Executor()
job = ex.map(count_words, DATA, obj_chunk_size=CHUNK)
display(job)
parts = job.result()

total = collections.Counter()
for p in parts:
    total.update(p["counts"])
print(f"{len(parts)} tasks over {OBJECTS} objects: {sum(total.values()):,} words, "
      f"{'correct' if total == expected else 'WRONG'}")

# %% [markdown] id="throughput"
# ## Read throughput
#
# Per task: the bytes it read over the time it spent reading them; in total: every byte
# over the job's wall time (host listing to last result). The timeline above shows each
# task's read throughput too (hover a bar; the saved rendering labels each bar with its
# MB/s), from the statistics the worker keeps of every task's reads.

# %% id="rates"
rates = sorted(p["bytes"] / 2**20 / max(p["seconds"], 1e-9) for p in parts)
wall = job.stats["elapsed_s"]
print(f"per task: median {rates[len(rates) // 2]:.1f} MiB/s, min {rates[0]:.1f}, max {rates[-1]:.1f}")
print(f"aggregate: {total_bytes / 2**20 / wall:.1f} MiB/s over {wall:.2f} s")
print("top words:", ", ".join(f"{w.decode()} {n:,}" for w, n in total.most_common(5)))

# %% [markdown] id="summary-note"
# *The line below is read by the CI tests.*

# %% id="summary"
import json

print("CLOUDBUTTON_SUMMARY " + json.dumps({
    "notebook": "word_count", "data": DATA, "objects": OBJECTS, "tasks": len(parts),
    "bytes": total_bytes, "bytes_read": sum(p["bytes"] for p in parts),
    "words": sum(total.values()), "expected_words": sum(expected.values()),
    "correct": total == expected, "median_task_mib_s": rates[len(rates) // 2],
    "aggregate_mib_s": total_bytes / 2**20 / wall}))
ex.shutdown()
