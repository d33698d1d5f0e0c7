"""What the dispatcher sends and spends, checked value by value with a fake clock.

The budget's worst case and estimates (the figures that decide whether a job is held
back to a probe or stopped), the timings a finished job leaves, the inputs and function
a job attached from storage reads back, the result cache's hits, retries, redeliveries
and backups as their events and counts show them, and the log line of a monitoring
error. The backend is ``test_dispatch``'s in-process double; nothing here sleeps.
"""
from __future__ import annotations

import base64
import json
import logging
import statistics

import pytest

from cloudbutton_executor import (
    InfrastructureError,
    __version__,
    IntegrityError,
    LostInvocationError,
    TaskTimeoutError,
    WorkerDiedError,
    accounting,
    cache,
    integrity,
    protocol,
    records,
    serialize,
    spending,
    worker,
)
from cloudbutton_executor import dispatch
from cloudbutton_executor.dispatch import JobSpec
from cloudbutton_executor.job import new_job
from test_backups import run_all_but
from test_budget import drain, identity_of
from test_dispatch import (
    PREFIX,
    FakeBackend,
    FakeClock,
    FlakyStorage,
    following,
    forge_status,
    square,
    start_job,
    stored_status,
)


@pytest.fixture
def clock():
    return FakeClock()


def submit(storage, be, clock, items, *, fn=square, payloads=None, memory_mb=1024,
           use_cache=False, chunksize=1, timeout=10.0, **spec_options):
    """``start_job`` with a memory size and payloads of choice, and the cache looked up
    before the start (as ``Executor.map`` does for ``cache=True``)."""
    blob = serialize.dumps(fn)
    fkey = protocol.function_key(PREFIX, serialize.digest(blob))
    storage.put(fkey, blob)
    spec = JobSpec(job_id=protocol.new_job_id(), prefix=PREFIX, function_key=fkey,
                   function_name=fn.__name__, n_items=len(items), chunksize=chunksize,
                   timeout=timeout, retries=0, memory_mb=memory_mb, created=clock(),
                   **spec_options)
    if payloads is None:
        payloads = serialize.dumps_scalar_calls(list(items))
    job = new_job(spec, be, storage, payloads, clock)
    if use_cache:
        job.dispatcher.use_cache()
    job.dispatcher.start()
    return job



# The manifest ---------------------------------------------------------------------------------
def test_a_manifest_states_every_setting_and_gives_the_same_spec_back(clock):
    spec = JobSpec(job_id="20260101-000000000-abcdef", prefix="cb", function_key="cb/fn/xyz",
                   function_name="f", n_items=7, chunksize="auto", timeout=2.5, retries=3,
                   memory_mb=2048, created=1_700_000_000.25, label="In[3]",
                   reduce={"job_id": "j0", "tasks": ["t"]}, batch_target_s=4.0, backups=False,
                   cache=True, identity="ab" * 32, budget_usd=0.5, rerun_of="j0")
    manifest = spec.manifest("lambda", "arm64")
    assert manifest == {
        "v": protocol.PROTOCOL_VERSION, "job_id": spec.job_id, "created": 1_700_000_000.25,
        "backend": "lambda", "architecture": "arm64", "function": "f",
        "function_key": "cb/fn/xyz", "label": "In[3]", "n_items": 7, "chunksize": "auto",
        "timeout": 2.5, "memory_mb": 2048, "retries": 3, "executor_version": __version__,
        "reduce": {"job_id": "j0", "tasks": ["t"]}, "batch_target_s": 4.0, "backups": False,
        "cache": True, "identity": "ab" * 32, "budget_usd": 0.5, "rerun_of": "j0"}
    # As stored (JSON) and read back by a host that attaches: the same spec, its prefix
    # the reader's.
    assert JobSpec.from_manifest(json.loads(json.dumps(manifest)), "cb") == spec


def test_a_manifest_of_an_older_version_reads_with_the_defaults_of_its_missing_settings():
    manifest = {"job_id": "20250101-000000000-abcdef", "function_key": "p/fn/k",
                "function": "g", "n_items": 4.0, "chunksize": 2, "timeout": 10,
                "memory_mb": 512.0, "created": 1_600_000_000}
    spec = JobSpec.from_manifest(manifest, "p")
    assert spec == JobSpec(job_id="20250101-000000000-abcdef", prefix="p",
                           function_key="p/fn/k", function_name="g", n_items=4, chunksize=2,
                           timeout=10.0, retries=0, memory_mb=512, created=1_600_000_000.0)
    assert (spec.backups, spec.cache, spec.label, spec.budget_usd) == (True, False, None, None)
    # Numbers as the types the dispatcher computes with.
    assert [type(v) for v in (spec.n_items, spec.timeout, spec.retries, spec.memory_mb,
                              spec.created)] == [int, float, int, int, float]
    # A manifest that says null for retries (none allowed) and for backups (off).
    assert JobSpec.from_manifest(dict(manifest, retries=None, backups=None), "p").retries == 0
    assert JobSpec.from_manifest(dict(manifest, backups=None), "p").backups is False


# Events ----------------------------------------------------------------------------------------
def test_an_event_carries_its_items_inline_up_to_the_limit_then_by_reference(storage, clock):
    items = ["a" * 40, "b" * 41]
    size = len(serialize.dumps_scalar_calls(items[:1])[0])
    # Half the payload limit may go inline: exactly the first item's size.
    be = FakeBackend(payload_limit_bytes=2 * size, live_stdout_s=1.5, max_timeout_s=25.0)
    job = submit(storage, be, clock, items, fn=len, timeout=20.0)
    inline, by_ref = be.sent
    common = {"v": protocol.PROTOCOL_VERSION, "job_id": job.job_id, "prefix": PREFIX,
              "storage": storage.describe(), "function_key": job.spec.function_key,
              "host_submit": clock(), "attempt": 0, "timeout": 20.0, "memory_mb": 1024,
              "auth": job.dispatcher.key.hex(), "live_stdout": 1.5, "reply_status": True}
    inputs = job.dispatcher.inputs
    assert inline == dict(common, task=protocol.task_id(0, 1, 2), data={
        "inline": base64.b64encode(serialize.join(job.dispatcher.item_payloads([0]))).decode(),
        **protocol.encode_item_sizes(inputs.sizes[0:1])})
    data_key = protocol.data_key(PREFIX, job.job_id)
    stored = storage.get(data_key)
    assert by_ref == dict(common, task=protocol.task_id(1, 2, 2), data={
        "key": data_key, "start": size, "stop": size + size + 1,
        "blocks": [[0, len(stored), integrity.sha256(stored)]],
        **protocol.encode_item_sizes(inputs.sizes[1:2])})
    for e in be.sent:
        be.run(e)
    assert job.result(timeout=0) == [40, 41]  # the worker read each way


def test_a_reduce_event_carries_the_map_jobs_tasks_and_key_and_no_items(storage, clock):
    be = FakeBackend()
    mapped = start_job(storage, be, clock, [1, 2, 3])
    for e in list(be.sent):
        be.run(e)
    tasks = mapped.task_ids()
    be2 = FakeBackend()
    job = submit(storage, be2, clock, [None], fn=sum, payloads=[b""],
                 reduce={"job_id": mapped.job_id, "tasks": tasks})
    (event,) = be2.sent
    assert event["data"] == {"offsets": [0, 0], "inline": ""}
    assert event["reduce"] == {"job_id": mapped.job_id, "tasks": tasks,
                               "auth": integrity.job_key(mapped.job_id).hex()}
    be2.run(event)
    assert job.result(timeout=0) == [1 + 4 + 9]


def test_start_stores_the_manifest_with_the_inputs_index_and_nothing_about_a_cache(
        storage, clock):
    be = FakeBackend(architecture="arm64")
    job = start_job(storage, be, clock, [1, 2, 3])
    stored = job.dispatcher.read_manifest()
    data = stored.pop("data")
    assert stored == job.spec.manifest("fake", "arm64")  # no "cached" runs: none were served
    index = storage.get(protocol.data_index_key(PREFIX, job.job_id))
    assert data == {"bytes": len(storage.get(protocol.data_key(PREFIX, job.job_id))), "n": 3,
                    "index_sha256": integrity.sha256(index)}
    # Not cancelled, not attached (a job this host sends), no error: falsy is not enough.
    assert job.cancelled is False and job.cancelled_at is None and job.attached is False


def test_an_item_sent_shows_when_it_was_sent_before_any_status_comes(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    t0 = clock()
    assert [job.item_stats(i) for i in range(2)] == [{"host_submit": t0}] * 2
    clock.advance(3.0)
    be.listener.on_start(be.sent[1])
    assert job.item_stats(1) == {"host_submit": t0, "host_start_seen": t0 + 3.0}


def test_auto_batches_keep_twice_the_concurrency_in_flight_and_two_at_the_least(storage, clock):
    one = FakeBackend(concurrency=1)
    start_job(storage, one, clock, list(range(50)), chunksize="auto")
    three = FakeBackend(concurrency=3)
    start_job(storage, three, clock, list(range(50)), chunksize="auto")
    # No timing yet: one item an invocation.
    assert [len(one.sent), len(three.sent)] == [2, 6]
    assert all(protocol.task_range(e["task"])[1] - protocol.task_range(e["task"])[0] == 1
               for e in one.sent + three.sent)


def test_stored_inputs_are_hashed_in_blocks_that_end_on_task_boundaries(storage, clock):
    # Three items of ~100 KB a task, by reference: each task's items are one block (on
    # item boundaries a task would read and check two blocks, one shared with the next).
    be = FakeBackend()
    job = submit(storage, be, clock, ["x" * 100_000] * 6, fn=len, chunksize=3)
    stored = storage.get(protocol.data_key(PREFIX, job.job_id))
    half = len(stored) // 2
    assert [e["data"]["blocks"] for e in be.sent] == [
        [[0, half, integrity.sha256(stored[:half])]],
        [[half, len(stored), integrity.sha256(stored[half:])]]]
    for e in be.sent:
        be.run(e)
    assert job.result(timeout=0) == [100_000] * 6


def test_a_job_the_cache_served_in_part_stores_its_inputs_and_says_which_runs_were_served(
        storage, clock):
    ident = identity_of(16)
    be = FakeBackend()
    submit(storage, be, clock, [2, 3, 5], identity=ident, cache=True, use_cache=True)
    drain(be)
    # Items 1..3 cached: the first item alone is computed, from the stored inputs.
    be2 = FakeBackend()
    job = submit(storage, be2, clock, [7, 2, 3, 5], identity=ident, cache=True,
                 use_cache=True)
    assert job.dispatcher.read_manifest()["cached"] == [[1, 4]]
    assert [protocol.task_range(e["task"]) for e in be2.sent] == [(0, 1)]
    drain(be2)
    assert job.result(timeout=0) == [49, 4, 9, 25]


def test_a_task_never_covers_an_item_the_cache_served(storage, clock):
    ident = identity_of(17)
    be = FakeBackend()
    submit(storage, be, clock, [2, 3], identity=ident, cache=True, use_cache=True)
    drain(be)
    # Items 0 and 2 cached: at chunksize 2 the open items 1 and 3 are tasks of one item.
    be2 = FakeBackend()
    job = submit(storage, be2, clock, [2, 7, 3, 8], identity=ident, cache=True,
                 use_cache=True, chunksize=2)
    drain(be2)
    assert [protocol.task_range(e["task"]) for e in be2.sent] == [(1, 2), (3, 4)]
    assert job.result(timeout=0) == [4, 49, 9, 64] and job.counts()["cached"] == 2


def test_auto_batches_grow_from_what_ran_and_a_failed_task_teaches_nothing(storage, clock):
    be = FakeBackend(concurrency=1)
    job = start_job(storage, be, clock, list(range(50)), chunksize="auto")
    first, second = be.sent
    be.run(first)  # microseconds an item: the next batch is 8 times larger (the most)
    assert protocol.task_range(be.sent[-1]["task"]) == (2, 10)
    # A failure the host stores has no compute time: the sizes do not change.
    be.listener.on_failure(second, WorkerDiedError("died", second["task"]))
    assert job.item_state(1) == "failed" and job.monitor_error is None
    assert protocol.task_range(be.sent[-1]["task"]) == (10, 18)

# The budget: worst case, estimates, timings ----------------------------------------------
def worst_usd(n_items, size, timeout, cap, memory_mb, architecture):
    """Every invocation of the job running to its timeout (capped), at its memory."""
    n = -(-n_items // size)
    return accounting.cost(accounting.Usage(tasks=n, invocations=n,
                                            run_s=n * min(timeout * size, cap)),
                           memory_mb=memory_mb, architecture=architecture)["cost_usd"]


@pytest.mark.parametrize("chunksize, size", [(3, 3), ("auto", 1)])
@pytest.mark.parametrize("margin, probed", [(1.0001, False), (0.9999, True)])
def test_the_worst_case_that_spares_a_probe_counts_every_invocation_at_its_capped_timeout(
        storage, clock, chunksize, size, margin, probed):
    # 31 items (not a multiple of 3), 2 GB on arm64, a 25 s cap under 3 x 10 s: a budget a
    # hair above the worst case sends at once, a hair below holds the job to a probe.
    be = FakeBackend(architecture="arm64", concurrency=10, max_timeout_s=25.0)
    budget = worst_usd(31, size, 10.0, 25.0, 2048, "arm64") * margin
    job = submit(storage, be, clock, list(range(31)), memory_mb=2048, chunksize=chunksize,
                 budget_usd=budget)
    sent = sum(protocol.task_range(e["task"])[1] - protocol.task_range(e["task"])[0]
               for e in be.sent)
    if probed:  # a probe of PROBE_INVOCATIONS invocations
        assert len(be.sent) == spending.PROBE_INVOCATIONS and sent == spending.PROBE_INVOCATIONS * size
    else:
        assert sent == (31 if chunksize == 3 else 20)  # "auto": a window of 2 x concurrency
    assert job.spending["estimate"] is None and not job.stop_reason


def test_a_probe_of_batched_items_runs_three_invocations_then_the_rest_goes(storage, clock):
    # The estimate needs PROBE_INVOCATIONS tasks: a probe of 3 items at chunksize 3 (one
    # invocation) gave none, and the job waited for ever.
    be = FakeBackend(architecture="x86_64", concurrency=10)
    job = start_job(storage, be, clock, list(range(40)), chunksize=3, budget_usd=0.005)
    assert [protocol.task_range(e["task"]) for e in be.sent] == [(0, 3), (3, 6), (6, 9)]
    drain(be)
    est = job.spending["estimate"]
    assert est["source"] == "probe" and (est["invocations"], est["items"]) == (14, 40)
    assert len(be.sent) == 14 and job.result(timeout=0) == [x * x for x in range(40)]


def test_earlier_runs_give_the_estimate_of_every_open_item(storage, clock):
    ident = identity_of(11)
    usage = accounting.Usage(tasks=4, invocations=5, run_s=40.0, init_s=2.0,
                             requests={"GET": 8, "PUT": 4})
    cache.write_timings(storage, PREFIX, ident, usage, 12, 7.5)
    be = FakeBackend(architecture="arm64", concurrency=4)
    job = submit(storage, be, clock, list(range(30)), memory_mb=2048, chunksize=3,
                 identity=ident, budget_usd=10.0)
    # 30 items at 3 an invocation: 10 invocations, 3 waves of 4 at 7.5 s each.
    assert job.spending["estimate"] == {
        "invocations": 10, "items": 30, "seconds": 3 * 7.5, "source": "earlier runs",
        "usd": accounting.cost(accounting.scaled(usage, 30 / 12), memory_mb=2048,
                               architecture="arm64")["cost_usd"]}
    assert len(be.sent) == 10  # the estimate is within the budget: no probe


def test_the_first_three_tasks_make_the_estimate_and_only_a_finished_job_leaves_timings(
        storage, clock):
    ident = identity_of(12)
    be = FakeBackend(concurrency=100)  # not billed: no probe, every task sent at once
    job = submit(storage, be, clock, list(range(10)), identity=ident, budget_usd=10.0)
    assert len(be.sent) == 10
    for e in be.sent[:2]:
        be.run(e)
    assert job.spending["estimate"] is None
    be.run(be.sent[2])
    est = job.spending["estimate"]
    assert est["source"] == "first tasks" and (est["invocations"], est["items"]) == (10, 10)
    # Timings describe a whole run: none while the job still runs.
    assert cache.read_timings(storage, PREFIX, ident) is None
    for e in be.sent[3:]:
        be.run(e)
    usage, items, wall = cache.read_timings(storage, PREFIX, ident)
    assert job.done() and items == 10 and usage.tasks == 10 and usage.invocations == 10
    walls = []
    for e in be.sent:
        st = stored_status(storage, job, e["task"])["stats"]
        walls.append(st["result_stored"] - st["host_submit"])
    assert wall == statistics.median(walls) > 0
    assert job.spending["estimate"]["source"] == "first tasks"  # made once


def test_a_budget_stop_counts_the_items_the_cache_served_among_those_with_results(
        storage, clock, caplog):
    ident = identity_of(13)
    be = FakeBackend(concurrency=100)
    first = submit(storage, be, clock, list(range(5)), identity=ident, cache=True,
                   use_cache=True)
    drain(be)
    assert first.result(timeout=0) == [0, 1, 4, 9, 16]
    caplog.set_level(logging.WARNING, logger="cloudbutton.dispatch")
    be2 = FakeBackend(concurrency=100)
    job = submit(storage, be2, clock, list(range(40)), identity=ident, cache=True,
                 use_cache=True, budget_usd=1e-12)
    assert job.counts()["cached"] == 5 and len(be2.sent) == 35
    be2.run(be2.sent[0])  # any cost passes this budget: stopped after one task
    # 1 computed + 5 from the cache have results.
    assert job.cancelled and job.stop_reason == (
        "stopped by its budget: it has spent < $0.0001, over its budget of < $0.0001; "
        "6 of 40 items have results, every one kept")
    assert f"job {job.job_id} {job.stop_reason}" in caplog.messages


# Inputs and function read back ------------------------------------------------------------
def test_a_job_attached_from_storage_reads_each_items_call_from_its_stored_inputs(
        storage, clock):
    job = start_job(storage, FakeBackend(), clock, [10, "eleven", 12, "thirteen"])
    sender = job.dispatcher.item_payloads([2, 1])
    attached = new_job(job.spec, FakeBackend(), storage, None, clock)
    # Middle items, out of order: each call's own bytes, exactly as the sender has them.
    assert attached.dispatcher.item_payloads([2, 1]) == sender
    assert [serialize.loads(p) for p in sender] == [((12,), {}), (("eleven",), {})]
    assert attached.item_input_repr(3) == "'thirteen'"


def test_a_job_the_cache_served_whole_stored_no_inputs_to_read_back(storage, clock):
    ident = identity_of(14)
    be = FakeBackend()
    drain_first = submit(storage, be, clock, [1, 2], identity=ident, cache=True, use_cache=True)
    drain(be)
    assert drain_first.done()
    be2 = FakeBackend()
    job = submit(storage, be2, clock, [1, 2], identity=ident, cache=True, use_cache=True)
    assert be2.sent == [] and job.counts()["cached"] == 2
    attached = new_job(job.spec, FakeBackend(), storage, None, clock)
    with pytest.raises(RuntimeError) as err:
        attached.dispatcher.item_payloads([0])
    assert str(err.value) == f"job {job.job_id} stored no inputs"
    assert attached.item_input_repr(0) == (f"<not available: RuntimeError: job {job.job_id} "
                                           "stored no inputs>")


def test_the_function_is_read_back_only_if_it_matches_its_content_address(storage, clock):
    job = start_job(storage, FakeBackend(), clock, [1])
    blob = serialize.dumps(square)
    assert job.dispatcher.function_blob() == blob
    # Other bytes under the function's name (a tampered object): refused by name.
    storage.put(job.spec.function_key, blob + b".")
    with pytest.raises(IntegrityError) as err:
        job.dispatcher.function_blob()
    assert str(err.value) == (f"the function blob {job.spec.function_key} does not match "
                              "its name")


# Sending again: redeliveries, backups, retries ------------------------------------------
def test_each_redelivery_of_a_lost_event_spends_one_of_the_backends_budget(storage, clock):
    be = FakeBackend(redeliveries=2)
    job = start_job(storage, be, clock, [5])
    tid = be.sent[0]["task"]
    for n in (1, 2):
        be.listener.on_lost(be.sent[-1], LostInvocationError(f"lost ({n})", tid))
        assert [e["attempt"] for e in be.sent] == list(range(n + 1)) and not job.done()
    be.listener.on_lost(be.sent[-1], LostInvocationError("lost (3)", tid))
    (err,) = job.results(timeout=0)
    assert len(be.sent) == 3 and isinstance(err, LostInvocationError) and str(err) == "lost (3)"


def test_a_task_only_accepted_is_slow_from_its_acceptance_and_gets_a_backup(storage, clock):
    # A backend that reports acceptance but no start (Lambda): the straggler's start is
    # when its first attempt was accepted.
    be = FakeBackend(reports_accepted=True)
    job = start_job(storage, be, clock, list(range(12)))
    for e in be.sent:
        be.listener.on_accepted(e, clock())
    straggler = be.sent[7]
    run_all_but(be, straggler["task"])
    clock.advance(60)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert len(be.sent) == 13 and backup["task"] == straggler["task"]
    assert backup["backup"] == "slow" and backup["attempt"] == 1



@pytest.mark.parametrize("n, chunksize, done, backed_up", [
    (16, 1, 6, False),  # 6 done of 2 running + 8 unplanned tasks: not half
    (16, 1, 8, True),   # 8 of 16: half
    (10, 1, 5, True),   # 5 of 10: the smallest job with backups, half done
    (32, 2, 8, True),   # 8 of 16 tasks of 2 items (12 unplanned items are 6 tasks)
])
def test_tasks_not_yet_planned_count_toward_the_job_size_for_backups(storage, clock, n,
                                                                    chunksize, done, backed_up):
    # Two in flight at once (a capped backend): the rest is planned as tasks end, and the
    # rule counts it at the size of the tasks so far.
    be = FakeBackend(max_inflight=2)
    job = start_job(storage, be, clock, list(range(n)), chunksize=chunksize)
    straggler = be.sent[0]
    be.listener.on_start(straggler)
    for k in range(1, done + 1):
        be.run(be.sent[k])  # each end sends the next task
    assert len(be.sent) == done + 2
    clock.advance(60)
    job.dispatcher.tick()
    assert (len(be.sent) == done + 3) is backed_up
    if backed_up:
        assert be.sent[-1]["task"] == straggler["task"] and be.sent[-1]["backup"] == "slow"


def test_the_slow_limit_is_three_times_the_median_per_item_time_and_half_a_second_more(
        storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, list(range(24)), chunksize=2)
    for e in be.sent[1:]:
        be.run(e)
    per_item = []
    for e in be.sent[1:]:
        st = stored_status(storage, job, e["task"])["stats"]
        per_item.append((st["result_stored"] - st["worker_start"]) / 2)
    median = sorted(per_item)[len(per_item) // 2]  # the 6th of 11
    assert job.dispatcher._slow_limit() == max(dispatch.BACKUP_SLOW_FACTOR * median,
                                               median + dispatch.BACKUP_MIN_EXTRA_S)


def test_a_take_over_with_its_window_full_of_inherited_tasks_sends_nothing_more(storage, clock):
    # Lambda-like: events outlive their host, at most 2 in flight. The host dies with 2
    # sent; the one taking over sends the third item only once one of those has ended.
    limits = dict(max_inflight=2, calls_back=False, deadline_grace_s=5.0, lost_after_s=30.0,
                  reports_accepted=True)
    be = FakeBackend(**limits)
    job = start_job(storage, be, clock, [1, 2, 3, 4], timeout=100.0)
    assert len(be.sent) == 2
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # the record now says: two in flight
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    be2 = FakeBackend(**limits)
    other = following(storage, clock, job, be2)
    assert other.dispatcher.check_owner(clock(), force=True)
    assert be2.sent == []
    worker.handler(be.sent[0])  # an inherited task stores its status
    other.dispatcher.tick()
    assert [protocol.task_range(e["task"]) for e in be2.sent] == [(2, 3)]


def test_each_backup_is_counted_noted_with_when_it_was_sent_and_logged(storage, clock, caplog):
    caplog.set_level(logging.INFO, logger="cloudbutton.dispatch")
    be = FakeBackend()
    job = start_job(storage, be, clock, list(range(12)))
    for e in be.sent:
        be.listener.on_start(e)
    slow = {be.sent[3]["task"], be.sent[8]["task"]}
    for e in list(be.sent):
        if e["task"] not in slow:
            be.run(e)
    clock.advance(60)
    job.dispatcher.tick()
    backups = be.sent[12:]
    assert sorted(e["task"] for e in backups) == sorted(slow)
    assert job.backups_sent == 2 and job.stats["backups"] == 2
    assert caplog.messages[-1] == (f"job {job.job_id}: backup invocations for "
                                   f"{backups[0]['task']} (slow), {backups[1]['task']} (slow)")
    for e in backups:
        i = protocol.task_range(e["task"])[0]
        assert job[i].backups == [{"at": e["host_submit"], "reason": "slow", "attempt": 1}]


def test_a_task_sent_again_after_a_take_over_ends_at_its_own_deadline_as_this_hosts(
        storage, clock):
    # Local workers die with their host: the one taking over sends their tasks again at
    # once. Silent past the new attempt's deadline, it is lost like any of this host's.
    limits = dict(deadline_grace_s=5.0)
    be = FakeBackend(**limits)
    job = start_job(storage, be, clock, [1], timeout=10.0)
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # its record: the task in flight
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    other = following(storage, clock, job, FakeBackend(**limits))
    assert other.dispatcher.check_owner(clock(), force=True)
    (again,) = other.dispatcher.backend.sent
    assert again["attempt"] == 1
    clock.advance(15.1)
    other.dispatcher.tick()
    (err,) = other.results(timeout=0)
    assert type(err) is LostInvocationError and str(err) == (
        f"task {again['task']} produced no result within its timeout of 10 s + 5 s")


@pytest.mark.parametrize("timeout, latencies, quiet_until, backup_at", [
    # Presumed lost after min(30 s + 2 x the 90th percentile latency (the second of three
    # here), (timeout + grace) / (redeliveries + 1)), at least 30 s.
    (1000.0, [10, 20, 30], 69.0, 71.0),  # 30 + 2 x 20 = 70 s
    (100.0, [10], 35.0, 40.0),           # min(50, 120 / 3 = 40) s, at 40 s exactly
    (10.0, [10], 20.0, 30.0),            # min(50, max(30, 30 / 3)) = 30 s
])
def test_a_silent_event_is_presumed_lost_after_the_latency_or_its_share_of_the_deadline(
        storage, clock, timeout, latencies, quiet_until, backup_at):
    be = FakeBackend(lost_after_s=30.0, deadline_grace_s=20.0, redeliveries=2,
                     reports_accepted=True)
    job = start_job(storage, be, clock, list(range(len(latencies) + 1)), timeout=timeout)
    *ran, silent = be.sent
    for e, late in zip(ran, latencies, strict=True):
        # Stored ``late`` seconds after it was sent (as the worker's stats say).
        be.run(dict(e, host_submit=e["host_submit"] - late))
    t0 = clock()
    be.listener.on_accepted(silent, t0)
    clock.t = t0 + quiet_until
    job.dispatcher.tick()
    assert len(be.sent) == len(latencies) + 1
    clock.t = t0 + backup_at
    job.dispatcher.tick()
    assert len(be.sent) == len(latencies) + 2 and be.sent[-1]["backup"] == "lost"


def test_a_backup_sent_at_the_first_look_keeps_the_deadline_of_the_first_acceptance(
        storage, clock):
    be = FakeBackend(lost_after_s=30.0, deadline_grace_s=20.0, redeliveries=2,
                     reports_accepted=True)
    job = start_job(storage, be, clock, [1, 2], timeout=100.0)
    first, silent = be.sent
    be.run(first)
    t0 = clock()
    be.listener.on_accepted(silent, t0)
    clock.t = t0 + 45.0  # no tick since the acceptance: the first look sends a backup
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert backup["backup"] == "lost"
    be.listener.on_accepted(backup, clock())
    clock.t = t0 + 120.01  # timeout + grace after the first acceptance, not the backup's
    job.dispatcher.tick()
    assert isinstance(job[1].exception(timeout=0), TaskTimeoutError)


def test_slowness_is_per_item_and_every_task_in_flight_is_looked_at(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, list(range(24)), chunksize=2)
    unstarted, straggler = be.sent[0], be.sent[5]  # the first never starts
    be.listener.on_start(straggler)
    for e in be.sent[1:]:
        if e is not straggler:
            be.run(e)
    limit = job.dispatcher._slow_limit()
    clock.advance(1.5 * limit)  # 0.75 x the limit per item
    job.dispatcher.tick()
    assert len(be.sent) == 12
    clock.advance(1.0 * limit)  # 1.25 x
    job.dispatcher.tick()
    assert len(be.sent) == 13 and be.sent[-1]["task"] == straggler["task"]
    assert unstarted["task"] not in [e["task"] for e in be.sent[12:]]


def test_the_retry_of_a_failed_backup_is_a_plain_retry(storage, clock):
    # Both attempts of a backed-up task fail: the retry is sent as a retry, not a backup
    # (the local backend puts a backup ahead of its queue), and no second backup is noted.
    be = FakeBackend()
    job = start_job(storage, be, clock, list(range(12)), retries=1)
    for e in be.sent:
        be.listener.on_start(e)
    straggler = be.sent[4]
    run_all_but(be, straggler["task"])
    clock.advance(60)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert backup["backup"] == "slow" and backup["attempt"] == 1
    tid = straggler["task"]
    be.listener.on_failure(straggler, WorkerDiedError("died (0)", tid))
    be.listener.on_failure(backup, WorkerDiedError("died (1)", tid))
    retry = be.sent[-1]
    assert len(be.sent) == 14 and retry["task"] == tid and retry["attempt"] == 2
    assert "backup" not in retry and job.backups_sent == 1 and len(job[4].backups) == 1
    be.run(retry)
    assert job.result(timeout=0)[4] == 16


def test_a_retry_not_yet_accepted_has_no_deadline_from_the_failed_attempts_acceptance(
        storage, clock):
    be = FakeBackend(deadline_grace_s=5.0, reports_accepted=True)
    job = start_job(storage, be, clock, [3], retries=1, timeout=10.0)
    first = be.sent[0]
    t0 = clock()
    be.listener.on_accepted(first, t0)
    clock.advance(8.0)
    be.listener.on_failure(first, WorkerDiedError("died", first["task"]))
    retry = be.sent[-1]
    assert retry["attempt"] == 1
    clock.t = t0 + 30.0  # past the first acceptance + timeout + grace: the retry waits
    job.dispatcher.tick()
    assert not job.done()
    be.listener.on_accepted(retry, clock())
    clock.advance(15.1)  # its own deadline, from its own acceptance
    job.dispatcher.tick()
    (err,) = job.results(timeout=0)
    assert isinstance(err, LostInvocationError) and str(err).endswith("timeout of 10 s + 5 s")


def test_the_cache_lookup_says_how_many_hits_and_how_long_it_took(storage, clock):
    ident = identity_of(15)
    be = FakeBackend()
    first = submit(storage, be, clock, [1, 2, 3], identity=ident, cache=True, use_cache=True)
    drain(be)
    job = submit(storage, FakeBackend(), clock, [2, 3, 4, 5], identity=ident, cache=True,
                 use_cache=True)
    # The widget draws the cached items' bar over ``lookup_s``.
    lookup = job.dispatcher.cache_lookup
    assert sorted(lookup) == ["hits", "lookup_s"] and lookup["hits"] == 2
    assert isinstance(lookup["lookup_s"], float) and 0 < lookup["lookup_s"] < 10
    assert [job.item_state(i) for i in range(4)] == ["cached", "cached", "queued", "queued"]
    # Each hit names the job that computed it.
    assert [job.item_cache_info(i)["job_id"] for i in range(2)] == [first.job_id] * 2


def test_events_the_backend_refuses_end_with_its_reason_and_one_log_line(storage, clock, caplog):
    caplog.set_level(logging.WARNING, logger="cloudbutton.dispatch")
    be = FakeBackend()
    be.refuse = RuntimeError("the backend has been shut down")
    job = start_job(storage, be, clock, [1, 2])
    tids = [protocol.task_id(i, i + 1, 2) for i in range(2)]
    errs = job.results(timeout=0)
    assert [type(e) for e in errs] == [InfrastructureError] * 2
    assert [str(e) for e in errs] == [
        f"task {tid}: the fake backend could not take it: the backend has been shut down"
        for tid in tids]
    assert [stored_status(storage, job, tid)["infra"]["message"] for tid in tids] == \
        [str(e) for e in errs]
    assert caplog.messages == [f"job {job.job_id}: the fake backend refused 2 events: "
                               "the backend has been shut down"]


def test_a_retry_starting_does_not_restart_its_tasks_slow_clock(storage, clock):
    # Slowness is measured from the task's first start: a retry of a slow task is as late.
    be = FakeBackend()
    job = start_job(storage, be, clock, list(range(12)), retries=1)
    straggler = be.sent[6]
    t0 = clock()
    be.listener.on_start(straggler)
    run_all_but(be, straggler["task"])
    limit = job.dispatcher._slow_limit()
    clock.advance(0.6 * limit)
    be.listener.on_failure(straggler, WorkerDiedError("died", straggler["task"]))
    retry = be.sent[-1]
    be.listener.on_start(retry)
    assert job.item_state(6) == "running" and job.item_stats(6)["host_start_seen"] == t0
    clock.advance(0.6 * limit)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert backup["task"] == straggler["task"] and backup["backup"] == "slow"
    assert backup["attempt"] == 2 and len(be.sent) == 14


def put_live_stdout(storage, job, event, texts):
    """What ``event``'s worker printed so far, as its worker stores it (sealed)."""
    key = protocol.live_stdout_key(PREFIX, job.job_id, event["task"], event["attempt"], 1)
    storage.put(key, integrity.seal(job.dispatcher.key, protocol.object_name(PREFIX, key),
                                    {"task": event["task"], "attempt": event["attempt"],
                                     "seq": 1, "items": texts}))


def test_what_a_started_task_printed_is_read_on_a_backend_that_reports_each_end(storage, clock):
    be = FakeBackend(live_stdout_s=1.0)
    job = start_job(storage, be, clock, [1, 2])
    first, second = be.sent
    be.listener.on_start(first)
    put_live_stdout(storage, job, first, {"0": "one\n"})
    put_live_stdout(storage, job, second, {"1": "two\n"})
    job.dispatcher.tick()
    # Only the started task's directory is listed: the queued one printed nothing yet.
    assert job.live_stdout() == [(0, "one\n")]


# What comes back ---------------------------------------------------------------------------
def test_a_status_the_worker_replied_with_costs_the_host_no_read(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    be.run(be.sent[0])  # the response carries the status its worker stored
    assert job.stats["requests"]["host"] == {"PUT": 4}  # manifest, inputs, record, marker-free
    second = dict(be.sent[1])
    second.pop("reply_status")  # a response without it: the host reads the stored status
    be.run(second)
    assert job.stats["requests"]["host"] == {"PUT": 4, "GET": 1}
    assert job.result(timeout=0) == [1, 4]


def test_a_worker_that_found_the_job_cancelled_leaves_nothing_to_collect(storage, clock):
    # Cancelled elsewhere (the panel): the worker stores nothing, and the host, not yet
    # cancelled, neither reads a status nor records an error; its next tick cancels.
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    storage.put_if_absent(protocol.cancel_key(PREFIX, job.job_id),
                          protocol.cancel_marker(by="panel", at=clock(), reason=None))
    assert be.run(be.sent[0]) == {"task": be.sent[0]["task"], "state": "cancelled"}
    assert job.monitor_error is None and not job.cancelled and job.item_state(0) == "running"
    assert job.stats["requests"]["host"] == {"PUT": 4}
    job.dispatcher.tick()
    assert job.cancelled and [type(r).__name__ for r in job.results(timeout=0)] == \
        ["CancelledError"] * 2


def test_statuses_found_by_one_poll_are_read_once_each_and_stamped_when_seen(storage, clock):
    be = FakeBackend(calls_back=False, live_stdout_s=1.0)
    job = start_job(storage, be, clock, [1, 2, 3])
    for e in be.sent[1:]:
        worker.handler(e)
    put_live_stdout(storage, job, be.sent[0], {"0": "one\n"})
    clock.advance(0.6)  # a cancel check, not yet a record
    job.dispatcher.tick()
    # The cancel marker looked for, one listing, two statuses fetched at once (one GET
    # each) and the live stdout of the task still running.
    assert job.stats["requests"]["host"] == {"PUT": 4, "HEAD": 1, "LIST": 1, "GET": 3}
    assert [job.item_stats(i)["host_seen"] for i in (1, 2)] == [clock()] * 2
    assert [job.item_stats(i)["host_fetched"] for i in (1, 2)] == [clock()] * 2
    assert job.live_stdout() == [(0, "one\n")] and job.item_state(0) == "queued"
    clock.advance(0.6)  # a cancel check, not yet a record
    job.dispatcher.tick()  # the statuses collected are not read again
    assert job.stats["requests"]["host"] == {"PUT": 4, "HEAD": 2, "LIST": 2, "GET": 3}
    worker.handler(be.sent[0])
    job.dispatcher.tick()
    assert job.result(timeout=0) == [1, 4, 9]


def test_a_follower_reads_each_stored_status_once_however_often_it_polls(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2, 3])
    for e in be.sent[:2]:
        be.run(e)
    put_live_stdout(storage, job, be.sent[2], {"2": "three\n"})  # not a status
    other = following(storage, clock, job)
    counts = dict(other.dispatcher.storage.counts)
    # Following: one look for a cancel marker, one listing, the two statuses stored.
    assert other.results(timeout=0)[:2] == [1, 4]
    assert counts == {"HEAD": 1, "LIST": 1, "GET": 2}
    for _ in range(3):
        other.dispatcher.poll_storage()
    # Three more listings, no status read again.
    assert dict(other.dispatcher.storage.counts) == dict(counts, LIST=counts["LIST"] + 3)
    be.run(be.sent[2])
    other.dispatcher.poll_storage()
    assert other.result(timeout=0) == [1, 4, 9] and other.monitor_error is None


def test_a_follower_ends_a_task_whose_stored_status_it_refuses(storage, clock):
    # A task this host never sent (it follows the job): the refusal ends its items all the
    # same, and nothing is left to collect again.
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    forge_status(storage, job, be.sent[0]["task"])
    be.run(be.sent[1])
    other = following(storage, clock, job)
    err = other[0].exception(timeout=0)
    assert isinstance(err, IntegrityError) and other.item_state(0) == "failed"
    assert other[0].error_info["message"] == str(err) and "tampered or foreign" in str(err)
    assert other.results(timeout=0)[1] == 4 and other.done() and other.monitor_error is None


def three_fails(x):
    if x == 3:
        raise ValueError("three")
    return x


def big(n):
    return "x" * n


@pytest.mark.parametrize("winner, gap, losers_s", [(1, 5.0, 65.0), (0, 0.5, 0.5)])
def test_the_loser_of_a_backup_race_is_billed_until_the_host_saw_the_winner(
        storage, clock, winner, gap, losers_s):
    be = FakeBackend()
    job = start_job(storage, be, clock, list(range(12)))
    straggler = be.sent[2]
    be.listener.on_start(straggler)
    run_all_but(be, straggler["task"])
    clock.advance(60)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert backup["attempt"] == 1
    clock.advance(gap)
    be.run(backup if winner else straggler)
    stats, billed_after_first = job.outcomes.task_record(straggler["task"])
    # Two invocations billed; the loser ran from its own send to the winner's arrival (the
    # original was sent 60 s before the backup).
    assert stored_status(storage, job, straggler["task"])["attempt"] == winner
    assert billed_after_first == 1 and stats["backup_s"] == pytest.approx(losers_s, abs=1e-6)


def test_a_second_notice_of_a_collected_task_reads_and_applies_nothing(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    first = be.sent[0]
    be.run(first)
    requests = dict(job.stats["requests"]["host"])
    be.listener.on_done(first, {"state": "done"})  # late or repeated: already applied
    assert job.stats["requests"]["host"] == requests and job[0].attempts == 1


def test_the_cache_keeps_the_results_of_a_task_but_not_its_failed_items(storage, clock):
    ident = identity_of(18)
    be = FakeBackend()
    first = submit(storage, be, clock, [2, 3], fn=three_fails, identity=ident, cache=True,
                   use_cache=True, chunksize=2)
    drain(be)
    assert first.results(timeout=0)[0] == 2 and first.item_state(1) == "failed"
    be2 = FakeBackend()
    job = submit(storage, be2, clock, [2, 3], fn=three_fails, identity=ident, cache=True,
                 use_cache=True, chunksize=2)
    assert [job.item_state(i) for i in range(2)] == ["cached", "queued"]


def test_a_result_too_big_for_its_status_is_read_from_its_own_object(storage, clock):
    be = FakeBackend()
    job = submit(storage, be, clock, [300_000], fn=big)
    drain(be)
    assert job.result(timeout=0) == ["x" * 300_000]

# A monitoring error ------------------------------------------------------------------------
def test_a_monitoring_error_is_kept_and_logged_with_its_job_type_message_and_traceback(
        tmp_path, clock, caplog):
    caplog.set_level(logging.ERROR, logger="cloudbutton.dispatch")
    storage = FlakyStorage(str(tmp_path / "flaky"))
    be = FakeBackend()
    job = start_job(storage, be, clock, [7])
    storage.fail_next = True
    be.sent[0].pop("reply_status")  # the host reads the status from storage
    be.run(be.sent[0])
    err = job.monitor_error
    assert isinstance(err, OSError) and str(err) == "the disk hiccuped"
    (rec,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert rec.getMessage() == f"job {job.job_id}: OSError: the disk hiccuped"
    assert rec.exc_info == (OSError, err, err.__traceback__) and err.__traceback__ is not None
