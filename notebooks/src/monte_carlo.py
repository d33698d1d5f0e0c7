# ---
# jupyter:
#   jupytext:
#     formats: ipynb,src//py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="monte-carlo-in-parallel"
# # Monte Carlo in parallel: π, then a European option
#
# Monte Carlo estimates are embarrassingly parallel: each task draws its own
# random numbers from its own seed, and the partial sums combine at the end.
# `map_reduce(map_fn, seeds, reduce_fn)` runs the tasks, then one more task
# that receives the list of their results and reduces it next to the stored
# results (only the final value comes back). It returns a future.

# %% id="scale"
import os

# CLOUDBUTTON_DEMO_SCALE=small: the sizes CI uses (seconds); unset: the full local demo.
SMALL = os.environ.get("CLOUDBUTTON_DEMO_SCALE", "") == "small"

TASKS = 8 if SMALL else 32
SAMPLES = 200_000 if SMALL else 2_000_000   # per task

# %% id="load-ext"
# The magics; and a Job shows its live widget
# %load_ext cloudbutton_jupyter

# %% [markdown] id="pi"
# ## π
#
# A point drawn uniformly in the unit square falls inside the quarter disc
# with probability π/4.
# %% id="numpy"
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

# %% [markdown] id="a-european-call-under"
# ## A European call under Black–Scholes dynamics
#
# Under the risk-neutral measure the stock follows
# S_T = S_0 exp((r − σ²/2) T + σ √T Z) with Z standard normal; a call pays
# max(S_T − K, 0) at T, and its price is the discounted mean payoff. Each
# task returns partial sums (Σ payoff, Σ payoff², n); the reduce step turns
# them into the price and its standard error. Black and Scholes' closed form
# gives the exact answer to compare with.

# %% id="math"
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
    def Phi(x):  # the standard normal CDF
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    d1 = (math.log(S0 / K) + (r + 0.5 * sigma**2) * T) / (sigma * math.sqrt(T))
    d2 = d1 - sigma * math.sqrt(T)
    return S0 * Phi(d1) - K * math.exp(-r * T) * Phi(d2)

option_future = ex.map_reduce(payoff_sums, seeds, price_from_sums)
display(option_future.map_job)
mc = option_future.result()
exact = black_scholes_call(S0, K, r, sigma, T)
print(f"Monte Carlo: {mc['price']:.4f} ± {mc['stderr']:.4f} ({mc['paths']:,} paths)")
print(f"closed form: {exact:.4f}  (difference {(mc['price'] - exact) / mc['stderr']:+.2f} standard errors)")

# %% [markdown] id="summary-note"
# *The line below is read by the CI tests.*

# %% id="summary"
import json

print("CLOUDBUTTON_SUMMARY " + json.dumps({
    "notebook": "monte_carlo", "pi": pi_hat, "points": TASKS * SAMPLES,
    "mc_price": mc["price"], "mc_stderr": mc["stderr"], "bs_price": exact,
    "map_tasks": len(pi_future.map_job) + len(option_future.map_job)}))
