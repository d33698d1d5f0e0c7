"""Speculative backups of slow tasks, and the one backup mechanism they share with
lost invocations: the rule, one backup per task, first write wins, the loser stopped
and billed. Dispatcher tests move a fake clock (see test_dispatch); the local test runs
real worker processes."""
from __future__ import annotations

import os
import time

import pytest

from cloudbutton_executor import Executor, InfrastructureError, WorkerDiedError, accounting, dispatch
from test_dispatch import FakeBackend, FakeClock, start_job, stored_status


class StoppingBackend(FakeBackend):
    """A fake backend that can stop a task's running invocations (and says which)."""

    def __init__(self, **limits):
        super().__init__(can_stop_running=True, **limits)
        self.stopped: list[tuple[str, str]] = []

    def stop_task(self, job_id, task):
        self.stopped.append((job_id, task))
        return True


@pytest.fixture
def clock():
    return FakeClock()


def run_all_but(be, straggler_tid):
    for e in list(be.sent):
        if e["task"] != straggler_tid:
            be.run(e)


def straggler_backed_up(storage, clock, k):
    """A 10-task job whose task ``k`` still runs when the others are done, 10 s later:
    ``(backend, job, its task id, its backup event)``."""
    be = StoppingBackend()
    job = start_job(storage, be, clock, list(range(10)))
    for e in be.sent:
        be.listener.on_start(e)
    slow = be.sent[k]["task"]
    run_all_but(be, slow)
    clock.advance(10)
    job.dispatcher.tick()
    return be, job, slow, be.sent[-1]


def test_a_task_three_times_slower_than_the_median_gets_one_backup(storage, clock):
    be = StoppingBackend()
    job = start_job(storage, be, clock, list(range(12)))
    for e in be.sent:
        be.listener.on_start(e)  # every task starts now (fake time)
    slow = be.sent[5]["task"]
    run_all_but(be, slow)  # 11 of 12 done in a few real milliseconds each
    limit = job.dispatcher._slow_limit()
    assert limit == pytest.approx(dispatch.BACKUP_MIN_EXTRA_S, abs=0.05)  # tiny tasks: the floor
    clock.advance(limit * 0.9)
    job.dispatcher.tick()
    assert len(be.sent) == 12  # not slow yet
    clock.advance(limit * 0.2)
    job.dispatcher.tick()
    assert len(be.sent) == 13
    backup = be.sent[-1]
    assert backup["task"] == slow and backup["attempt"] == 1 and backup["backup"] == "slow"
    clock.advance(100)
    job.dispatcher.tick()
    assert len(be.sent) == 13  # one backup per task, however slow
    # The backup's status is stored first and wins; the original's write is refused.
    be.run(backup)
    assert job.done() and job.result(timeout=0)[5] == 25
    assert be.stopped == [(job.job_id, slow)]
    assert be.run(be.event(slow, attempt=0))["written"] is False
    assert stored_status(storage, job, slow)["attempt"] == 1
    # Marked for the timeline and the detail, counted in the bill.
    (mark,) = job[5].backups
    assert mark["reason"] == "slow" and mark["attempt"] == 1
    assert job.stats["billed_invocations"] == 13 and job.stats["backups"] == 1
    record = job.outcomes.task_record(slow)
    assert record[1] == 1 and record[0]["backup_s"] > 0
    usage = accounting.Usage()
    usage.add_task(*record)
    assert usage.invocations == 2 and usage.run_s >= record[0]["backup_s"]


def test_the_original_can_win_the_race_and_the_backup_is_the_loser(storage, clock):
    be, job, slow, backup = straggler_backed_up(storage, clock, 0)
    assert backup["backup"] == "slow"
    be.run(be.event(slow, attempt=0))  # the straggler finishes first after all
    assert job.result(timeout=0)[0] == 0 and stored_status(storage, job, slow)["attempt"] == 0
    assert be.stopped == [(job.job_id, slow)]
    assert be.run(backup)["written"] is False
    # The killed loser's failure is no failure of the task.
    be.listener.on_failure(backup, WorkerDiedError("job cancelled: worker killed", slow))
    assert job.results(timeout=0)[0] == 0 and job.stats["billed_invocations"] == 11


@pytest.mark.parametrize("n, done, expect", [(9, 8, False), (12, 5, False), (12, 6, True)])
def test_backups_wait_for_ten_tasks_and_half_of_them_done(storage, clock, n, done, expect):
    be = StoppingBackend()
    job = start_job(storage, be, clock, list(range(n)))
    for e in be.sent:
        be.listener.on_start(e)
    for e in be.sent[:done]:
        be.run(e)
    clock.advance(60)
    job.dispatcher.tick()
    assert (len(be.sent) > n) is expect


def test_backups_false_turns_speculation_off(storage, clock):
    be = StoppingBackend()
    job = start_job(storage, be, clock, list(range(12)), backups=False)
    for e in be.sent:
        be.listener.on_start(e)
    run_all_but(be, be.sent[0]["task"])
    clock.advance(60)
    job.dispatcher.tick()
    assert len(be.sent) == 12 and not job.done()


def test_a_failed_attempt_while_its_backup_runs_does_not_end_the_task(storage, clock):
    be, job, slow, backup = straggler_backed_up(storage, clock, 3)
    be.listener.on_failure(be.event(slow, attempt=0), WorkerDiedError("died", slow))
    assert job.item_state(3) == "running"  # the backup still runs
    be.run(backup)
    assert job.result(timeout=0)[3] == 9


def test_lost_and_slow_backups_are_one_mechanism(storage, clock):
    """On a backend that may lose events, a silent task gets its lost-event backups and
    no extra slow one: every backup is counted once, with its reason."""
    be = StoppingBackend(lost_after_s=5.0, redeliveries=1, deadline_grace_s=20.0,
                         reports_accepted=True)
    job = start_job(storage, be, clock, list(range(10)), timeout=100.0)
    for e in be.sent:
        be.listener.on_accepted(e, clock())
    silent = be.sent[9]["task"]
    run_all_but(be, silent)
    clock.advance(5.5)
    job.dispatcher.tick()
    assert [e.get("backup") for e in be.sent[10:]] == ["lost"]
    clock.advance(60)
    job.dispatcher.tick()
    assert len(be.sent) == 11 and job.backups_sent == 1
    be.run(be.sent[-1])
    assert job.result(timeout=0)[9] == 81


def test_a_task_whose_first_event_was_never_accepted_still_gets_a_slow_backup(storage, clock):
    """Lambda throttled the first event until the backend gave up (a failure the job
    retries): the retry's acceptance starts the task's slow clock."""
    be = StoppingBackend(reports_accepted=True)
    job = start_job(storage, be, clock, list(range(12)), retries=1)
    throttled = be.sent[5]
    for e in be.sent:
        if e is not throttled:
            be.listener.on_accepted(e, clock())
    be.listener.on_failure(throttled, InfrastructureError("Lambda kept throttling", throttled["task"]))
    retry = be.event(throttled["task"], attempt=1)
    be.listener.on_accepted(retry, clock())
    run_all_but(be, throttled["task"])
    clock.advance(job.dispatcher._slow_limit() * 1.1)
    job.dispatcher.tick()
    backup = be.sent[-1]
    assert backup["task"] == throttled["task"] and backup["backup"] == "slow"
    assert backup["attempt"] == 2
    be.run(backup)
    assert job.result(timeout=0)[5] == 25


# A real straggler on real worker processes ------------------------------------------------
def straggle_once(x, marks):
    """Item 7's first run is slow (a sick worker); any later run of it is fast."""
    if x == 7:
        path = os.path.join(marks, "seen")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            time.sleep(30)
        except FileExistsError:
            pass
    time.sleep(0.05)
    return x


def test_a_local_straggler_is_beaten_by_its_backup_and_killed(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with Executor(workers=2) as ex:
        t0 = time.time()
        job = ex.map(straggle_once, range(20), extra_args=(str(marks),), timeout=60)
        assert job.result(timeout=25) == list(range(20))
        took = time.time() - t0
    assert took < 15, f"the backup should have finished the job long before 30 s ({took:.1f} s)"
    (mark,) = job[7].backups
    assert mark["reason"] == "slow" and job[7].attempts == 2
    # Every backup is billed (on a loaded machine another task may turn straggler too).
    backups = sum(len(job[i].backups) for i in range(20))
    assert job.stats["billed_invocations"] == 20 + backups
