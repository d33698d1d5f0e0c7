"""What the worker handler stores, field by field: the status of a task whose setup
failed, the error records of items whose results cannot be pickled, the traceback of a
user's exception, a reduce task's inputs read from another job's statuses, and results
too large to travel inline.

The handler runs in-process (``worker.handler(event)``) on events a real dispatcher
made for a FakeBackend (see test_dispatch), against a LocalStorage in tmp_path; the
stored status is read back and compared exactly. Nothing sleeps.
"""
from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from cloudbutton_executor import IntegrityError, RemoteError, protocol, worker
from cloudbutton_executor.errors import OutOfMemoryError
from test_dispatch import PREFIX, FakeBackend, FakeClock, start_job, stored_status

PYTHON = "%d.%d.%d" % sys.version_info[:3]


@pytest.fixture
def clock():
    return FakeClock()


def one_task(storage, clock, items, **options):
    """A job of one task over ``items``: (job, its event), the event not run yet."""
    be = FakeBackend()
    job = start_job(storage, be, clock, items, chunksize=len(items), **options)
    (event,) = be.sent
    return job, event


# Setup failures -----------------------------------------------------------------------
class _DiskTrouble(OSError):
    pass


def test_a_setup_failure_stores_one_error_status_with_the_cause_the_worker_and_its_stats(
        storage, clock, monkeypatch):
    monkeypatch.setattr(worker, "_peak_mem_mb", lambda: 123.456)
    job, event = one_task(storage, clock, [1, 2])
    event = dict(event, attempt=1)  # a retry: the status says which attempt wrote it
    # Long enough to be cut in all three places: the message, the exception, the traceback.
    text = "a" * 1400 + "B" * 700 + "c" * 28_000 + "TAIL"
    response = worker.handler(event, setup_error=_DiskTrouble(text))
    assert response["state"] == "error" and response["written"] is True
    status = stored_status(storage, job, event["task"])
    stats = status.pop("stats")
    status.pop("mac")
    tb = status["infra"].pop("traceback")
    assert status == {
        "v": protocol.PROTOCOL_VERSION, "job_id": job.job_id, "task": event["task"],
        "state": "error", "attempt": 1, "items": {},
        "infra": {
            "type": "WorkerSetupError", "kind": "setup",
            "message": (f"task {event['task']} could not start on the worker (Python {PYTHON}, "
                        f"cloudpickle {cloudpickle.__version__}): _DiskTrouble: {text[:1500]}"),
            "exception": {"type": "_DiskTrouble", "module": __name__, "message": text[:2000]},
            "worker": {"python": PYTHON, "cloudpickle": cloudpickle.__version__},
        },
    }
    # The traceback's last 20,000 characters: the end of the message, not its start.
    assert tb == "c" * (20_000 - len("TAIL\n")) + "TAIL\n"
    timed = {"worker_start", "setup_done", "compute_done", "result_stored", "runtime_start",
             "cold_start", "init_s"}
    assert {k: v for k, v in stats.items() if k not in timed} == {
        "host_submit": event["host_submit"], "request_id": None, "pid": os.getpid(),
        "peak_mem_mb": 123.5, "requests": {"PUT": 1}}
    # Setup and compute end together, at the failure, between the start and the PUT.
    assert stats["setup_done"] == stats["compute_done"]
    assert stats["worker_start"] <= stats["setup_done"] <= stats["result_stored"]


def test_a_missing_module_at_setup_is_named_with_how_to_install_it(storage, clock):
    job, event = one_task(storage, clock, [1])
    exc = ModuleNotFoundError("No module named 'cb_gone'", name="cb_gone")
    worker.handler(event, setup_error=exc)
    infra = stored_status(storage, job, event["task"])["infra"]
    assert infra["message"] == (
        f"task {event['task']} could not start on the worker (Python {PYTHON}, cloudpickle "
        f"{cloudpickle.__version__}): ModuleNotFoundError: No module named 'cb_gone'. The "
        "worker has no module 'cb_gone': deploy the job's packages (`cloudbutton deploy "
        "--sync`) or install it for the local workers")
    assert (infra["type"], infra["kind"], infra["missing_module"]) == ("WorkerSetupError", "setup",
                                                                       "cb_gone")


def test_an_integrity_failure_at_setup_is_stored_as_such_not_as_the_workers_setup(
        storage, clock):
    job, event = one_task(storage, clock, [1])
    worker.handler(event, setup_error=IntegrityError("the function blob does not match"))
    infra = stored_status(storage, job, event["task"])["infra"]
    assert (infra["type"], infra["kind"], infra["message"]) == (
        "IntegrityError", "integrity",
        f"task {event['task']} could not start: the function blob does not match")
    assert "missing_module" not in infra


def test_a_worker_that_cannot_import_cloudpickle_says_so_in_its_setup_failure(
        storage, clock, monkeypatch):
    job, event = one_task(storage, clock, [1])
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # its import raises ImportError
    worker.handler(event, setup_error=RuntimeError("no runtime"))
    infra = stored_status(storage, job, event["task"])["infra"]
    assert infra["worker"] == {"python": PYTHON, "cloudpickle": None}
    assert f"(Python {PYTHON}, cloudpickle None): RuntimeError: no runtime" in infra["message"]


# Results that cannot be pickled -------------------------------------------------------
class _NoPickle:
    def __reduce__(self):
        raise TypeError("no pickling this")


class _TooBigToPickle:
    def __reduce__(self):
        raise MemoryError()  # what pickling a result near the memory limit raises


def odd_results(x):
    return [_NoPickle(), x, _TooBigToPickle()][x]


def _too_big_message(limit):
    return ("the task's result of type _TooBigToPickle could not be pickled within " + limit
            + " (pickling needs about as much memory again as the result): return a smaller "
            "result, or run with more memory")


def test_results_that_cannot_be_pickled_become_their_items_errors_the_others_kept(storage, clock):
    job, event = one_task(storage, clock, [0, 1, 2], fn=odd_results)
    assert worker.handler(event)["state"] == "error"
    status = stored_status(storage, job, event["task"])
    no_pickle = "the task's result of type _NoPickle cannot be pickled: no pickling this"
    assert protocol.item_errors(status) == {
        0: {"type": "RemoteError", "module": "cloudbutton_executor.worker", "message": no_pickle,
            "traceback": ""},
        2: {"type": "OutOfMemoryError", "module": "cloudbutton_executor.errors",
            "message": _too_big_message("the memory limit of 1024 MB"), "traceback": "",
            "kind": "oom"},
    }
    (ok0, err0), (ok1, value1), (ok2, err2) = worker.read_results(storage, PREFIX, job.job_id,
                                                                  status)
    assert (ok0, ok1, value1, ok2) == (False, True, 1, False)
    assert type(err0) is RemoteError and (err0.type_name, err0.message) == ("PicklingError",
                                                                           no_pickle)
    assert type(err2) is OutOfMemoryError
    assert str(err2) == _too_big_message("the memory limit of 1024 MB")


def test_a_result_too_big_to_pickle_without_a_memory_limit_names_the_workers_memory(
        storage, clock):
    job, event = one_task(storage, clock, [2], fn=odd_results)
    del event["memory_mb"]  # a worker that was given no limit
    worker.handler(event)
    status = stored_status(storage, job, event["task"])
    assert protocol.item_errors(status)[0]["message"] == _too_big_message("the worker's memory")


# A user's exception -------------------------------------------------------------------
def fails(x):
    raise ValueError(f"bad {x}")


_FAILS_LINE = fails.__code__.co_firstlineno + 1


def test_an_items_traceback_shows_the_users_frames_only(storage, clock):
    job, event = one_task(storage, clock, [3], fn=fails)
    worker.handler(event)
    tb = protocol.item_errors(stored_status(storage, job, event["task"]))[0]["traceback"]
    lines = tb.splitlines()
    # No frame of the worker's own (the handler, the item loop): the user's function alone.
    assert [line for line in lines if line.lstrip().startswith("File ")] == [
        f'  File "{__file__}", line {_FAILS_LINE}, in fails']
    assert lines[0] == "Traceback (most recent call last):" and tb.endswith("\nValueError: bad 3\n")


# Results stored as objects ------------------------------------------------------------
def block(x):
    return bytes([x]) * (x * 50_000)  # 50 kB inline; 100 kB goes to its own object


def test_a_result_too_large_to_travel_inline_is_read_back_from_its_object(storage, clock):
    job, event = one_task(storage, clock, [2], fn=block)
    worker.handler(event)
    status = stored_status(storage, job, event["task"])
    assert set(status["result"]) == {"key", "bytes", "sha256"}
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [(True, b"\x02" * 100_000)]


# Reduce tasks -------------------------------------------------------------------------
def lengths(values):
    return [(v[0], len(v)) for v in values]


def map_then_reduce(storage, clock, items, fn=block, run=None):
    """A map job of one task per item, the tasks in ``run`` (all by default) run, and the
    event of a reduce job over its tasks: (map job, reduce job, reduce event)."""
    be = FakeBackend(concurrency=len(items))
    mapped = start_job(storage, be, clock, items, fn=fn)
    for k, e in enumerate(be.sent):
        if run is None or k in run:
            be.run(e)
    tasks = [e["task"] for e in be.sent]
    rbe = FakeBackend()
    reduced = start_job(storage, rbe, clock, [None], fn=lengths,
                        reduce={"job_id": mapped.job_id, "tasks": tasks})
    return mapped, reduced, rbe.sent[0]


def test_a_reduce_task_gets_the_results_of_the_map_tasks_in_order(storage, clock):
    # Task 1's result is a stored object, task 0's inline: both are read.
    mapped, reduced, event = map_then_reduce(storage, clock, [1, 2])
    assert worker.handler(event)["state"] == "done"
    status = stored_status(storage, reduced, event["task"])
    assert worker.read_results(storage, PREFIX, reduced.job_id, status) == [
        (True, [(1, 50_000), (2, 100_000)])]


def test_a_reduce_over_a_task_with_no_status_fails_at_setup_naming_it(storage, clock):
    mapped, reduced, event = map_then_reduce(storage, clock, [1, 2], run={0})
    missing = event["reduce"]["tasks"][1]
    worker.handler(event)
    exc = stored_status(storage, reduced, event["task"])["infra"]["exception"]
    assert exc == {"type": "FileNotFoundError", "module": "builtins",
                   "message": f"task {missing} of job {mapped.job_id} has no stored status"}


def test_a_reduce_over_a_failed_item_fails_at_setup_with_its_exception(storage, clock):
    mapped, reduced, event = map_then_reduce(storage, clock, [4, 5], fn=fails)
    worker.handler(event)
    exc = stored_status(storage, reduced, event["task"])["infra"]["exception"]
    assert exc == {"type": "ValueError", "module": "builtins", "message": "bad 4"}


# The cancel watch's signal ------------------------------------------------------------
def test_the_cancel_signal_stops_only_a_cancelled_running_invocation():
    watch = worker._CancelWatch()
    watch.cancelled, watch.current = True, None  # arrives just after the invocation ended
    assert watch._raise(0, None) is None
    watch.cancelled, watch.current = False, ("storage", "key")  # another invocation runs
    assert watch._raise(0, None) is None
    watch.cancelled = True
    with pytest.raises(worker._Cancelled):
        watch._raise(0, None)


# A task's stdout ----------------------------------------------------------------------
def stdout_writable(x):
    return sys.stdout.writable()


def test_a_tasks_stdout_says_it_is_writable(storage, clock):
    # Code that checks before it writes (a progress bar, a logging handler) must print.
    job, event = one_task(storage, clock, [1], fn=stdout_writable)
    worker.handler(event)
    status = stored_status(storage, job, event["task"])
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [(True, True)]
