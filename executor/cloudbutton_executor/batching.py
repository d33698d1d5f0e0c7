"""Adaptive batch sizes for ``chunksize="auto"``.

The rule follows joblib's AutoBatchingMixin: measure how long a batch takes,
keep a smoothed estimate, and size the next batch so one invocation lasts
about ``target_s`` (long enough to amortise the invocation overhead: about a
millisecond locally, tens of milliseconds plus S3 round trips on Lambda), but
never so big that the last batches leave workers idle.
"""
from __future__ import annotations

import math


class AutoBatcher:
    def __init__(self, target_s: float, concurrency: int):
        if target_s <= 0:
            raise ValueError(f"the auto-batching target must be positive (got {target_s!r})")
        self.target_s = target_s
        self.concurrency = max(1, concurrency)
        self.size = 1
        self._per_item: float | None = None  # smoothed seconds per item

    def record(self, n_items: int, duration_s: float) -> None:
        if n_items <= 0:
            return
        per_item = max(duration_s, 1e-6) / n_items
        # Smooth like joblib (0.8 old + 0.2 new) once we have an estimate.
        self._per_item = per_item if self._per_item is None else 0.8 * self._per_item + 0.2 * per_item
        ideal = max(1, int(self.target_s / self._per_item))
        # Grow at most 8x per observation so a single fast outlier can't blow it up.
        self.size = max(1, min(ideal, self.size * 8))

    def next_size(self, remaining: int) -> int:
        """Batch size for the next invocation, balanced against the tail."""
        if remaining <= 0:
            return 0
        balance = max(1, math.ceil(remaining / (2 * self.concurrency)))
        if self._per_item is not None:
            # Never split the tail into invocations shorter than an eighth of the
            # target: below that the invocation overhead dominates, and a tail of
            # many tiny invocations (31, 23, 17, ... 1 items) finishes later, not sooner.
            balance = max(balance, int(self.target_s / 8 / self._per_item))
        return max(1, min(self.size, balance, remaining))
