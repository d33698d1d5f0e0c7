"""Who ends a job's tasks, and when: crash reports read from storage, cancel (this host's
marker, or one written elsewhere first), a followed job's deadline, and a take-over of a
job whose host stopped. Dispatcher tests with a fake clock and an in-process worker (see
test_dispatch): nothing here sleeps."""
from __future__ import annotations

import collections
import json
import logging
import os
import time

import pytest

from cloudbutton_executor import (
    InfrastructureError,
    LostInvocationError,
    WorkerDiedError,
    cache,
    dispatch,
    integrity,
    protocol,
    records,
)
from cloudbutton_executor.storage import LocalStorage, NotFound
from test_dispatch import (
    PREFIX,
    FakeBackend,
    FakeClock,
    FlakyStorage,
    following,
    following_an_older_version,
    lambda_like,
    start_job,
    stored_record,
    stored_status,
)


@pytest.fixture
def clock():
    return FakeClock()


def crash_report(storage, job, tid, n, *, sealed_with=None, **doc):
    """A supervisor's crash report of attempt ``n`` of ``tid``, sealed with ``sealed_with``
    (the job's key unless given); ``doc`` replaces or adds fields (None drops one)."""
    ckey = protocol.crash_key(PREFIX, job.job_id, tid, n)
    body = {"v": 3, "job_id": job.job_id, "task": tid, "attempt": n, "kind": "died",
            "message": f"task {tid}: worker process was killed by SIGKILL"}
    body.update(doc)
    body = {k: v for k, v in body.items() if v is not None}
    storage.put(ckey, integrity.seal(sealed_with or job.dispatcher.key, protocol.object_name(PREFIX, ckey),
                                     body))
    return ckey


def dispatch_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cloudbutton.dispatch"]


# Crash reports ------------------------------------------------------------------------------
def test_a_crash_report_retries_its_task_and_one_without_kind_or_message_ends_it(storage, clock):
    """A report names how the attempt ended; one that says nothing still ends the retry it
    is about, as a plain infrastructure error "the worker crashed"."""
    be = lambda_like()
    job = start_job(storage, be, clock, [1], retries=1)
    tid = be.sent[0]["task"]
    crash_report(storage, job, tid, 0)
    job.dispatcher.tick()
    assert [e["attempt"] for e in be.sent] == [0, 1] and job.retried == 1 and not job.done()
    crash_report(storage, job, tid, 1, kind=None, message=None)
    job.dispatcher.tick()
    assert job.monitor_error is None and job.done() and len(be.sent) == 2
    err = job[0].exception(timeout=0)
    assert type(err) is InfrastructureError and str(err) == "the worker crashed"
    assert job[0].attempts == 2 and stored_status(storage, job, tid)["attempt"] == 1


def test_a_foreign_crash_report_is_logged_once_and_leaves_its_task_running(storage, clock, caplog):
    """A report sealed for another attempt (or another job) is not the task's: it is logged
    by name, once (not at every poll), and the task's own deadline still ends it."""
    caplog.set_level(logging.INFO, logger="cloudbutton.dispatch")
    be = lambda_like()
    job = start_job(storage, be, clock, [1, 2], retries=1)
    first, second = be.sent
    # Sealed for its key with the job's key, but it speaks of another attempt of the task.
    mixed = crash_report(storage, job, first["task"], 0, attempt=1)
    # Sealed with a key that is not the job's.
    forged = crash_report(storage, job, second["task"], 0, sealed_with=b"o" * 32)
    for _ in range(3):
        job.dispatcher.tick()
    assert len(be.sent) == 2 and job.retried == 0
    assert [job.item_state(i) for i in range(2)] == ["queued", "queued"]
    assert job.monitor_error is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"job {job.job_id}: the crash report {mixed} is a foreign object",
        f"job {job.job_id}: the crash report {protocol.object_name(PREFIX, forged)} is a "
        "tampered or foreign object: its seal does not verify with this job's key",
    ]


def test_a_crash_report_of_a_task_the_dead_host_sent_is_acted_on_by_the_new_host(storage, clock):
    """Where events outlive their host (Lambda), a task the dead host sent is not sent
    again at a take-over; its crash report, stored meanwhile, retries it at once."""
    job = start_job(storage, lambda_like(), clock, [1, 2], retries=1)
    first, second = job.dispatcher.backend.sent
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # its record says both tasks are in flight; then it stopped
    crash_report(storage, job, first["task"], 0)
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    be2 = lambda_like()
    other = following(storage, clock, job, be2)
    assert other.dispatcher.check_owner(clock(), force=True)
    assert [(e["task"], e["attempt"]) for e in be2.sent] == [(first["task"], 1)]
    crash_report(storage, other, first["task"], 1, message="killed by SIGKILL again")
    other.dispatcher.tick()
    err = other[0].exception(timeout=0)
    assert type(err) is WorkerDiedError and str(err) == "killed by SIGKILL again"
    assert other.monitor_error is None and other.item_state(1) == "queued"


# Cancel -------------------------------------------------------------------------------------
def cancel_key(job):
    return protocol.cancel_key(PREFIX, job.job_id)


def test_cancel_stores_the_executors_marker_at_the_hosts_time_once(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2, 3])
    be.run(be.sent[0])
    clock.advance(5)
    at = clock()
    assert job.cancel() == 2  # the items that had not ended
    assert json.loads(storage.get(cancel_key(job))) == {
        "v": protocol.PROTOCOL_VERSION, "by": "executor", "at": at}
    assert job.cancelled_at == at and be.cancelled == [job.job_id]
    clock.advance(5)
    assert job.cancel() == 0 and job.cancelled_at == at and be.cancelled == [job.job_id]


def test_cancelling_a_finished_job_stores_no_marker_and_stops_nothing(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1])
    be.run(be.sent[0])
    assert job.cancel() == 0
    assert not job.cancelled and job.cancelled_at is None and be.cancelled == []
    with pytest.raises(NotFound):
        storage.get(cancel_key(job))


@pytest.mark.parametrize("marker, at", [
    (protocol.cancel_marker(by="jupyter-panel", at=1_700_000_000.25), 1_700_000_000.25),
    (json.dumps({"by": "cli", "at": 1_700_000_000}).encode(), 1_700_000_000.0),
    # No time the host can use: it ends the job when it cancels.
    (b"cancelled from the panel", None),  # an older version's marker: free text
    (json.dumps({"by": "cli", "at": True}).encode(), None),
    (json.dumps({"by": "cli", "at": "1700000000"}).encode(), None),
])
def test_a_job_cancelled_elsewhere_first_ends_at_the_time_their_marker_states(storage, clock,
                                                                               marker, at):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    storage.put_if_absent(cancel_key(job), marker)
    clock.advance(5)
    assert job.cancel() == 2 and be.cancelled == [job.job_id]
    assert job.cancelled_at == (clock() if at is None else at)
    assert storage.get(cancel_key(job)) == marker  # first write wins: theirs stays


class UnreadableMarkers(LocalStorage):
    """A storage whose cancel markers exist but cannot be read back (a transient error)."""

    def get(self, key, start=None, stop=None):
        if key.endswith("/cancel"):
            raise OSError("connection reset by peer")
        return super().get(key, start, stop)


def test_a_marker_written_elsewhere_that_cannot_be_read_still_cancels_at_the_hosts_time(
        tmp_path, clock, caplog):
    storage = UnreadableMarkers(str(tmp_path / "storage"))
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    storage.put_if_absent(cancel_key(job), protocol.cancel_marker(by="jupyter-panel", at=1.0))
    clock.advance(5)
    assert job.cancel() == 2 and job.cancelled_at == clock() and be.cancelled == [job.job_id]
    assert dispatch_messages(caplog) == [
        f"job {job.job_id}: cannot read its cancel marker: connection reset by peer"]


def test_cancel_writes_what_the_job_computed_to_the_result_cache_at_once(storage, clock,
                                                                        monkeypatch):
    """The cache writer batches its entries (at most one per FLUSH_S): a cancel writes what
    finished at once, so a re-run finds it."""
    monkeypatch.setattr(cache, "FLUSH_S", 3600.0)
    be = FakeBackend()
    identity = "f" * 64
    job = start_job(storage, be, clock, [1, 2, 3], cache=True, identity=identity)
    job.dispatcher.use_cache()  # no hits: only its writer (the executor calls it before start)
    writer = job.dispatcher.cache_writer
    be.run(be.sent[0])
    assert writer.written == 0  # batched
    assert job.cancel() == 2
    assert job.monitor_error is None and writer.written == 1
    hits = cache.ResultCache(storage, PREFIX, identity).lookup(writer.keys)
    assert {i: h.value for i, h in hits.items()} == {0: 1}


def test_a_job_cancelled_before_it_is_followed_is_cancelled_at_once_keeping_what_ended(
        storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2, 3])
    be.run(be.sent[0])
    at = clock() - 1
    storage.put_if_absent(cancel_key(job), protocol.cancel_marker(by="jupyter-panel", at=at))
    other = following(storage, clock, job)  # no tick yet
    assert other.cancelled and other.done() and other.cancelled_at == at
    assert other.results(timeout=0)[0] == 1 and other.counts()["cancelled"] == 2


def test_a_cancel_marker_written_elsewhere_is_looked_for_every_half_second(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    t0 = clock()
    job.dispatcher.tick()  # none yet
    storage.put_if_absent(cancel_key(job), protocol.cancel_marker(by="jupyter-panel", at=t0))
    clock.t = t0 + dispatch.CANCEL_CHECK_INTERVAL_S - 0.01
    job.dispatcher.tick()
    assert not job.cancelled
    clock.t = t0 + dispatch.CANCEL_CHECK_INTERVAL_S
    job.dispatcher.tick()
    assert job.cancelled and job.cancelled_at == t0 and be.cancelled == [job.job_id]


def test_an_error_of_a_tick_is_recorded_and_logged_and_the_next_tick_goes_on(tmp_path, clock,
                                                                             caplog):
    storage = FlakyStorage(str(tmp_path / "flaky"))
    be = lambda_like()
    job = start_job(storage, be, clock, [7])
    be.run(be.sent[0])
    storage.fail_next = True
    job.dispatcher.tick()
    err = job.monitor_error
    assert type(err) is OSError and str(err) == "the disk hiccuped" and not job.done()
    assert dispatch_messages(caplog) == [f"job {job.job_id}: OSError: the disk hiccuped"]
    job.dispatcher.tick()
    assert job.result(timeout=0) == [49]


# A followed job's deadline --------------------------------------------------------------
def test_items_of_a_followed_job_left_at_its_deadline_end_lost_with_their_range(storage, clock):
    be = FakeBackend()
    started = start_job(storage, be, clock, [1, 2, 3, 4])
    be.run(be.sent[0])
    be.run(be.sent[1])  # items 2 and 3 were never run
    follower, manifest = following_an_older_version(storage, clock, started)
    clock.t = protocol.lost_deadline(manifest) + 0.1
    follower.dispatcher.tick()
    assert follower.done() and follower.results(timeout=0)[:2] == [1, 4]
    for i in (2, 3):
        err = follower[i].exception(timeout=0)
        assert type(err) is LostInvocationError and str(err) == (
            f"items 2..3 of job {started.job_id} have no result and their deadline passed")
        assert follower[i].attempts == 1
    status = stored_status(storage, follower, protocol.task_id(2, 4, 4))
    assert status["attempt"] == 0 and status["written_by"] == "host"


# Taking a job over ---------------------------------------------------------------------------
class CountingGets(LocalStorage):
    """Counts the GETs of each key (what a follower costs while its job's host runs)."""

    def __init__(self, root):
        super().__init__(root)
        self.gets = collections.Counter()

    def get(self, key, start=None, stop=None):
        self.gets[key] += 1
        return super().get(key, start, stop)


def test_a_follower_reads_the_dispatch_record_every_half_heartbeat_while_its_host_lives(
        tmp_path, clock):
    storage = CountingGets(str(tmp_path / "storage"))
    job = start_job(storage, FakeBackend(), clock, [1, 2])
    other = following(storage, clock, job)
    rkey = protocol.dispatch_key(PREFIX, job.job_id)
    uncounted = LocalStorage(str(tmp_path / "storage"))
    record = uncounted.get(rkey)
    reads = []
    t0 = clock()
    for t in (0.0, protocol.HEARTBEAT_S / 2 - 0.01, protocol.HEARTBEAT_S / 2,
              protocol.HEARTBEAT_S - 0.01, protocol.HEARTBEAT_S):
        clock.t = t0 + t
        other.dispatcher.tick()
        reads.append(storage.gets[rkey])
    assert reads == [1, 1, 2, 2, 3] and other.monitor_error is None
    assert other.dispatcher.check_owner(clock()) is False  # not yet due: nothing read
    assert storage.gets[rkey] == 3
    # Its host is alive (this process, a fresh record): no take-over, even when forced.
    assert other.dispatcher.check_owner(clock(), force=True) is False
    assert storage.gets[rkey] == 4 and other.dispatcher.following
    assert other.dispatcher.backend.sent == []
    assert uncounted.get(rkey) == record  # the host's: a follower never writes it


def test_a_job_whose_host_died_before_its_first_record_is_taken_over_once_stale(storage, clock,
                                                                                caplog):
    """A host that stored the manifest and inputs, then died before its dispatch record:
    the job is taken over DISPATCH_STALE_S after it was created, from item 0, at epoch 0."""
    caplog.set_level(logging.INFO, logger="cloudbutton.dispatch")
    job = start_job(storage, FakeBackend(), clock, [1, 2, 3])
    storage.delete(protocol.dispatch_key(PREFIX, job.job_id))  # as if never written
    created = job.dispatcher.spec.created
    be2 = FakeBackend()
    other = following(storage, clock, job, be2)
    clock.t = created + protocol.DISPATCH_STALE_S - 0.01  # its host may be about to write it
    assert other.dispatcher.check_owner(clock(), force=True) is False
    assert be2.sent == [] and other.dispatcher.following
    clock.t = created + protocol.DISPATCH_STALE_S
    assert other.dispatcher.check_owner(clock(), force=True) is True
    stopped = time.strftime("%H:%M:%S", time.localtime(0))
    assert dispatch_messages(caplog) == [
        f"job {job.job_id}: resumed from a host that stopped at {stopped} (0 tasks in flight, "
        "items 0.. never sent)"]
    assert stored_record(storage, other)["epoch"] == 0
    assert storage.exists(protocol.owner_key(PREFIX, job.job_id, 0))
    assert [e["task"] for e in be2.sent] == [protocol.task_id(i, i + 1, 3) for i in range(3)]
    for e in list(be2.sent):
        be2.run(e)
    assert other.result(timeout=0) == [1, 4, 9]


def test_a_finished_job_whose_host_stopped_is_not_taken_over(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1])
    be.run(be.sent[0])
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    other = following(storage, clock, job)
    assert other.done()
    assert other.dispatcher.check_owner(clock(), force=True) is False
    assert stored_record(storage, job)["epoch"] == 0
    assert not storage.exists(protocol.owner_key(PREFIX, job.job_id, 1))


def total(results):
    return sum(results)


def test_a_reduce_job_whose_host_stopped_is_taken_over_and_reduces(storage, clock):
    """A reduce job stores no inputs of its own (its task reads the map job's results):
    the host that takes it over sends its task as it is."""
    be = FakeBackend()
    mapped = start_job(storage, be, clock, [1, 2, 3])
    for e in list(be.sent):
        be.run(e)
    reduce = {"job_id": mapped.job_id, "tasks": mapped.task_ids()}
    job = start_job(storage, FakeBackend(), clock, [None], fn=total, reduce=reduce)
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    be2 = FakeBackend()
    other = following(storage, clock, job, be2)
    assert other.dispatcher.check_owner(clock(), force=True) is True
    (event,) = be2.sent
    assert event["reduce"]["job_id"] == mapped.job_id
    be2.run(event)
    assert other.result(timeout=0) == [14]


def test_a_take_over_follows_every_task_in_flight_after_one_that_ended(storage, clock):
    """The record lists its tasks in item order; one whose status was stored after the
    record is skipped, and the tasks after it are still the new host's to collect."""
    be = lambda_like()
    job = start_job(storage, be, clock, [1, 2, 3], timeout=100.0)
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # its record: three tasks in flight; then it stopped
    be.run(be.sent[0])
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    be2 = lambda_like()
    other = following(storage, clock, job, be2)
    assert other.dispatcher.check_owner(clock(), force=True)
    assert be2.sent == []  # Lambda's events outlive their host: none is sent again
    for e in be.sent[1:]:  # the dead host's invocations end
        be.run(e)
    other.dispatcher.tick()
    assert other.result(timeout=0) == [1, 4, 9] and other.monitor_error is None


# Live stdout --------------------------------------------------------------------------------
def live_stdout(storage, job, tid, n, k, items, *, sealed_with=None, **doc):
    """The ``k``-th live stdout flush of attempt ``n`` of ``tid``, as its worker stores it;
    ``doc`` replaces fields."""
    key = protocol.live_stdout_key(PREFIX, job.job_id, tid, n, k)
    body = {"job_id": job.job_id, "task": tid, "attempt": n, "seq": k, "items": items, **doc}
    storage.put(key, integrity.seal(sealed_with or job.dispatcher.key,
                                    protocol.object_name(PREFIX, key), body))
    return key


def test_what_running_tasks_print_reaches_the_host_once_each_in_flush_order(tmp_path, clock):
    """On a backend that reports each end itself, the host lists only its running tasks'
    keys; each flush is read once, in order, and only its task's items count."""
    storage = CountingGets(str(tmp_path / "storage"))
    be = FakeBackend(live_stdout_s=1.0)
    job = start_job(storage, be, clock, [1, 2, 3, 4], chunksize=2)
    first, second = be.sent
    t1, t2 = first["task"], second["task"]
    be.listener.on_start(first)
    k1 = live_stdout(storage, job, t1, 0, 1, {"0": "a\n"})
    k2 = live_stdout(storage, job, t1, 0, 2, {"0": "a\nb\n", "1": "c\n", "2": "not its item\n",
                                              "x": "not an item\n"})
    k3 = live_stdout(storage, job, t2, 0, 1, {"2": "d\n"})
    job.dispatcher.tick()
    assert job.live_stdout() == [(0, "a\n"), (0, "b\n"), (1, "c\n")]
    assert storage.gets[k3] == 0  # a task not started prints nothing: not listed
    be.listener.on_start(second)
    job.dispatcher.tick()
    job.dispatcher.tick()
    assert job.live_stdout(3) == [(2, "d\n")]
    assert [storage.gets[k] for k in (k1, k2, k3)] == [1, 1, 1]
    be.run(first)  # ended: its status has all it printed, its keys are not listed again
    k4 = live_stdout(storage, job, t1, 0, 3, {"0": "a\nb\ne\n"})
    job.dispatcher.tick()
    assert storage.gets[k4] == 0 and job.live_stdout(4) == []
    assert job.monitor_error is None


def test_a_live_stdout_object_not_of_its_task_attempt_and_flush_is_logged_and_not_shown(
        storage, clock, caplog):
    be = FakeBackend(live_stdout_s=1.0)
    job = start_job(storage, be, clock, [1])
    (event,) = be.sent
    tid = event["task"]
    be.listener.on_start(event)
    foreign = [live_stdout(storage, job, tid, 0, 1, {"0": "x\n"}, task="000001-000002"),
               live_stdout(storage, job, tid, 0, 2, {"0": "x\n"}, attempt=1),
               live_stdout(storage, job, tid, 0, 3, {"0": "x\n"}, seq=4)]
    forged = live_stdout(storage, job, tid, 0, 5, {"0": "x\n"}, sealed_with=b"o" * 32)
    job.dispatcher.tick()
    assert job.live_stdout() == [] and job.monitor_error is None
    assert dispatch_messages(caplog) == [
        *(f"job {job.job_id}: the live stdout {k} is a foreign object" for k in foreign),
        f"job {job.job_id}: the live stdout {protocol.object_name(PREFIX, forged)} is a "
        "tampered or foreign object: its seal does not verify with this job's key"]


def test_a_silent_task_seen_printing_gets_no_lost_backup(storage, clock):
    """Where events may be lost (Lambda), a task silent past the lost time is sent again,
    unless its live stdout shows it runs."""
    be = lambda_like(live_stdout_s=1.0)
    job = start_job(storage, be, clock, [1, 2, 3], timeout=100.0)
    for e in be.sent:
        be.listener.on_accepted(e, clock())
    be.run(be.sent[0])
    job.dispatcher.tick()  # a latency to compare with
    live_stdout(storage, job, be.sent[1]["task"], 0, 1, {"1": "working\n"})
    clock.advance(31.0)
    job.dispatcher.tick()
    assert [(e["task"], e.get("backup")) for e in be.sent[3:]] == [(be.sent[2]["task"], "lost")]
    assert job.live_stdout() == [(1, "working\n")]


# The dispatch record ------------------------------------------------------------------------
def test_the_dispatch_record_states_what_is_in_flight_and_until_when(storage, clock):
    """What a host that takes over, the panel and the CLI read: each task in flight with
    its attempt, retries and redeliveries used and when it was sent, and the deadline of
    the last of them (``lost_deadline``)."""
    be = FakeBackend(deadline_grace_s=5.0)
    t0 = clock()
    job = start_job(storage, be, clock, [1, 2, 3], timeout=10.0, retries=1)
    record = stored_record(storage, job)  # written before anything was sent
    assert (record["open"], record["next_item"], record["deadline"]) == ([], 0, t0)
    first, second, third = be.sent
    clock.advance(3)
    be.listener.on_failure(first, WorkerDiedError("killed by SIGKILL", first["task"]))
    be.run(third)
    clock.advance(records.RECORD_INTERVAL_S)
    job.dispatcher.tick()
    record = stored_record(storage, job)
    record.pop("mac")
    owner = record.pop("owner")
    assert owner["pid"] == os.getpid()
    assert record == {
        "v": protocol.PROTOCOL_VERSION, "job_id": job.job_id, "epoch": 0,
        "updated": clock(), "next_item": 3, "n_items": 3,
        "open": [[0, 1, 1, round(t0 + 3, 3), 1, 1, 0], [1, 2, 1, round(t0, 3), 0, 0, 0]],
        "deadline": t0 + 3 + 10.0 + 5.0}


def test_without_a_host_deadline_the_record_deadline_is_the_timeout(storage, clock):
    be = FakeBackend(max_inflight=1)  # the backend ends its invocations itself: no grace
    job = start_job(storage, be, clock, [1, 2], timeout=7.0)
    clock.advance(protocol.HEARTBEAT_S)
    job.dispatcher.tick()
    assert stored_record(storage, job)["deadline"] == be.sent[0]["host_submit"] + 7.0


def test_the_record_is_rewritten_after_changes_and_at_every_heartbeat(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2, 3])
    t0 = clock()  # the record at start; the tasks sent after it made it stale
    updates = []
    for t in (records.RECORD_INTERVAL_S - 0.01, records.RECORD_INTERVAL_S,
              protocol.HEARTBEAT_S + records.RECORD_INTERVAL_S - 0.01,
              protocol.HEARTBEAT_S + records.RECORD_INTERVAL_S):
        clock.t = t0 + t
        job.dispatcher.tick()
        updates.append(stored_record(storage, job)["updated"] - t0)
    assert updates == pytest.approx([0.0, records.RECORD_INTERVAL_S, records.RECORD_INTERVAL_S,
                                     protocol.HEARTBEAT_S + records.RECORD_INTERVAL_S])


def test_the_record_counts_the_redeliveries_of_a_task_presumed_lost(storage, clock):
    """A host that takes over must not send a lost event again more often than the
    backend's budget allows: the record carries how many were sent."""
    be = lambda_like()
    job = start_job(storage, be, clock, [1, 2], timeout=100.0)
    first, second = be.sent
    for e in (first, second):
        be.listener.on_accepted(e, clock())
    be.run(first)
    job.dispatcher.tick()  # a latency to compare with
    clock.advance(31.0)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert (backup["task"], backup["backup"]) == (second["task"], "lost")
    clock.advance(records.RECORD_INTERVAL_S)
    job.dispatcher.tick()
    assert records.in_flight(stored_record(storage, job)) == [
        records.Sent(second["task"], round(backup["host_submit"], 3), 1, 0, 1)]
