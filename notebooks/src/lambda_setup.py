# ---
# jupyter:
#   jupytext:
#     formats: ipynb,src//py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="from-local-to-aws"
# # From local to AWS Lambda
#
# Everything in these notebooks runs on the local backend by default. Moving
# to AWS Lambda takes three steps: credentials, a one-time deploy, and
# `--backend lambda` (or `Executor(backend="lambda")`).
#
# ## 1. Credentials and configuration
#
# Credentials come only from the standard AWS chain (`AWS_PROFILE`,
# `~/.aws/credentials`, environment variables, an instance role); the
# cloudbutton configuration never holds them and rejects a file that does.
# The configuration (`~/.cloudbutton/config.yaml`, or the file named by
# `$CLOUDBUTTON_CONFIG`) holds names and tuning only; every key is optional:
#
# ```yaml
# region: eu-west-1            # else AWS_REGION / the profile's region
# profile: research            # else AWS_PROFILE / the default chain
# bucket: my-cloudbutton       # default: cloudbutton-<account id>-<region>
# prefix: cloudbutton          # every object (and the IAM policy) lives under it
# lambda:
#   function_name: cloudbutton-worker
#   memory: 1024               # MB: also buys CPU (1,769 MB = one full vCPU)
#   timeout: 300               # s, at most 900
#   workers: 100               # concurrent invocations per job
# ```
#
# This cell shows the configuration this kernel will use:

# %% id="config"
from cloudbutton_executor import config

cfg = config.load()
print("config file:", cfg.path or "none (defaults)")
print("region:", cfg.region, "| bucket:", cfg.bucket or "(default)", "| prefix:", cfg.prefix)
print("function:", cfg.lambda_.function_name, f"| {cfg.lambda_.memory} MB, {cfg.lambda_.timeout} s,",
      cfg.lambda_.workers, "workers")

# %% [markdown] id="2-deploy-the-worker"
# ## 2. Deploy the worker, once
#
# `cloudbutton deploy` creates (or updates, idempotently) the S3 bucket, an
# IAM role that can reach only the configured prefix and its logs, and the
# worker function: a zip of `cloudbutton_executor` and `cloudpickle`. The
# packages your tasks import go in a layer (`--sync`: those your Lambda jobs
# imported, at this environment's versions; or `--requirements requirements.txt`)
# or a container image (`--image`). AWS retires old Python runtimes: when your
# kernel's Python can no longer be deployed as a zip, the deploy says so, with
# the dates and the ways out (`--image`, or a kernel on a newer Python). In a
# terminal:
#
# ```
# cloudbutton deploy
# cloudbutton status      # credentials, deployed function, version check
# ```
#
# From the notebook, the same CLI as a function (it returns the exit status):

# %% id="deploy"
from cloudbutton_executor.cli import main as cloudbutton

assert cloudbutton(["deploy"]) == 0

# %% id="assert-cloudbutton-status-0"
assert cloudbutton(["status"]) == 0

# %% [markdown] id="3-run-on-lambda"
# ## 3. Run on Lambda
#
# The same cell as in the quickstart, with `--backend lambda` (or
# `%cloud config backend=lambda` to make it the session's default).
# Invocations are asynchronous; results and statuses go to S3 and the kernel
# polls for them.

# %% id="load-ext-cloudbutton-jupyter"
# %load_ext cloudbutton_jupyter

# %% id="xs"
xs = list(range(20))

# %% id="cloud-map-xs-as"
# %%cloud map xs as x --backend lambda
x * x

# %% id="print-results"
print(results)

# %% [markdown] id="the-python-api-is"
# The Python API is the same switch:

# %% id="executor"
from cloudbutton_executor import Executor

lam = Executor(backend="lambda")
job = lam.map(lambda x: x + 1, range(10))
print(job.result())

# %% [markdown] id="4-what-it-costs"
# ## 4. What it costs
#
# Lambda bills requests and GB-seconds (memory × duration, cold starts' INIT
# included, at a lower price on arm64); S3 bills requests (PUT and LIST at one
# price, GET and HEAD at a tenth of it). Every job's `stats` counts its
# invocations, its storage requests (host and workers) and its GB-seconds, and
# prices them with the project's one cost model; the widget shows the same
# estimate while a job runs, also on the local backend ("≈ $… on Lambda"), so
# you know before moving. The prices, with their source:

# %% id="costs"
from cloudbutton_executor.accounting import PRICES

print(f"Lambda: ${PRICES.lambda_request * 1e6:.2f} per million requests, "
      f"${PRICES.lambda_gb_second['x86_64']:.10f} per GB-s on x86_64; S3: "
      f"${PRICES.s3_request['PUT'] * 1000:.4f} per 1,000 PUT or LIST, "
      f"${PRICES.s3_request['GET'] * 1000:.4f} per 1,000 GET ({PRICES.region}, {PRICES.checked})")
st = job.stats
print(f"{st['invocations']} invocations, {st['requests']['total']} storage requests "
      f"({st['requests']['per_task']:.1f} per task), {st['gb_seconds']:.3f} GB-s: ${st['cost_usd']:.6f}")

# %% [markdown] id="for-scale-pywren-s"
# For scale: PyWren's 1,600-task DGEMM benchmark (about 75 s per task at
# 1.5 GB) is about 180,000 GB-s, roughly $3 per run. Clean old jobs from S3
# with `cloudbutton clean --older-than 7d`.
#
# *The line below is read by the CI tests.*

# %% id="summary"
import json

print("CLOUDBUTTON_SUMMARY " + json.dumps({
    "notebook": "lambda_setup", "magic_results": results, "api_results": job.result(),
    "backend": job.backend.name, "invocations": st["invocations"], "cost_usd": st["cost_usd"]}))
