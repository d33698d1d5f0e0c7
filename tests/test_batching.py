"""chunksize="auto": the batch-size rule itself (AutoBatcher), then a real run with fast
and slow items whose tail stays short."""
import math
import time

import pytest

from cloudbutton_executor import Executor
from cloudbutton_executor.batching import AutoBatcher


def test_starts_with_one_item_until_it_has_measured():
    b = AutoBatcher(target_s=1.0, concurrency=4)
    assert b.size == 1 and b.next_size(1000) == 1
    assert b.next_size(0) == 0 and b.next_size(-3) == 0


def test_grows_towards_the_target_at_most_eightfold_per_measurement():
    b = AutoBatcher(target_s=1.0, concurrency=1)
    b.record(1, 0.001)  # 1 ms per item: the target wants 1,000 per batch
    assert b.size == 8
    b.record(8, 0.008)
    assert b.size == 64
    b.record(64, 0.064)
    assert b.size == 512
    b.record(512, 0.512)
    assert b.size == 1000  # reached: no further growth
    b.record(1000, 1.0)
    assert b.size == 1000


def test_slow_items_shrink_the_batch_at_once():
    b = AutoBatcher(target_s=1.0, concurrency=1)
    b.record(1, 0.001)
    b.record(8, 0.008)
    assert b.size == 64
    b.record(64, 64 * 0.5)  # items became 500x slower
    per_item = 0.8 * 0.001 + 0.2 * 0.5
    assert b.size == int(1.0 / per_item) == 9


def test_estimate_is_smoothed_like_joblib():
    b = AutoBatcher(target_s=10.0, concurrency=1)
    b.record(1, 1.0)
    assert b.size == 8  # ideal 10, but at most 8x of 1
    b.record(2, 0.2)  # 0.1 s per item: smoothed to 0.8 * 1.0 + 0.2 * 0.1 = 0.82
    assert b.size == int(10.0 / 0.82) == 12
    b.record(0, 5.0)  # nothing measured: no change
    assert b.size == 12


def test_zero_duration_counts_as_a_microsecond():
    b = AutoBatcher(target_s=0.001, concurrency=1)
    b.record(1, 0.0)
    assert b.size == 8  # ideal 1000 (1e-6 s per item), capped at 8x
    assert b.next_size(10**6) == 8


@pytest.mark.parametrize("target", [0, -1.0])
def test_target_must_be_positive(target):
    with pytest.raises(ValueError, match="must be positive"):
        AutoBatcher(target_s=target, concurrency=2)


def measured(concurrency, per_item=0.001, target_s=1.0):
    """A batcher that has measured items of ``per_item`` s until its size settled."""
    b = AutoBatcher(target_s=target_s, concurrency=concurrency)
    while True:
        before = b.size
        b.record(before, before * per_item)
        if b.size == before:
            return b


def test_tail_is_split_across_the_workers():
    b = measured(concurrency=4)  # 1 ms items, 1 s target: 1,000 per batch
    assert b.size == 1000
    assert b.next_size(100_000) == 1000  # far from the end: the full batch
    assert b.next_size(4000) == 500  # ceil(4000 / (2 * 4)): every worker gets a share
    assert b.next_size(2001) == 251
    # ...but never below an eighth of the target (125 items of 1 ms): tiny invocations
    # would cost more overhead than the balance saves.
    assert b.next_size(800) == 125
    assert b.next_size(80) == 80  # never more than what remains
    assert b.next_size(1) == 1


def test_concurrency_below_one_counts_as_one():
    b = measured(concurrency=0)
    assert b.concurrency == 1
    assert b.next_size(4000) == 1000
    assert b.next_size(600) == 300  # ceil(600 / 2)


def test_a_whole_plan_ends_in_shrinking_batches():
    """Simulate the executor's loop: with 2 workers the last invocations get smaller,
    and none near the end holds more than a quarter of what remained."""
    b = AutoBatcher(target_s=0.05, concurrency=2)
    remaining, sizes = 5000, []
    while remaining:
        n = b.next_size(remaining)
        assert n <= max(math.ceil(remaining / 4), int(0.05 / 8 / 0.0001)), (n, remaining)
        sizes.append(n)
        remaining -= n
        b.record(n, n * 0.0001)
    assert sum(sizes) == 5000
    assert max(sizes) == 500 and sizes[-1] < sizes[len(sizes) // 2]


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_mixed_fast_and_slow_items_keep_the_tail_short(storage):
    """600 fast items then 40 slow ones (50 ms each), 2 workers, target 50 ms per
    invocation. When the slow items arrive the batcher still thinks items are fast; tail
    balancing keeps any one invocation to a share of what remains, so no worker ends long
    after the other. Unbalanced, one invocation takes most of the slow items (> 1 s)."""
    items = [0.001] * 600 + [0.05] * 40
    with Executor(workers=2, storage=storage, timeout=60) as ex:
        job = ex.map(nap, items, chunksize="auto")
        assert job.result(timeout=120) == items
        spans = {}
        for i in range(len(items)):
            s = job[i].stats
            spans[job[i].task_id] = (s["worker_start"], s["compute_done"])
    longest = max(b - a for a, b in spans.values())
    slow_in_one = max(sum(1 for i in range(600, 640) if job[i].task_id == tid) for tid in spans)
    assert slow_in_one <= 10, slow_in_one
    assert longest < 0.9, longest
