"""Cancel that stops, on the local backend: a running invocation notices its job's cancel
marker by itself within seconds (between items, and from its watch thread inside a long
item), ends without writing anything, and its runtime process is free for the next event.
The same runtime runs inside Lambda's supervisor: see ``test_lambda_trust.py``."""
from __future__ import annotations

import os
import sys
import time

import pytest

from cloudbutton_executor import Executor, local_runtime, protocol, worker
from cloudbutton_executor.local_runtime import RuntimeProcess
from test_dispatch import FakeBackend, FakeClock, start_job


def nap(s):
    import time

    time.sleep(s)
    return s


def stubborn(s):
    """A task that cannot be interrupted (SIGUSR1 blocked, as in a long native call)."""
    import signal
    import time

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    time.sleep(s)
    return s


@pytest.fixture
def runtime(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = RuntimeProcess([sys.executable, "-c", "from cloudbutton_executor.local_runtime "
                           "import main; main()"], env=env, cwd=str(tmp_path), stderr=None)
    yield proc
    proc.kill()


def event_for(storage, fn, items, chunksize=1):
    be = FakeBackend()
    job = start_job(storage, be, FakeClock(), items, fn=fn, chunksize=chunksize, timeout=60.0)
    return job, be.sent[0]


def run_then_cancel(storage, runtime, fn, items, chunksize=1):
    """Send the runtime a task, let it run for a second, then write its job's cancel
    marker (as the Jupyter panel does); returns (job, event, when the marker was written)."""
    job, event = event_for(storage, fn, items, chunksize)
    runtime.send(event)
    time.sleep(1.0)
    t0 = time.time()
    storage.put_if_absent(protocol.cancel_key("cb", job.job_id),
                          protocol.cancel_marker(by="jupyter-panel", at=t0))
    return job, event, t0


def test_a_long_item_stops_within_seconds_of_the_marker_and_writes_nothing(storage, runtime):
    job, event, t0 = run_then_cancel(storage, runtime, nap, [60])
    response = runtime.recv(time.time() + 20)
    took = time.time() - t0
    assert response == {"task": event["task"], "state": "cancelled"}
    assert took < worker.CANCEL_WATCH_S + 1.5, took
    assert not storage.list(protocol.tasks_prefix("cb", job.job_id))
    # The runtime is free (the same warm process) for the next event.
    pid = runtime.pid
    job2, event2 = event_for(storage, nap, [0.01])
    runtime.send(event2)
    assert runtime.recv(time.time() + 20)["state"] == "done" and runtime.pid == pid


def test_a_batch_stops_between_items(storage, runtime):
    """Items that cannot be interrupted, but short: the batch stops at the next item."""
    job, _event, t0 = run_then_cancel(storage, runtime, stubborn, [0.3] * 40, chunksize=40)
    assert runtime.recv(time.time() + 20)["state"] == "cancelled"
    assert time.time() - t0 < worker.CANCEL_WATCH_S + 1.5
    assert not storage.list(protocol.tasks_prefix("cb", job.job_id))


def test_a_task_that_cannot_be_interrupted_ends_its_process(storage, runtime):
    job, _event, t0 = run_then_cancel(storage, runtime, stubborn, [60])
    assert runtime.recv(time.time() + 20) is None  # the process ended
    code = runtime.kill()
    assert code == local_runtime.CANCELLED_EXIT_CODE
    assert time.time() - t0 < worker.CANCEL_WATCH_S + worker.CANCEL_GRACE_S + 1.5
    assert not storage.list(protocol.tasks_prefix("cb", job.job_id))
    assert "cancelled" in local_runtime.describe_exit(code)


def test_a_marker_written_elsewhere_stops_the_local_job(storage):
    """Through the executor: the panel writes the marker; nothing more is written."""
    with Executor(workers=2, storage=storage, timeout=60) as ex:
        job = ex.map(nap, [30] * 6)
        time.sleep(1.0)
        t0 = time.time()
        storage.put_if_absent(protocol.cancel_key("cloudbutton", job.job_id),
                              protocol.cancel_marker(by="jupyter-panel", at=t0))
        assert job.wait(10) and job.cancelled
        assert time.time() - t0 < 5
        time.sleep(1.0)
    assert not [k for k in storage.list(protocol.tasks_prefix("cloudbutton", job.job_id))
                if k.endswith("status.json")]


def test_a_cancel_after_the_task_ended_leaves_the_idle_runtime_alone(storage, runtime):
    """The watch follows only the running invocation: a job cancelled after its task ended
    on this runtime neither stops nor ends the (idle, warm) process, which serves the next."""
    job, event = event_for(storage, nap, [0.01])
    runtime.send(event)
    assert runtime.recv(time.time() + 20)["state"] == "done"
    storage.put_if_absent(protocol.cancel_key("cb", job.job_id),
                          protocol.cancel_marker(by="jupyter-panel", at=time.time()))
    pid = runtime.pid
    # Past a look of the watch and the grace it would give a task that ignores the cancel.
    time.sleep(worker.CANCEL_WATCH_S + worker.CANCEL_GRACE_S + 1.0)
    assert runtime.popen.poll() is None, "an idle runtime was ended by a later cancel"
    job2, event2 = event_for(storage, nap, [0.01])
    runtime.send(event2)
    assert runtime.recv(time.time() + 20)["state"] == "done" and runtime.pid == pid


def test_a_deadline_that_passes_before_the_first_item_still_ends_in_a_timeout_status(
        storage, monkeypatch):
    """Under Lambda's supervisor the handler stops at ``stop_at``. A setup that used the time
    (a slow cold start) arms a timer that fires before the items' loop can catch it: the
    items still end as timeouts in the stored status, not as a failed handler."""
    job, event = event_for(storage, nap, [5, 5], chunksize=2)
    real = worker._WATCH.watching

    def slow_to_start(*args):  # the timer fires in this window, between arming and the loop
        time.sleep(0.05)
        return real(*args)

    monkeypatch.setattr(worker._WATCH, "watching", slow_to_start)
    started = time.time()
    response = worker.handler(dict(event, stop_at=started + 0.01), local_runtime.Context(60, None))
    assert response["state"] == "error" and response["written"] is True
    assert time.time() - started < 2  # the naps never ran
    status = worker.read_status(storage, "cb", job.job_id, event["task"], bytes.fromhex(event["auth"]))
    assert {e["kind"] for e in status["items"]["errors"].values()} == {"timeout"}
    assert len(status["items"]["errors"]) == 2
