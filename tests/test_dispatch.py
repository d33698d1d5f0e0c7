"""Dispatch policies, driven by a fake clock: nothing here sleeps.

The backend is a test double of the backend boundary (``Backend``): it records the
events it is given and, when a test says so, runs them through the real worker
handler in-process (a real status and real results land in a real LocalStorage)
and reports to the dispatcher as a real backend would. Retries, deadlines,
backups, redeliveries, polling, the in-flight cap and cancel markers are then
checked by moving the clock and calling ``tick()``.
"""
from __future__ import annotations

import json
import logging
import time

import pytest

from cloudbutton_executor import (
    InfrastructureError,
    LostInvocationError,
    TaskTimeoutError,
    WorkerDiedError,
    protocol,
    records,
    serialize,
    worker,
)
from cloudbutton_executor.backends import Backend, BackendLimits
from cloudbutton_executor.dispatch import JobSpec
from cloudbutton_executor.job import new_job
from cloudbutton_executor.storage import LocalStorage, NotFound

PREFIX = "cb"


class FakeClock:
    """Starts at the real time (workers stamp statuses with it) and moves only when told."""

    def __init__(self):
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class FakeBackend(Backend):
    """Records events; a test runs, fails, loses or accepts them explicitly."""

    name = "fake"

    def __init__(self, **limits):
        base = dict(concurrency=2, max_timeout_s=None, payload_limit_bytes=None, max_inflight=None,
                    can_stop_running=False, calls_back=True, poll_interval_s=None,
                    deadline_grace_s=None, lost_after_s=None, redeliveries=0,
                    reports_accepted=False, default_memory_mb=1024, auto_batch_target_s=1.0)
        self._limits = BackendLimits(**{**base, **limits})
        self.sent: list[dict] = []
        self.listener = None
        self.cancelled: list[str] = []
        self.refuse: Exception | None = None

    @property
    def limits(self) -> BackendLimits:
        return self._limits

    def invoke(self, events, listener):
        if self.refuse is not None:
            raise self.refuse
        self.listener = listener
        self.sent.extend(events)

    def cancel_job(self, job_id):
        self.cancelled.append(job_id)

    def status(self):
        return {"backend": "fake", "ok": True}

    # What a test makes happen --------------------------------------------------
    def event(self, tid: str, attempt: int | None = None) -> dict:
        """The last event sent for ``tid`` (of that attempt, if given)."""
        return [e for e in self.sent if e["task"] == tid
                and (attempt is None or e["attempt"] == attempt)][-1]

    def run(self, event: dict) -> dict:
        """A worker runs the event: the real handler stores its status."""
        self.listener.on_start(event)
        response = worker.handler(event)
        if self.limits.calls_back:
            self.listener.on_done(event, response)
        return response


def square(x):
    return x * x


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(str(tmp_path / "storage"))


def start_job(storage, backend, clock, items, *, fn=square, chunksize=1, retries=0, timeout=10.0,
              **spec_options):
    blob = serialize.dumps(fn)
    fkey = protocol.function_key(PREFIX, serialize.digest(blob))
    storage.put(fkey, blob)
    spec = JobSpec(job_id=protocol.new_job_id(), prefix=PREFIX, function_key=fkey,
                   function_name=fn.__name__, n_items=len(items), chunksize=chunksize,
                   timeout=timeout, retries=retries, memory_mb=1024, created=clock(),
                   **spec_options)
    job = new_job(spec, backend, storage, serialize.dumps_scalar_calls(list(items)), clock)
    job.dispatcher.start()
    return job


def stored_status(storage, job, tid):
    return json.loads(storage.get(protocol.status_key(PREFIX, job.job_id, tid)))


def forge_status(storage, job, tid):
    """A "done" status for ``tid``, sealed with a key that is not the job's."""
    from cloudbutton_executor import integrity

    skey = protocol.status_key(PREFIX, job.job_id, tid)
    storage.put(skey, integrity.seal(b"o" * 32, protocol.object_name(PREFIX, skey),
                                     {"job_id": job.job_id, "task": tid, "state": "done"}))


# Retries ------------------------------------------------------------------------------
def test_an_infrastructure_failure_is_retried_then_succeeds(storage, clock, caplog):
    caplog.set_level(logging.INFO, logger="cloudbutton.dispatch")
    be = FakeBackend()
    job = start_job(storage, be, clock, [3], retries=1)
    (first,) = be.sent
    clock.advance(2)
    be.listener.on_failure(first, WorkerDiedError("killed by SIGKILL", first["task"]))
    # The log says which task is retried and why (the retry is otherwise silent).
    assert f"job {job.job_id}: retrying task {first['task']} after killed by SIGKILL" in caplog.messages
    again = be.event(first["task"])
    assert again is not first and again["attempt"] == 1 and again["host_submit"] == clock()
    assert job.retried == 1 and not job.done()
    be.run(again)
    assert job.result(timeout=0) == [9]
    assert job[0].attempts == 2 and job.counts()["retried"] == 1


def test_without_retries_the_failure_is_stored_first_and_a_late_result_loses(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [3])
    (event,) = be.sent
    be.listener.on_failure(event, WorkerDiedError("worker died", event["task"]))
    assert len(be.sent) == 1  # no retry
    (out,) = job.results(timeout=0)
    assert isinstance(out, WorkerDiedError)
    status = stored_status(storage, job, event["task"])
    assert status["written_by"] == "host" and status["infra"]["kind"] == "died"
    # The worker's status comes too late: first write wins, the outcome stays.
    assert be.run(event)["written"] is False
    assert isinstance(job.results(timeout=0)[0], WorkerDiedError)


def test_a_task_failing_every_time_runs_retries_plus_one_times_and_stores_its_last_failure(
        storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [3], retries=2)
    tid = be.sent[0]["task"]
    errors = []
    for n in range(3):
        clock.advance(1)
        errors.append(WorkerDiedError(f"killed by SIGKILL ({n})", tid))
        be.listener.on_failure(be.event(tid), errors[-1])
    assert [e["attempt"] for e in be.sent] == [0, 1, 2]  # no fourth
    (out,) = job.results(timeout=0)
    assert out is not None and str(out) == str(errors[-1]) and job.retried == 2
    status = stored_status(storage, job, tid)
    assert status["attempt"] == 2 and status["state"] == "error"
    assert status["infra"] == {"type": "WorkerDiedError", "kind": "died", "message": str(errors[-1])}
    assert status["stats"]["host_submit"] == be.sent[-1]["host_submit"]


# Deadlines ----------------------------------------------------------------------------
def test_a_silent_invocation_ends_lost_at_its_timeout_plus_grace(storage, clock):
    be = FakeBackend(deadline_grace_s=5.0)
    job = start_job(storage, be, clock, [1, 2], timeout=10.0)
    t0 = clock()
    be.run(be.sent[0])
    clock.t = t0 + 15.0  # exactly timeout + grace: not yet late
    job.dispatcher.tick()
    assert not job.done() and job.item_state(1) == "queued"
    clock.t = t0 + 15.01
    job.dispatcher.tick()
    assert job.done() and job.results(timeout=0)[0] == 1
    err = job.results(timeout=0)[1]
    assert isinstance(err, LostInvocationError) and "timeout of 10 s + 5 s" in str(err)
    assert stored_status(storage, job, be.sent[1]["task"])["infra"]["kind"] == "lost"


def test_a_backend_that_enforces_timeouts_itself_gets_no_host_deadline(storage, clock):
    be = FakeBackend(deadline_grace_s=None)
    job = start_job(storage, be, clock, [1], timeout=1.0)
    clock.advance(10_000)
    job.dispatcher.tick()
    assert job.item_state(0) == "queued" and not job.done()


def test_the_deadline_clock_starts_when_the_backend_accepts_the_event(storage, clock):
    be = FakeBackend(deadline_grace_s=5.0, reports_accepted=True)
    job = start_job(storage, be, clock, [1], timeout=10.0)
    (event,) = be.sent
    clock.advance(1_000)  # throttled all along: no clock yet
    job.dispatcher.tick()
    assert not job.done()
    be.listener.on_accepted(event, clock())
    clock.advance(14.9)
    job.dispatcher.tick()
    assert not job.done()
    clock.advance(0.2)
    job.dispatcher.tick()
    assert isinstance(job.results(timeout=0)[0], LostInvocationError)


def test_an_event_not_yet_accepted_does_not_hold_up_the_deadlines_of_the_others(storage, clock):
    be = FakeBackend(deadline_grace_s=5.0, reports_accepted=True)
    job = start_job(storage, be, clock, [1, 2], timeout=10.0)
    first, second = be.sent
    be.listener.on_accepted(second, clock())  # the first is still throttled
    clock.advance(15.1)
    job.dispatcher.tick()
    assert job.item_state(0) == "queued"
    assert isinstance(job[1].exception(timeout=0), LostInvocationError)


def test_a_retry_gets_a_fresh_deadline(storage, clock):
    be = FakeBackend(deadline_grace_s=5.0)
    job = start_job(storage, be, clock, [4], retries=1, timeout=10.0)
    clock.advance(15.1)
    job.dispatcher.tick()  # late: retried, not failed
    retry = be.event(be.sent[0]["task"], attempt=1)
    assert not job.done() and job.retried == 1
    clock.advance(15.0)
    job.dispatcher.tick()
    assert not job.done()  # 15 s after the retry: its own deadline not passed
    be.run(retry)
    assert job.result(timeout=0) == [16]


# Events presumed lost: backups (a backend that never calls back, like Lambda) ----------
def lambda_like(**more):
    return FakeBackend(calls_back=False, poll_interval_s=0.2, deadline_grace_s=20.0,
                       lost_after_s=30.0, redeliveries=2, reports_accepted=True, **more)


def test_a_silent_event_gets_backups_within_its_budget_and_the_first_status_wins(storage, clock):
    be = lambda_like()
    job = start_job(storage, be, clock, [1, 2], timeout=100.0)
    first, second = be.sent
    for e in (first, second):
        be.listener.on_accepted(e, clock())
    be.run(first)  # stored a moment (real time) after its fake submit time
    job.dispatcher.tick()
    assert job.item_state(0) == "done"
    st = stored_status(storage, job, first["task"])["stats"]
    latency = st["result_stored"] - st["host_submit"]
    # Presumed lost after min(lost_after + 2 x p90 latency, max(lost_after, (timeout +
    # grace) / (redeliveries + 1))) = min(30 + 2 x latency, 40) s of silence.
    clock.advance(29.9 + 2 * latency)
    job.dispatcher.tick()
    assert len(be.sent) == 2
    clock.advance(0.2)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert len(be.sent) == 3 and backup["task"] == second["task"] and backup["attempt"] == 1
    assert job.retried == 1
    be.listener.on_accepted(backup, clock())
    clock.advance(10.0)
    be.listener.on_accepted(second, clock())  # the original attempt, accepted late: ignored
    clock.advance(20.1 + 2 * latency)  # 30.1 s (+ 2 x latency) after the backup was accepted
    job.dispatcher.tick()
    assert len(be.sent) == 4 and be.sent[-1]["attempt"] == 2
    be.listener.on_accepted(be.sent[-1], clock())
    clock.advance(30.1)
    job.dispatcher.tick()
    assert len(be.sent) == 4  # the budget (2 redeliveries) is spent
    be.run(backup)  # the first attempt to store a status wins
    assert be.run(second)["written"] is False
    job.dispatcher.tick()
    assert job.result(timeout=0) == [1, 4]
    assert stored_status(storage, job, second["task"])["attempt"] == 1


def test_backups_do_not_move_the_deadline_of_their_task(storage, clock):
    be = lambda_like()
    job = start_job(storage, be, clock, [1, 2], timeout=100.0)
    first, second = be.sent
    t0 = clock()
    for e in (first, second):
        be.listener.on_accepted(e, t0)
    be.run(first)
    while clock() < t0 + 119.0:  # timeout + grace = 120 s after the first acceptance
        clock.advance(5.0)
        n = len(be.sent)
        job.dispatcher.tick()
        for e in be.sent[n:]:
            be.listener.on_accepted(e, clock())
    assert len(be.sent) == 4 and not job.done()  # two backups (the budget), still waiting
    clock.t = t0 + 120.01
    job.dispatcher.tick()
    assert isinstance(job[1].exception(timeout=0), TaskTimeoutError) and job.done()


def test_backups_wait_for_a_typical_latency_to_compare_with(storage, clock):
    be = lambda_like()
    job = start_job(storage, be, clock, [1], timeout=100.0)
    be.listener.on_accepted(be.sent[0], clock())
    clock.advance(119.0)  # silent for long, but nothing has finished yet
    job.dispatcher.tick()
    assert len(be.sent) == 1
    clock.advance(1.1)  # past timeout + grace from acceptance: a timeout, not lost
    job.dispatcher.tick()
    (err,) = job.results(timeout=0)
    assert isinstance(err, TaskTimeoutError) and "its runtime died" in str(err)


def test_a_backend_that_does_not_call_back_is_polled(storage, clock):
    be = lambda_like()
    job = start_job(storage, be, clock, list(range(5)), chunksize=2)
    for e in be.sent:
        be.run(e)  # statuses stored; nobody calls back
    assert job.counts()["done"] == 0
    lists = job.dispatcher.storage.counts.get("LIST", 0)
    job.dispatcher.tick()
    assert job.result(timeout=0) == [0, 1, 4, 9, 16]
    assert job.dispatcher.storage.counts["LIST"] == lists + 1  # one LIST found all three


def test_max_inflight_caps_what_is_sent_at_once(storage, clock):
    be = FakeBackend(max_inflight=3)
    job = start_job(storage, be, clock, list(range(7)))
    assert [e["task"] for e in be.sent] == ["000000-000001", "000001-000002", "000002-000003"]
    be.run(be.sent[1])
    assert len(be.sent) == 4 and be.sent[-1]["task"] == "000003-000004"
    while not job.done():
        be.run(next(e for e in be.sent if job.item_state(protocol.task_range(e["task"])[0])
                    in ("queued", "running")))
    assert job.result(timeout=0) == [x * x for x in range(7)]


# Lost events the backend knows of, refused events, throttling ------------------------
def test_a_lost_event_is_sent_again_while_redeliveries_last_then_fails(storage, clock):
    be = FakeBackend(redeliveries=1)
    job = start_job(storage, be, clock, [5])
    (event,) = be.sent
    be.listener.on_lost(event, LostInvocationError("never reached a worker", event["task"]))
    again = be.sent[-1]
    assert len(be.sent) == 2 and again["attempt"] == 1 and job.retried == 1
    be.listener.on_lost(again, LostInvocationError("lost again", event["task"]))
    assert len(be.sent) == 2  # budget spent, no user retries: the task fails
    (err,) = job.results(timeout=0)
    assert isinstance(err, LostInvocationError) and "lost again" in str(err)


def _crash_report(storage, job, event, message):
    from cloudbutton_executor import integrity

    ckey = protocol.crash_key(PREFIX, job.job_id, event["task"], event["attempt"])
    storage.put(ckey, integrity.seal(job.dispatcher.key, protocol.object_name(PREFIX, ckey), {
        "v": 3, "job_id": job.job_id, "task": event["task"], "attempt": event["attempt"],
        "kind": "died", "message": message}))


@pytest.mark.parametrize("retries", [0, 1])
def test_a_crash_report_ends_backups_and_counts_against_retries(storage, clock, retries):
    """A task whose silence sent backups, then whose worker crashed: from the first crash
    report on, no backups, and crashes of the attempts already sent count once."""
    be = lambda_like()
    job = start_job(storage, be, clock, [1, 2], timeout=100.0, retries=retries)
    first, second = be.sent
    for e in (first, second):
        be.listener.on_accepted(e, clock())
    be.run(first)
    job.dispatcher.tick()
    clock.advance(31.0)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert backup["task"] == second["task"] and backup["attempt"] == 1
    be.listener.on_accepted(backup, clock())
    _crash_report(storage, job, second, "task 000001-000002: worker process was killed by SIGSEGV")
    job.dispatcher.tick()
    sent_after_crash = be.sent[3:]
    assert len(sent_after_crash) == retries  # a retry, or the end
    _crash_report(storage, job, backup, "the backup crashed too")  # superseded: no effect
    for _ in range(2):  # 80 s of silence: backups (30 s), not the retry's deadline (120 s)
        clock.advance(40.0)
        job.dispatcher.tick()
        for e in be.sent[3:]:
            be.listener.on_accepted(e, clock())
    assert len(be.sent) == 3 + retries  # no backups of a task known to have run
    if retries:
        retry = be.sent[-1]
        assert retry["attempt"] == 2
        _crash_report(storage, job, retry, "worker process was killed by SIGSEGV again")
        job.dispatcher.tick()
    out = job.results(timeout=0)
    assert isinstance(out[1], WorkerDiedError) and "SIGSEGV" in str(out[1]) and out[0] == 1


def test_events_the_backend_refuses_end_their_tasks_at_once(storage, clock):
    be = FakeBackend()
    be.refuse = RuntimeError("the backend has been shut down")
    job = start_job(storage, be, clock, [1, 2])
    assert job.done()
    errs = job.results(timeout=0)
    assert all(type(e) is InfrastructureError and "shut down" in str(e) for e in errs)


def test_throttling_is_counted(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1])
    be.listener.on_throttled(be.sent[0], 0.5)
    be.listener.on_throttled(be.sent[0], None)
    assert job.throttled == 2 and job.counts()["throttled"] == 2 and job.stats["throttled"] == 2


# Cancel, follow, errors ------------------------------------------------------------------
def test_a_cancel_marker_written_elsewhere_cancels_at_the_next_tick(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2, 3])
    be.run(be.sent[0])
    storage.put_if_absent(protocol.cancel_key(PREFIX, job.job_id),
                          protocol.cancel_marker(by="jupyter-panel", at=clock()))
    job.dispatcher.tick()
    assert job.cancelled and job.done() and be.cancelled == [job.job_id]
    assert job.counts()["cancelled"] == 2 and job.results(timeout=0)[0] == 1
    marker = protocol.read_cancel_marker(storage.get(protocol.cancel_key(PREFIX, job.job_id)))
    assert marker["by"] == "jupyter-panel"  # first write wins: the panel's marker stays


def touch(path):
    open(path, "x").close()
    return path


def test_an_event_of_a_cancelled_job_runs_nothing_and_writes_nothing(storage, clock, tmp_path):
    be = FakeBackend()
    marks = [str(tmp_path / f"ran-{i}") for i in range(2)]
    job = start_job(storage, be, clock, marks, fn=touch)
    storage.put_if_absent(protocol.cancel_key(PREFIX, job.job_id),
                          protocol.cancel_marker(by="jupyter-panel", at=clock()))
    event = be.sent[0]  # delivered after the marker (a queued or redelivered event)
    assert worker.handler(event) == {"task": event["task"], "state": "cancelled"}
    assert not (tmp_path / "ran-0").exists()
    with pytest.raises(NotFound):
        storage.get(protocol.status_key(PREFIX, job.job_id, event["task"]))


def test_a_followed_job_collects_stored_statuses_and_ends_the_rest_as_lost(storage, clock):
    be = FakeBackend()
    started = start_job(storage, be, clock, [1, 2, 3, 4])
    be.run(be.sent[0])
    be.run(be.sent[2])  # items 1 and 3 were never run
    follower, manifest = following_an_older_version(storage, clock, started)
    assert follower.item_state(0) == "done" and follower.item_state(2) == "done"
    assert protocol.lost_deadline(manifest) == manifest["created"] + 10.0 * 4 + 60
    clock.t = protocol.lost_deadline(manifest)  # exactly at the deadline: not yet lost
    follower.dispatcher.tick()
    assert not follower.done() and follower.monitor_error is None
    clock.t = protocol.lost_deadline(manifest) + 0.1
    follower.dispatcher.tick()
    out = follower.results(timeout=0)
    assert out[0] == 1 and out[2] == 9
    assert isinstance(out[1], LostInvocationError) and isinstance(out[3], LostInvocationError)


class FlakyStorage(LocalStorage):
    """A real local storage whose next read of a status fails once."""

    fail_next = False

    def get(self, key, start=None, stop=None):
        if self.fail_next and key.endswith("/status.json"):
            self.fail_next = False
            raise OSError("the disk hiccuped")
        return super().get(key, start, stop)


def test_a_status_that_cannot_be_read_is_recorded_and_collected_at_the_next_tick(tmp_path, clock):
    storage = FlakyStorage(str(tmp_path / "flaky"))
    be = FakeBackend()
    job = start_job(storage, be, clock, [7])
    storage.fail_next = True
    # A response without the status (a worker whose write was not the first, a backend
    # that does not call back): the host reads it from storage.
    assert be.sent[0].pop("reply_status") is True
    be.run(be.sent[0])
    assert not job.done() and isinstance(job.monitor_error, OSError)
    job.dispatcher.tick()
    assert job.result(timeout=0) == [49]


def test_task_ids_of_a_million_item_job_keep_key_order(storage, clock):
    be = FakeBackend(max_inflight=4)
    n = 1_000_001
    start_job(storage, be, clock, [0] * 8, chunksize=1)  # a small job first: 6-digit ids
    assert be.sent[0]["task"] == "000000-000001"
    tids = [protocol.task_id(a, min(a + 250_000, n), n) for a in range(0, n, 250_000)]
    assert tids == ["0000000-0250000", "0250000-0500000", "0500000-0750000", "0750000-1000000",
                    "1000000-1000001"]
    assert sorted(tids) == tids and [protocol.task_range(t) for t in tids][-1] == (1_000_000, n)
    keys = [protocol.status_key(PREFIX, "j", t) for t in tids]
    assert [protocol.task_id_from_status_key(k) for k in keys] == tids
    assert protocol.task_id_from_status_key(protocol.status_key(PREFIX, "j", "12-3")) is None
    with pytest.raises(ValueError):
        protocol.task_range("../000001")
    with pytest.raises(NotFound):
        storage.get(protocol.status_key(PREFIX, "j", tids[0]))


def test_a_status_is_read_only_once_verified_and_the_refusal_names_it():
    from cloudbutton_executor import IntegrityError, integrity

    key, other = b"k" * 32, b"o" * 32
    tid, skey = "000000-000001", protocol.status_key("pre", "job1", "000000-000001")
    doc = {"job_id": "job1", "task": tid, "state": "done"}
    name = protocol.object_name("pre", skey)
    assert worker.open_status(integrity.seal(key, name, doc), "pre", skey, key, "job1", tid) == doc
    with pytest.raises(IntegrityError, match=f"^the status {name} is a tampered or foreign object"):
        worker.open_status(integrity.seal(other, name, doc), "pre", skey, key, "job1", tid)
    # Sealed with the job's key, but another task's status copied here.
    moved = {**doc, "task": "000001-000002"}
    with pytest.raises(IntegrityError, match=f"the status {skey} is a foreign object: it is task "
                                             "'000001-000002' of job 'job1'"):
        worker.open_status(integrity.seal(key, name, moved), "pre", skey, key, "job1", tid)


def test_a_forged_status_ends_its_task_with_an_integrity_error_and_nothing_else(storage, clock,
                                                                               caplog):
    from cloudbutton_executor import IntegrityError

    be = FakeBackend(deadline_grace_s=5.0)
    job = start_job(storage, be, clock, [1, 2], timeout=10.0)
    ev = be.sent[0]
    forge_status(storage, job, ev["task"])
    be.listener.on_done(ev, {"state": "done"})
    err = job[0].exception(timeout=0)
    assert isinstance(err, IntegrityError)
    assert str(err).startswith(f"task {ev['task']}: the status ") and "tampered or foreign" in str(err)
    assert job[0].attempts == 1 and job.counts()["failed"] == 1
    # Logged as an error naming the job, the task and the refusal.
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"job {job.job_id}: {err}"]
    be.run(be.sent[1])
    assert job.done() and job.results(timeout=0)[1] == 4
    # Refused once and for all: not sent again, not ended again as lost at its deadline.
    clock.advance(60)
    job.dispatcher.tick()
    assert job[0].exception(timeout=0) is err and len([e for e in be.sent if e["task"] == ev["task"]]) == 1


# Taking over a job whose host stopped ------------------------------------------------------
def stored_record(storage, job):
    return json.loads(storage.get(protocol.dispatch_key(PREFIX, job.job_id)))


def following_an_older_version(storage, clock, job):
    """Another host attaches to ``job`` as to a job of an older version (which cannot be
    taken over): what is missing at its deadline ends lost. (The follower, the manifest.)"""
    manifest = json.loads(storage.get(protocol.manifest_key(PREFIX, job.job_id)))
    other = new_job(JobSpec.from_manifest(manifest, PREFIX), FakeBackend(), storage, None, clock)
    other.dispatcher.follow(deadline=protocol.lost_deadline(manifest))
    return other, manifest


def following(storage, clock, job, backend=None):
    """Another host attaches to ``job``: it follows it through storage only."""
    manifest = json.loads(storage.get(protocol.manifest_key(PREFIX, job.job_id)))
    other = new_job(JobSpec.from_manifest(manifest, PREFIX), backend or FakeBackend(), storage,
                    None, clock)
    other.dispatcher.follow()
    return other


def test_a_take_over_logs_where_the_dead_host_stopped_and_claims_the_next_epoch(storage, clock,
                                                                             caplog):
    """Each take-over claims the next epoch (first claim wins: a host that read the same
    record loses), and says in the log when and where the host it replaces stopped."""
    caplog.set_level(logging.INFO, logger="cloudbutton.dispatch")
    clock.t -= 3600  # the dead host stopped an hour ago
    job = start_job(storage, FakeBackend(max_inflight=2), clock, [1, 2, 3, 4, 5])
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # its record, then it stopped
    record = stored_record(storage, job)
    assert record["epoch"] == 0 and record["next_item"] == 2
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    first, rival = following(storage, clock, job), following(storage, clock, job)
    assert first.dispatcher.check_owner(clock(), force=True)
    stopped = time.strftime("%H:%M:%S", time.localtime(record["updated"]))
    assert (f"job {job.job_id}: resumed from a host that stopped at {stopped} (2 tasks in "
            "flight, items 2.. never sent)") in caplog.messages
    assert stored_record(storage, first)["epoch"] == 1
    assert first.item_input_repr(3) == "4"  # its inputs: read back from storage, verified
    # The rival read the same stale record: its claim of epoch 1 loses, it only follows.
    assert rival.dispatcher.resume(record, None) is False
    assert rival.dispatcher.following and not rival.dispatcher.backend.sent
    # Another job taken over in the same storage claims its own epoch 1.
    other_job = start_job(storage, FakeBackend(), clock, [6])
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    assert following(storage, clock, other_job).dispatcher.check_owner(clock(), force=True)
    # The first taker stops too: a third host takes over at epoch 2 and finishes the job.
    third = following(storage, clock, job)
    assert third.dispatcher.check_owner(clock(), force=True)
    assert stored_record(storage, third)["epoch"] == 2
    be = third.dispatcher.backend
    for tid in sorted({e["task"] for e in be.sent}):
        be.run(be.event(tid))
    assert third.result(timeout=0) == [1, 4, 9, 16, 25]
    # Everything the take-overs stored lies under the job's prefix (``clean`` finds it).
    assert all(k.startswith(PREFIX + "/") for k in storage.list(""))


def test_a_taken_over_task_keeps_its_attempts_used_retries_and_deadline(storage, clock):
    """On a backend whose events outlive their host (Lambda), a task the dead host had
    retried is not sent again at once: it keeps its deadline, and once silent past it, has
    no retry left (nor redelivery): it ends lost, with the attempts it really had."""
    limits = dict(deadline_grace_s=5.0, lost_after_s=30.0, redeliveries=0, reports_accepted=True)
    be = FakeBackend(**limits)
    job = start_job(storage, be, clock, [1, 2], timeout=100.0, retries=1)
    first, second = be.sent
    for e in (first, second):
        be.listener.on_accepted(e, clock())
    clock.advance(1)
    be.listener.on_failure(first, WorkerDiedError("killed by SIGKILL", first["task"]))
    retry = be.event(first["task"])
    assert retry["attempt"] == 1
    be.listener.on_accepted(retry, clock())
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # the record now says: the retry in flight since its acceptance
    be.run(second)  # stored after the record: collected by the next host, not sent again
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    be2 = FakeBackend(**limits)
    other = following(storage, clock, job, be2)
    assert other.dispatcher.check_owner(clock(), force=True)
    assert be2.sent == [] and other.item_state(1) == "done"
    assert other[0].stats["host_submit"] == pytest.approx(retry["host_submit"], abs=1e-3)
    # Its record says the same: a further take-over would keep that deadline and count.
    assert [tuple(s) for s in records.in_flight(stored_record(storage, other))] == [
        (first["task"], round(retry["host_submit"], 3), 1, 1, 0)]
    deadline = retry["host_submit"] + 100.0 + 5.0
    clock.t = deadline - 0.5
    other.dispatcher.tick()
    assert not other.done() and other.monitor_error is None
    clock.t = deadline + 0.01
    other.dispatcher.tick()
    assert other.monitor_error is None and other.done() and be2.sent == []
    err = other[0].exception(timeout=0)
    assert isinstance(err, LostInvocationError) and "sent before its host stopped" in str(err)
    assert other[0].attempts == 2 and other.results(timeout=0)[1] == 4


@pytest.mark.parametrize("what, key, field", [
    ("the dispatch record", protocol.dispatch_key, "next_item"),  # "all sent": none would run
    ("the manifest", protocol.manifest_key, "timeout"),
])
def test_a_tampered_record_or_manifest_is_refused_by_name_and_nothing_is_taken_over(
        storage, clock, what, key, field):
    import re

    from cloudbutton_executor import IntegrityError

    job = start_job(storage, FakeBackend(), clock, [1, 2])
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    other = following(storage, clock, job)
    tampered = key(PREFIX, job.job_id)
    doc = json.loads(storage.get(tampered))
    doc[field] = 2
    storage.put(tampered, json.dumps(doc).encode())
    name = protocol.object_name(PREFIX, tampered)
    with pytest.raises(IntegrityError,
                       match="^" + re.escape(f"{what} {name} is a tampered or foreign object")):
        other.dispatcher.check_owner(clock(), force=True)
    assert other.dispatcher.following and other.dispatcher.backend.sent == []



def test_a_refused_retry_keeps_its_attempts_and_times_and_is_never_sent_again(storage, clock,
                                                                             caplog):
    """A task retried once whose second attempt's status is forged: it ends with the
    refusal, counting both attempts, stamped when the host saw it; later deadlines and
    ticks leave it alone (the other task is retried at its own deadline)."""
    from cloudbutton_executor import IntegrityError

    be = FakeBackend(deadline_grace_s=5.0)
    job = start_job(storage, be, clock, [1, 2], timeout=10.0, retries=1)
    first = be.sent[0]
    clock.advance(1)
    be.listener.on_failure(first, WorkerDiedError("killed by SIGKILL", first["task"]))
    retry = be.event(first["task"], attempt=1)
    clock.advance(1)
    forge_status(storage, job, first["task"])
    be.listener.on_done(retry, {"state": "done"})
    err = job[0].exception(timeout=0)
    assert isinstance(err, IntegrityError) and job[0].attempts == 2
    assert job[0].error_info["type"] == "IntegrityError" and job[0].error_info["message"] == str(err)
    stats = job[0].stats
    assert stats["host_submit"] == retry["host_submit"]
    assert stats["host_seen"] == stats["host_fetched"] == clock()
    for _ in range(3):
        clock.advance(20)
        job.dispatcher.tick()
    assert [e["attempt"] for e in be.sent if e["task"] == first["task"]] == [0, 1]
    assert [e["attempt"] for e in be.sent if e["task"] != first["task"]] == [0, 1]  # its retry
    assert job[0].exception(timeout=0) is err
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_a_status_unreadable_once_then_found_forged_is_refused_once(tmp_path, clock, caplog):
    from cloudbutton_executor import IntegrityError

    storage = FlakyStorage(str(tmp_path / "flaky"))
    be = FakeBackend()
    job = start_job(storage, be, clock, [7, 8])
    ev = be.sent[0]
    forge_status(storage, job, ev["task"])
    storage.fail_next = True
    be.listener.on_done(ev, {"state": "done"})
    assert isinstance(job.monitor_error, OSError)
    job.dispatcher.tick()  # read again: refused
    err = job[0].exception(timeout=0)
    assert isinstance(err, IntegrityError)
    lists = job.dispatcher.storage.counts.get("LIST", 0)
    for _ in range(2):
        job.dispatcher.tick()
    assert job[0].exception(timeout=0) is err
    # Nothing is left to collect: a backend that calls back is not polled any more.
    assert job.dispatcher.storage.counts.get("LIST", 0) == lists
    assert len([r for r in caplog.records if "tampered or foreign" in r.getMessage()]) == 1


def test_a_status_stored_just_before_the_take_over_is_not_run_again(storage, clock):
    """The dead host's record lags what it sent (its first record: nothing sent yet); one of
    its tasks stores its status after the follower's last poll. Taking over, the new host
    collects it first and sends only the items without a result."""
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2, 3])
    assert stored_record(storage, job)["next_item"] == 0
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    other = following(storage, clock, job)
    be.run(be.sent[1])  # after the follower looked
    assert other.item_state(1) == "queued"
    assert other.dispatcher.check_owner(clock(), force=True)
    be2 = other.dispatcher.backend
    assert [e["task"] for e in be2.sent] == [be.sent[0]["task"], be.sent[2]["task"]]
    for e in list(be2.sent):
        be2.run(e)
    assert other.result(timeout=0) == [1, 4, 9]


def test_tasks_a_dead_host_sent_that_stay_silent_all_end_at_their_deadline(storage, clock):
    limits = dict(deadline_grace_s=5.0, lost_after_s=30.0, redeliveries=0, reports_accepted=True)
    be = FakeBackend(**limits)
    job = start_job(storage, be, clock, [1, 2, 3], timeout=100.0)
    for e in be.sent:
        be.listener.on_accepted(e, clock())
    sent_at = be.sent[0]["host_submit"]
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # its record, then it stopped
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    other = following(storage, clock, job, FakeBackend(**limits))
    assert other.dispatcher.check_owner(clock(), force=True)
    clock.t = sent_at + 100.0 + 5.0 + 0.01
    other.dispatcher.tick()
    out = other.results(timeout=0)
    assert all(isinstance(e, LostInvocationError) for e in out) and other.monitor_error is None


# The dispatch record of auto-batched jobs ---------------------------------------------
class RecordReadingBackend(FakeBackend):
    """Reads the job's stored dispatch record whenever it is handed events."""

    def __init__(self, storage, **limits):
        super().__init__(**limits)
        self.storage = storage
        self.records_seen: list[dict] = []

    def invoke(self, events, listener):
        job_id = events[0]["job_id"]
        raw = self.storage.get(protocol.dispatch_key(PREFIX, job_id))
        self.records_seen.append(json.loads(raw))
        super().invoke(events, listener)


@pytest.mark.parametrize("events_outlive_their_host", [True, False])
def test_auto_batch_boundaries_are_recorded_before_they_are_sent_where_events_outlive_the_host(
        storage, clock, events_outlive_their_host):
    """Sizes chosen on the fly: on a backend whose events may still run after their host
    died (Lambda), a host taking over must find every task's boundaries in the record, so
    each dispatch writes it first. Local workers die with their host (all they store is
    stored when another host takes over): the first tasks are recorded at once, later
    ones at the record's interval."""
    from cloudbutton_executor import records

    limits = dict(lost_after_s=30.0) if events_outlive_their_host else {}
    be = RecordReadingBackend(storage, **limits)
    job = start_job(storage, be, clock, list(range(200)), chunksize="auto")
    first_window = list(be.sent)
    assert len(first_window) == 4 and len(be.records_seen) == 1
    recorded = {s.tid for s in records.in_flight(be.records_seen[0])}
    assert {e["task"] for e in first_window} <= recorded
    for _ in range(3):  # each completion sends the next batch
        be.run(be.sent[len(be.sent) - 4])
    later = be.sent[4:]
    assert later
    if events_outlive_their_host:
        for event, record in zip(later, be.records_seen[1:], strict=True):
            assert event["task"] in {s.tid for s in records.in_flight(record)}
            assert protocol.task_range(event["task"])[1] <= record["next_item"]
    else:
        assert all(r == be.records_seen[0] for r in be.records_seen[1:])
        clock.advance(records.RECORD_INTERVAL_S)
        job.dispatcher.tick()  # the record catches up at its interval
        record = json.loads(storage.get(protocol.dispatch_key(PREFIX, job.job_id)))
        assert record["next_item"] == protocol.task_range(be.sent[-1]["task"])[1]
        assert {e["task"] for e in later} <= {s.tid for s in records.in_flight(record)}


def test_a_local_take_over_sends_each_inherited_task_again_as_its_next_attempt(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2], retries=1)
    first, second = be.sent
    be.listener.on_failure(first, WorkerDiedError("killed by SIGKILL", first["task"]))
    clock.advance(records.RECORD_INTERVAL_S + 0.5)
    job.dispatcher.tick()  # its record (the retry in flight), then it stopped
    clock.advance(protocol.DISPATCH_STALE_S + 1)
    other = following(storage, clock, job)  # local workers die with their host: sent again
    assert other.dispatcher.check_owner(clock(), force=True)
    be2 = other.dispatcher.backend
    assert sorted((e["task"], e["attempt"]) for e in be2.sent) == [(first["task"], 2),
                                                                   (second["task"], 1)]
    for e in list(be2.sent):
        be2.run(e)
    assert other.result(timeout=0) == [1, 4] and other.monitor_error is None
