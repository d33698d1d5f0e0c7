"""Resume after a dead host: a job whose host process is killed mid-job (more tasks than it
had sent) is finished by ``attach`` from a new process, from what storage says was sent.

The host and the attaching process are real, separate Python processes; the host dies by
SIGKILL (no cleanup, like a crashed kernel)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from cloudbutton_executor import Executor, protocol, records
from cloudbutton_executor.storage import LocalStorage

HOST_SCRIPT = """
import os, signal, sys, time
from cloudbutton_executor import Executor

def work(x):
    import time
    time.sleep({sleep})
    return x * x

ex = Executor({backend!r}, workers={workers}, timeout={timeout}{options})
job = ex.map(work, range({n}), chunksize={chunksize!r})
print(job.job_id, flush=True)
while job.counts()["done"] < {die_after}:
    time.sleep(0.02)
os.kill(os.getpid(), signal.SIGKILL)  # a kernel that dies: no cleanup, no cancel
"""

ATTACH_SCRIPT = """
import json, logging, sys
from cloudbutton_executor import Executor

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

ex = Executor({backend!r}, workers={workers}{options})
job = ex.attach(sys.argv[1])
out = job.results(timeout={wait})
print(json.dumps({{"results": [o if not isinstance(o, BaseException) else repr(o) for o in out],
                  "retried": job.retried, "attached": job.attached,
                  "requests": job.stats["requests"]["host"]}}))
"""


def run_host(tmp_path, *, backend="local", workers=2, n=24, sleep=0.3, die_after=4,
             chunksize=1, options="", env=None, timeout=60):
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST_SCRIPT.format(
        backend=backend, workers=workers, n=n, sleep=sleep, die_after=die_after,
        chunksize=chunksize, options=options, timeout=timeout)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == -9, proc.stderr[-3000:]
    return proc.stdout.split()[0]


def run_attach(tmp_path, job_id, *, backend="local", workers=2, options="", wait=120, env=None):
    script = tmp_path / "attach.py"
    script.write_text(textwrap.dedent(ATTACH_SCRIPT.format(
        backend=backend, workers=workers, options=options, wait=wait)))
    proc = subprocess.run([sys.executable, str(script), job_id], capture_output=True, text=True,
                          timeout=wait + 60, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.stderr.write(proc.stderr[-5000:])  # shown when the test fails
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stored_record(storage, job_id):
    return json.loads(storage.get(protocol.dispatch_key("cloudbutton", job_id)))


@pytest.mark.parametrize("die_after", [2, 16])
def test_a_killed_local_host_is_finished_by_attach_from_a_new_process(tmp_path, die_after):
    """Dying early, before its record caught up with what it sent (fixed-size tasks: the
    record may lag, a task sent twice is only done twice), and dying late."""
    storage = LocalStorage()
    job_id = run_host(tmp_path, n=24, workers=2, die_after=die_after)
    done_before = len([k for k in storage.list(protocol.tasks_prefix("cloudbutton", job_id))
                       if k.endswith("status.json")])
    assert die_after <= done_before < 24
    record = stored_record(storage, job_id)
    # The local backend queues all it is given: the record says none or all were sent.
    assert record["next_item"] in (0, 24)
    inherited = [s for s in records.in_flight(record)
                 if not storage.exists(protocol.status_key("cloudbutton", job_id, s.tid))]
    out = run_attach(tmp_path, job_id)
    assert out["results"] == [x * x for x in range(24)]
    # The tasks the dead host had in flight were sent again, once each (its local
    # workers died with it); the rest were sent for the first time.
    assert out["retried"] == len(inherited)
    if die_after == 16:
        assert record["next_item"] == 24 and inherited
    after = stored_record(storage, job_id)
    assert after["epoch"] == 1 and after["owner"]["pid"] != record["owner"]["pid"]


def test_auto_batches_are_resumed_on_their_recorded_boundaries(tmp_path):
    storage = LocalStorage()
    job_id = run_host(tmp_path, n=400, workers=2, sleep=0.005, die_after=40, chunksize="auto")
    record = stored_record(storage, job_id)
    sent = records.in_flight(record)
    assert sent and all(protocol.task_range(s.tid)[0] < record["next_item"] for s in sent)
    out = run_attach(tmp_path, job_id)
    assert out["results"] == [x * x for x in range(400)]
    # The stored statuses (both hosts') cover every item exactly once: the taking-over
    # host planned only items still open, whatever boundaries the dead one had chosen.
    tids = [protocol.task_id_from_status_key(k)
            for k in storage.list(protocol.tasks_prefix("cloudbutton", job_id))]
    ranges = [protocol.task_range(t) for t in tids if t]
    assert sorted(i for a, b in ranges for i in range(a, b)) == list(range(400))


def test_the_lost_deadline_follows_what_was_sent_not_timeout_times_items(tmp_path):
    """A 100-item job with a 60 s timeout: the old rule gave up 100 minutes after its
    creation (8 h at the default 300 s); now a dead host's job is lost (nothing it sent can
    still finish, and nobody dispatches: attach finishes it) a timeout after its last record."""
    storage = LocalStorage()
    job_id = run_host(tmp_path, n=100, workers=2, sleep=0.05, die_after=2)
    manifest = json.loads(storage.get(protocol.manifest_key("cloudbutton", job_id)))
    record = stored_record(storage, job_id)
    old_rule = protocol.lost_deadline(manifest)
    new_rule = protocol.lost_deadline(manifest, record)
    assert old_rule - manifest["created"] == pytest.approx(60 * 100 + 60)  # timeout=60 here
    assert new_rule <= record["updated"] + 60 + 1 and new_rule < old_rule - 5000
    from cloudbutton_executor import accounting, catalog

    now = new_rule + 1
    summary = catalog.summary(storage, "cloudbutton", manifest, now)
    assert summary["state"] == "lost" and summary["counts"]["lost"] > 0
    assert accounting.stored_state(manifest, 2, 0, False, record["updated"] + 1, record) == "running"
    run_attach(tmp_path, job_id)


def test_attach_follows_a_live_host_and_takes_over_when_it_stops(storage, monkeypatch):
    """Same process, two executors: the second attaches while the first dispatches (it
    only follows), and takes over once the first stops sending and writing its record."""
    def slowly(x):

        time.sleep(0.1)
        return x + 1

    with Executor(workers=1, storage=storage, timeout=30) as owner, \
            Executor(workers=2, storage=storage, timeout=30) as other:
        job = owner.map(slowly, range(12))
        follower = other.attach(job.job_id)
        assert follower.dispatcher.following and follower.attached
        follower.dispatcher.tick()
        assert follower.dispatcher.following  # its host is alive: nothing is sent from here
        # The owner hangs: it sends nothing more and its record ages.
        monkeypatch.setattr(job.dispatcher, "_dispatch_more", lambda: None)
        monkeypatch.setattr(job.dispatcher, "_write_record", lambda: None)
        record = follower.dispatcher.read_record()
        later = record["updated"] + protocol.DISPATCH_STALE_S + 1
        assert not records.owner_alive(record, later)
        assert follower.dispatcher.check_owner(later, force=True)
        assert not follower.dispatcher.following
        assert follower.result(timeout=60) == [x + 1 for x in range(12)]


def test_the_record_gives_back_every_task_in_flight_with_its_budgets():
    """What a host records as sent is stored as runs (adjacent tasks of one size with equal
    counters, sent within a second of the run's first: one line for thousands), and an
    attaching host reads back each task, when it was sent (the earliest of its run:
    deadlines never move later) and the attempts, retries and redeliveries it used."""
    n = 40
    tid = lambda a, b: protocol.task_id(a, b, n)  # noqa: E731
    t = 1_700_000_000.0
    sent = [records.Sent(tid(0, 4), t + 0.5, 1, 0, 0), records.Sent(tid(4, 8), t, 1, 0, 0),
            records.Sent(tid(8, 12), t + 1.0, 1, 0, 0),    # a second after the run's earliest
            records.Sent(tid(12, 16), t + 1.5004, 1, 0, 0),  # over a second: another run
            records.Sent(tid(16, 18), t, 1, 0, 0),         # another size: another run
            records.Sent(tid(18, 22), t, 2, 1, 0),         # other counters: another run
            records.Sent(tid(22, 26), t, 2, 1, 3)]
    doc = records.document("job", 1, records.owner("s"), 26, reversed(sent), t + 2, n)
    assert json.loads(json.dumps(doc)) == doc  # stored as JSON, read by a host in another process
    assert {k: v for k, v in doc.items() if k != "open"} == {
        "v": protocol.PROTOCOL_VERSION, "job_id": "job", "epoch": 1, "owner": records.owner("s"),
        "updated": t + 2, "next_item": 26, "n_items": n}
    assert doc["open"] == [[0, 12, 4, t, 1, 0, 0], [12, 16, 4, t + 1.5, 1, 0, 0],  # to the millisecond
                           [16, 18, 2, t, 1, 0, 0], [18, 22, 4, t, 2, 1, 0], [22, 26, 4, t, 2, 1, 3]]
    back = records.in_flight(doc)
    assert [s.tid for s in back] == [s.tid for s in sent]
    assert [(s.attempt, s.retries_used, s.redelivered) for s in back] == \
        [(1, 0, 0)] * 5 + [(2, 1, 0), (2, 1, 3)]
    assert [s.sent_at for s in back] == [t, t, t, t + 1.5, t, t, t]
    assert all(type(v) is int for s in back for v in (s.attempt, s.retries_used, s.redelivered))


CHILD_WITH_DEFAULT_SIGNALS = """
import signal, time
for sig in signal.valid_signals():
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        pass
print("ready", flush=True)
time.sleep(60)
"""


def test_checking_that_an_owner_is_alive_sends_it_no_signal():
    """owner_alive probes the owner's pid with signal 0 (existence only): the host it asks
    about, here a live child process, keeps running."""
    t = 1_700_000_000.0
    # Every signal at its default action (under nohup a parent ignores SIGHUP, and its
    # children inherit that): signal 1, or any other that ends a process, would end it.
    child = subprocess.Popen([sys.executable, "-c", CHILD_WITH_DEFAULT_SIGNALS],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        record = {"updated": t, "owner": dict(records.owner("s"), pid=child.pid)}
        assert records.owner_alive(record, t + 1)
        time.sleep(0.2)  # a signal that ends a process takes effect at once, but not in 0 s
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_a_record_is_stale_only_past_the_heartbeat_allowance():
    """An attaching host takes over when the record's host has not written it for more than
    ``DISPATCH_STALE_S`` (or its process is gone); at exactly that age it still waits."""

    t = 1_700_000_000.0
    mine = {"updated": t, "owner": records.owner("s")}
    assert records.owner_alive(mine, t + protocol.DISPATCH_STALE_S)
    assert not records.owner_alive(mine, t + protocol.DISPATCH_STALE_S + 0.01)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = {"updated": t, "owner": dict(records.owner("s"), pid=int(gone.stdout))}
    assert not records.owner_alive(dead, t + 1)
    # A record this process writes says it is alive, and says so no longer once stale.
    written = records.document("job", 1, records.owner("s"), 0, [], t, 10)
    assert records.owner_alive(written, t + 1) and not records.owner_alive(written, t + 1 + protocol.DISPATCH_STALE_S)
    # On another machine the pid says nothing: only the heartbeat counts.
    elsewhere = {"updated": t, "owner": dict(records.owner("s"), host="another-host", pid=int(gone.stdout))}
    assert records.owner_alive(elsewhere, t + 1)
    # A process this user may not signal (pid 1) exists: its host is alive. Root may signal
    # anything, so a child process checks as "nobody" (after loading what it needs).
    check = f"""
import os, socket
from cloudbutton_executor import records
record = {{"updated": {t}, "owner": {{"host": socket.gethostname(), "pid": 1}}}}
records.owner_alive(record, {t + 1})
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
print(records.owner_alive(record, {t + 1}))
"""
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
