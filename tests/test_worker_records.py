"""What the worker handler stores and answers, field by field: a done status (its item
columns, results and stats), the status of a task whose setup failed, the error records
of items that raised, ran out of memory, hit the job's deadline or returned what cannot
be pickled, live stdout, inputs read and verified from storage, a reduce task's inputs
read from another job's statuses; and the cancel watch and job deadline behind them.

The handler runs in-process (``worker.handler(event)``) on events a real dispatcher
made for a FakeBackend (see test_dispatch), against a LocalStorage in tmp_path; the
stored status is read back and compared exactly. Nothing sleeps: timers, the watch's
clock and the job's deadline are fakes the test moves or fires.
"""
from __future__ import annotations

import base64
import os
import pickle
import signal
import sys
import threading
import time
import types

import cloudpickle
import pytest

from cloudbutton_executor import (IntegrityError, RemoteError, integrity, local_runtime, protocol,
                                  serialize, sharedbuffers, worker)
from cloudbutton_executor.errors import OutOfMemoryError, TaskTimeoutError
from cloudbutton_executor.storage import LocalStorage
from test_dispatch import PREFIX, FakeBackend, FakeClock, start_job, stored_status

PYTHON = ".".join(map(str, sys.version_info[:3]))


@pytest.fixture
def clock():
    return FakeClock()


def one_task(storage, clock, items, **options):
    """A job of one task over ``items``: (job, its event), the event not run yet."""
    be = FakeBackend()
    job = start_job(storage, be, clock, items, chunksize=len(items), **options)
    (event,) = be.sent
    return job, event


# A task that ran ----------------------------------------------------------------------
def chatty(x):
    from cloudbutton_executor import context, report_flops

    print(f"item {x}")
    if x == 1:
        context.count_read(1000, 0.1234567)  # as ObjectStorage counts what a task reads
    report_flops(10 * x if x != 2 else 0)  # item 2 reports none
    return x + 1


def test_a_done_status_holds_the_items_columns_the_results_and_the_invocations_stats(
        storage, clock, monkeypatch, capsys):
    monkeypatch.setattr(worker, "_peak_mem_mb", lambda: 123.456)
    monkeypatch.setattr(worker, "_functions", {})  # a container that has not loaded it yet
    job, event = one_task(storage, clock, [1, 2, 3], fn=chatty)
    event = dict(event, attempt=2, runtime={"cold": True, "init_s": 0.25})
    response = worker.handler(event, types.SimpleNamespace(aws_request_id="req-7"))
    # The prints stay visible in the worker's own stdout (its log) as well.
    assert capsys.readouterr().out == "item 1\nitem 2\nitem 3\n"
    skey = protocol.status_key(PREFIX, job.job_id, event["task"])
    # A host that hears back gets the very object stored, to verify as it would a read.
    assert response == {"task": event["task"], "state": "done", "written": True,
                        "sealed": storage.get(skey).decode("ascii")}
    # A second delivery stores nothing and has nothing to send back.
    assert worker.handler(event) == {"task": event["task"], "state": "done", "written": False}
    status = stored_status(storage, job, event["task"])
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [
        (True, 2), (True, 3), (True, 4)]
    stats, items = status.pop("stats"), status.pop("items")
    status.pop("mac"), status.pop("result")
    assert status == {"v": protocol.PROTOCOL_VERSION, "job_id": job.job_id, "task": event["task"],
                      "state": "done", "attempt": 2}
    spans = protocol.item_times(items)
    marks = [start for start, _ in spans] + [spans[-1][1]]
    assert {k: v for k, v in items.items() if k != "t_marks"} == {
        "errors": {}, "flops": {"0": 10, "2": 30},
        "stdout": {"0": "item 1\n", "1": "item 2\n", "2": "item 3\n"}}
    timed = ("worker_start", "setup_done", "compute_done", "result_stored")
    assert {k: v for k, v in stats.items() if k not in timed} == {
        "host_submit": event["host_submit"], "cold_start": True, "init_s": 0.25,
        "runtime_start": worker._PROCESS_START, "request_id": "req-7", "pid": os.getpid(),
        "read_bytes": 1000, "read_s": 0.123457, "peak_mem_mb": 123.5,
        # the cancel marker's HEAD, the function's GET and the status's own PUT
        "requests": {"HEAD": 1, "GET": 1, "PUT": 1}}
    # In order: the start, the setup, each item (one mark between two), compute, the PUT.
    times = [stats["worker_start"], stats["setup_done"], *marks, stats["compute_done"],
             stats["result_stored"]]
    assert times == sorted(times) and len(marks) == 4


def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux's /proc")
def test_the_peak_memory_is_the_processs_high_water_mark_in_mb():
    # getrusage's and /proc's counts of it differ by a few pages: in MB, within 2 %.
    assert worker._peak_mem_mb() == pytest.approx(peak_kb() / 1024, rel=0.02)


@pytest.mark.parametrize("runtime, cold, init_s", [
    ({"cold": False, "init_s": 0.25}, False, None),  # a warm container bills no INIT
    ({"cold": True, "init_s": None}, True, None),    # a supervisor that could not tell
])
def test_the_supervisors_cold_start_and_init_time_are_the_invocations(
        storage, clock, runtime, cold, init_s):
    job, event = one_task(storage, clock, [1])
    worker.handler(dict(event, runtime=runtime))
    stats = stored_status(storage, job, event["task"])["stats"]
    assert (stats["cold_start"], stats.get("init_s", "none")) == (cold, init_s or "none")


def test_without_a_supervisor_only_the_processs_first_invocation_is_cold(
        storage, clock, monkeypatch):
    monkeypatch.setattr(worker, "_invocations", 0)  # a fresh worker process
    monkeypatch.setattr(worker, "_functions", {})
    monkeypatch.setattr(worker, "_INIT_DURATION_S", 0.5)
    be = FakeBackend()
    job = start_job(storage, be, clock, [1, 2])
    for event in be.sent:
        worker.handler(event)
    first, second = (stored_status(storage, job, e["task"])["stats"] for e in be.sent)
    assert (first["cold_start"], first["init_s"]) == (True, 0.5)
    assert (second["cold_start"], "init_s" in second) == (False, False)
    # Each counts its own requests; the warm one has the function loaded already.
    assert (first["requests"], second["requests"]) == ({"HEAD": 1, "GET": 1, "PUT": 1},
                                                       {"HEAD": 1, "PUT": 1})


# Live stdout --------------------------------------------------------------------------
class LaterTimer:
    """``threading.Timer`` whose function runs when the test or task says, on no thread."""

    def __init__(self, pending, delay, function):
        self.pending, self.delay, self.function = pending, delay, function

    def start(self):
        self.pending.append(self)

    def cancel(self):
        if self in self.pending:
            self.pending.remove(self)


def later_timers(monkeypatch):
    """The worker's ``threading`` with LaterTimer for Timer: the timers made, in order."""
    timers = []
    fake = types.ModuleType("threading")
    fake.__dict__.update(vars(threading))
    fake.pending = []  # started, not run yet
    fake.Timer = lambda delay, fn: timers.append(LaterTimer(fake.pending, delay, fn)) or timers[-1]
    monkeypatch.setattr(worker, "threading", fake)
    return timers


def prints_then_flushes(x):
    # Through the worker's module: this function travels by value, its globals as copies.
    from cloudbutton_executor import worker

    print(f"line {x}")
    pending = worker.threading.pending  # the interval has passed: its flush runs now
    while pending:
        pending.pop(0).function()
    return x


def test_live_stdout_stores_each_items_new_text_once_per_flush_while_the_task_runs(
        storage, clock, monkeypatch):
    timers = later_timers(monkeypatch)
    job, event = one_task(storage, clock, [1, 2], fn=prints_then_flushes)
    event = dict(event, live_stdout=0.5, attempt=1)
    worker.handler(event)
    tid, key = event["task"], bytes.fromhex(event["auth"])
    names = sorted(k for k in storage.list(protocol.tasks_prefix(PREFIX, job.job_id))
                   if "/stdout-" in k)
    assert names == [protocol.live_stdout_key(PREFIX, job.job_id, tid, 1, seq) for seq in (1, 2)]
    docs = [integrity.open_sealed(key, protocol.object_name(PREFIX, n), storage.get(n), "stdout")
            for n in names]
    # Each flush holds only the items whose text changed since the one before.
    assert docs == [
        {"job_id": job.job_id, "task": tid, "attempt": 1, "seq": 1, "items": {"0": "line 1\n"}},
        {"job_id": job.job_id, "task": tid, "attempt": 1, "seq": 2, "items": {"1": "line 2\n"}}]
    # One timer per flush (not per write): the first at once, the next an interval later.
    assert [t.delay for t in timers] == [0.0, pytest.approx(0.5, abs=0.2)]
    assert all(t.daemon is True for t in timers)  # none keeps a worker process from exiting
    status = stored_status(storage, job, tid)
    assert protocol.item_stdout(status) == {0: "line 1\n", 1: "line 2\n"}


def fills_its_stdout(x):
    print("x" * (protocol.STDOUT_LIMIT - 1))  # with its newline: exactly the limit
    print("more")
    return x


def test_an_items_captured_stdout_stops_at_the_limit(storage, clock):
    job, event = one_task(storage, clock, [1, 2], fn=fills_its_stdout)
    worker.handler(event)
    text = "x" * (protocol.STDOUT_LIMIT - 1) + "\n"
    assert protocol.item_stdout(stored_status(storage, job, event["task"])) == {0: text, 1: text}


class WorkerLog:
    """The worker's own stdout: counts its flushes."""

    def __init__(self):
        self.text, self.flushes = "", 0

    def write(self, s):
        self.text += s

    def flush(self):
        self.flushes += 1


def test_a_tasks_flush_reaches_the_workers_own_stdout():
    # print(..., flush=True) in the task: the line is in the worker's log at once.
    log = WorkerLog()
    tee = worker._Tee(log, [], 0)
    print("now", file=tee, flush=True)
    assert (log.text, log.flushes, tee.captured()) == ("now\n", 1, {"0": "now\n"})


class Printed:
    """The capture a live stdout reads: item 0 printed ``text``."""

    def __init__(self, text):
        self.text = text

    def captured(self):
        return {"0": self.text}


def test_live_stdout_stores_nothing_once_closed_not_even_a_flush_already_due(
        storage, clock, monkeypatch):
    timers = later_timers(monkeypatch)
    job, event = one_task(storage, clock, [1])
    live = worker._LiveStdout(storage, event, bytes.fromhex(event["auth"]), 0.5)
    live.tee = Printed("late line\n")
    live.printed()
    live.close()  # the task ended: its status carries the text
    live.flush()  # a timer that fired as it closed
    live.printed()  # and a print after the end asks for no flush
    assert len(timers) == 1
    assert storage.list(protocol.tasks_prefix(PREFIX, job.job_id)) == []


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


def test_a_tampered_function_blob_fails_the_task_at_setup_naming_it(storage, clock, monkeypatch):
    monkeypatch.setattr(worker, "_functions", {})  # not loaded by an earlier test
    job, event = one_task(storage, clock, [1])
    fkey = event["function_key"]
    storage.put(fkey, storage.get(fkey) + b" ")
    worker.handler(event)
    infra = stored_status(storage, job, event["task"])["infra"]
    assert (infra["type"], infra["kind"]) == ("IntegrityError", "integrity")
    assert infra["message"] == (
        f"task {event['task']} could not start: the function blob {fkey} is a tampered or "
        f"foreign object: its content does not match its sha256 {protocol.function_digest(fkey)[:16]}…")


def test_a_task_of_a_cancelled_job_does_not_run_and_writes_nothing(storage, clock):
    job, event = one_task(storage, clock, [1])
    storage.put_if_absent(protocol.cancel_key(PREFIX, job.job_id),
                          protocol.cancel_marker(by="jupyter-panel", at=clock()))
    assert worker.handler(event) == {"task": event["task"], "state": "cancelled"}
    assert storage.list(protocol.tasks_prefix(PREFIX, job.job_id)) == []


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


def runs_out_of_memory(x):
    if x:
        raise MemoryError()
    return x


@pytest.mark.parametrize("memory_mb, message", [
    (1024, "task exceeded the memory limit of 1024 MB"),
    (None, "task ran out of memory"),  # a worker given no limit
])
def test_an_item_out_of_memory_is_recorded_as_such_naming_the_limit(storage, clock, memory_mb,
                                                                   message):
    job, event = one_task(storage, clock, [0, 1], fn=runs_out_of_memory)
    worker.handler(dict(event, memory_mb=memory_mb))
    status = stored_status(storage, job, event["task"])
    record = protocol.item_errors(status)[1]  # the second item's, not the first's
    assert (record["type"], record["kind"], record["message"]) == ("OutOfMemoryError", "oom",
                                                                   message)
    # Its cause, the MemoryError the user's code raised, is in the traceback.
    assert "in runs_out_of_memory" in record["traceback"]
    assert "The above exception was the direct cause" in record["traceback"]
    _, (ok, err) = worker.read_results(storage, PREFIX, job.job_id, status)
    assert ok is False and type(err) is OutOfMemoryError and str(err) == message
    assert err.task_id == event["task"]


class _Halt(BaseException):
    """Not an Exception, nor SystemExit or KeyboardInterrupt."""


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot travel")


def stops(x):
    if x == 1:
        sys.exit(3)
    if x == 2:
        raise _Halt("halted")
    raise _Unpicklable("stuck here")


def test_an_items_exit_halt_or_unpicklable_exception_fails_that_item_only(storage, clock):
    job, event = one_task(storage, clock, [1, 2, 3], fn=stops)
    worker.handler(event)
    status = stored_status(storage, job, event["task"])
    errors = protocol.item_errors(status)
    assert {i: (r["type"], r["message"]) for i, r in errors.items()} == {
        0: ("RuntimeError", "task raised SystemExit(3)"),  # an exit ends the item, not the worker
        1: ("_Halt", "halted"), 2: ("_Unpicklable", "stuck here")}
    (_, exit_), (_, halt), (_, stuck) = worker.read_results(storage, PREFIX, job.job_id, status)
    assert type(exit_) is RuntimeError and str(exit_) == "task raised SystemExit(3)"
    assert type(halt) is _Halt and str(halt) == "halted"
    # What cannot travel back travels as its type, message and traceback.
    assert type(stuck) is RemoteError and (stuck.type_name, stuck.message) == ("_Unpicklable",
                                                                              "stuck here")
    assert stuck.remote_traceback == errors[2]["traceback"] and "in stops" in errors[2]["traceback"]


def with_inline_inputs(event, *calls):
    """``event`` carrying these pickled calls as its items, inline."""
    return dict(event, data={"inline": base64.b64encode(b"".join(calls)).decode(),
                             **protocol.encode_item_sizes([len(c) for c in calls])})


def add(x, y=0):
    return x + y


def test_an_items_keyword_arguments_reach_the_function(storage, clock):
    job, event = one_task(storage, clock, [1])
    call = pickle.dumps(((1,), {"y": 10}))  # add(1, y=10), as the host pickles a call
    event["function_key"] = one_task(storage, clock, [1], fn=add)[1]["function_key"]
    worker.handler(with_inline_inputs(event, call))
    status = stored_status(storage, job, event["task"])
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [(True, 11)]


def hits_the_deadline(x):
    from cloudbutton_executor import worker

    if x == 3:  # what the job's timer raises in the main thread while this item runs
        raise worker._JobDeadline()
    return x


def test_at_the_jobs_deadline_the_running_item_and_the_rest_end_as_timeouts(storage, clock):
    be = FakeBackend()
    job = start_job(storage, be, clock, list(range(5)), fn=hits_the_deadline, chunksize=3)
    event = be.sent[1]  # items 3 and 4: the task does not start at item 0
    worker.handler(event)
    status = stored_status(storage, job, event["task"])
    assert status["state"] == "error"
    limit = f"{event['timeout']:g}"
    messages = {i: f"item {i} did not finish within the job's timeout of {limit} s" for i in (3, 4)}
    errors = protocol.item_errors(status)
    assert {i: (r["type"], r["kind"], r["message"]) for i, r in errors.items()} == {
        i: ("TaskTimeoutError", "timeout", m) for i, m in messages.items()}
    outcomes = worker.read_results(storage, PREFIX, job.job_id, status)
    assert [(type(e), str(e), e.task_id) for _, e in outcomes] == [
        (TaskTimeoutError, messages[i], event["task"]) for i in (3, 4)]
    # The running item ends at the deadline, and the next one starts and ends there.
    (start, end), (start2, end2) = protocol.item_times(protocol.item_columns(status))
    assert start <= end == start2 == end2


def test_at_the_jobs_deadline_the_items_done_keep_their_results_and_times(storage, clock):
    job, event = one_task(storage, clock, [1, 2, 3, 4], fn=hits_the_deadline)
    worker.handler(event)
    status = stored_status(storage, job, event["task"])
    outcomes = worker.read_results(storage, PREFIX, job.job_id, status)
    assert outcomes[:2] == [(True, 1), (True, 2)] and sorted(protocol.item_errors(status)) == [2, 3]
    # One span per item, each starting where the one before ended; the last, never started,
    # is an instant at the deadline.
    spans = protocol.item_times(protocol.item_columns(status))
    assert [a for a, _ in spans[1:]] == [b for _, b in spans[:-1]]
    assert len(spans) == 4 and spans[3][0] == spans[3][1]


def deadline_before_the_loop(*args):
    raise worker._JobDeadline()  # the job's timer, fired while the handler still set up


def test_a_deadline_before_the_first_item_ends_every_item_as_a_timeout(storage, clock,
                                                                       monkeypatch):
    job, event = one_task(storage, clock, [1, 2], fn=hits_the_deadline)
    monkeypatch.setattr(worker._WATCH, "watching", deadline_before_the_loop)
    assert worker.handler(event)["state"] == "error"
    status = stored_status(storage, job, event["task"])
    limit = f"{event['timeout']:g}"
    assert {i: r["message"] for i, r in protocol.item_errors(status).items()} == {
        i: f"item {i} did not finish within the job's timeout of {limit} s" for i in (0, 1)}
    outcomes = worker.read_results(storage, PREFIX, job.job_id, status)
    assert [(ok, type(e), e.task_id) for ok, e in outcomes] == [
        (False, TaskTimeoutError, event["task"])] * 2


def cancelled_while_running(x):
    from cloudbutton_executor import worker

    raise worker._Cancelled()  # what the cancel watch's signal raises in the running item


def test_a_task_cancelled_while_it_runs_writes_nothing(storage, clock):
    job, event = one_task(storage, clock, [1], fn=cancelled_while_running)
    assert worker.handler(event) == {"task": event["task"], "state": "cancelled"}
    assert storage.list(protocol.tasks_prefix(PREFIX, job.job_id)) == []


def what_the_task_sees(x):
    from cloudbutton_executor import context, worker

    watched_storage, cancel_key = worker._WATCH.current
    return context.current_task()["job_id"], watched_storage.describe(), cancel_key


def test_a_running_task_knows_its_job_and_the_watch_its_cancel_marker(storage, clock,
                                                                     monkeypatch):
    from cloudbutton_executor import context

    armed = []
    monkeypatch.setattr(worker, "_timer_until", lambda at: armed.append(at) or worker._NO_DEADLINE)
    job, event = one_task(storage, clock, [1], fn=what_the_task_sees)
    # Lambda's context: 60 s left, the job's timeout of 10 s comes first.
    worker.handler(dict(event, timeout=10.0), Remaining(60_000))
    status = stored_status(storage, job, event["task"])
    # ObjectStorage() in the task reads this job's storage; the watch looks for its marker.
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [
        (True, (job.job_id, storage.describe(), protocol.cancel_key(PREFIX, job.job_id)))]
    assert armed == [pytest.approx(status["stats"]["worker_start"] + 10.0)]
    assert context.current_task() is None  # the host's own process keeps no task
    assert worker._WATCH.current is None  # and the watch follows no invocation


def test_an_event_without_a_valid_job_key_is_refused_and_writes_nothing(storage, clock):
    job, event = one_task(storage, clock, [1])
    for auth in (None, "not hex"):
        assert worker.handler(dict(event, auth=auth)) == {
            "task": event["task"], "state": "refused",
            "error": "the event carries no valid job key"}
    assert storage.list(protocol.tasks_prefix(PREFIX, job.job_id)) == []


# Inputs read from storage ------------------------------------------------------------
def head_and_size(x):
    return x[0], len(x)


def stored_inputs(storage, clock):
    """A job of 7 items of 40 kB, one per task, too large for its events: each task reads
    its item from the job's data object, whose blocks (6 items, then 1) the event names."""
    be = FakeBackend(payload_limit_bytes=2000)
    job = start_job(storage, be, clock, [c * 40_000 for c in "abcdefg"], fn=head_and_size)
    assert all("key" in e["data"] for e in be.sent)
    return job, be.sent


def test_a_task_reads_its_own_items_from_the_verified_blocks_of_the_data_object(storage, clock):
    job, events = stored_inputs(storage, clock)
    assert [len(e["data"]["blocks"]) for e in events] == [1] * 7
    for event, c in zip(events, "abcdefg"):  # the first and last of a block, and one alone
        worker.handler(event)
        status = stored_status(storage, job, event["task"])
        assert worker.read_results(storage, PREFIX, job.job_id, status) == [(True, (c, 40_000))]


def ranges_read(storage, monkeypatch):
    """The (key, start, stop) of every GET the worker makes of ``storage`` from now on."""
    reads = []

    class Recording(LocalStorage):
        def get(self, key, start=None, stop=None):
            reads.append((key, start, stop))
            return super().get(key, start, stop)

    monkeypatch.setitem(worker._storages, tuple(sorted(storage.describe().items())),
                        Recording(storage.describe()["root"]))
    return reads


def test_a_task_across_two_blocks_checks_each_and_reads_its_items(storage, clock, monkeypatch):
    # Batches sized as they run ("auto") need not end where blocks do: items 11 and 12,
    # the last of the second block and the first of the third, both past the first.
    be = FakeBackend(payload_limit_bytes=2000)
    items = [chr(ord("a") + k) * 40_000 for k in range(18)]
    job = start_job(storage, be, clock, items, fn=head_and_size)
    tid = protocol.task_id(11, 13, len(items))
    event = job.dispatcher.event(tid, 11, 13)
    blocks = event["data"]["blocks"]
    assert len(blocks) == 2 and blocks[0][0] > 0
    reads = ranges_read(storage, monkeypatch)
    worker.handler(event)
    status = stored_status(storage, job, tid)
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [
        (True, ("l", 40_000)), (True, ("m", 40_000))]
    # One ranged GET of the two blocks, not of the whole object (S3 bills what it sends).
    assert [r for r in reads if r[0] == event["data"]["key"]] == [
        (event["data"]["key"], blocks[0][0], blocks[1][1])]


@pytest.mark.skipif(not sharedbuffers.available(), reason="needs memfd_create")
def test_an_input_held_out_of_band_by_the_host_is_mapped_and_read(storage, clock):
    # A local job's large bytes stay in the host's memory file; the item's pickle names it.
    buffers = sharedbuffers.HostBuffers()
    try:
        with sharedbuffers.collecting(buffers):
            call = serialize._dump(((b"z" * sharedbuffers.THRESHOLD,), {}))
        assert buffers.count == 1 and len(call) < 1000
        job, event = one_task(storage, clock, [b""], fn=head_and_size)
        worker.handler(with_inline_inputs(event, call))
    finally:
        buffers.close()
    status = stored_status(storage, job, event["task"])
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [
        (True, (ord("z"), sharedbuffers.THRESHOLD))]


@pytest.mark.parametrize("blocks", [
    lambda b: [],                         # no block at all
    lambda b: [[b[0] + 40_025, *b[1:]]],  # the block starts after the task's first byte
    lambda b: [[b[0], 80_047, b[2]]],     # the block ends before the task's last byte
])
def test_an_event_whose_blocks_do_not_cover_its_items_is_refused_at_setup(storage, clock, blocks):
    job, events = stored_inputs(storage, clock)
    event = events[1]  # its item starts inside the first block
    event["data"]["blocks"] = blocks(event["data"]["blocks"][0])
    worker.handler(event)
    infra = stored_status(storage, job, event["task"])["infra"]
    tid = event["task"]
    assert (infra["type"], infra["message"]) == (
        "IntegrityError", f"task {tid} could not start: the event of task {tid} reads inputs "
                          "it cannot verify")


def test_a_tampered_data_block_fails_the_task_at_setup_naming_its_bytes(storage, clock):
    job, events = stored_inputs(storage, clock)
    event = events[6]
    key, (a, b, digest) = event["data"]["key"], event["data"]["blocks"][0]
    data = bytearray(storage.get(key))
    data[a + 100] ^= 1
    storage.put(key, bytes(data))
    worker.handler(event)
    infra = stored_status(storage, job, event["task"])["infra"]
    assert infra["message"] == (
        f"task {event['task']} could not start: bytes {a}-{b} of {key} is a tampered or "
        f"foreign object: its content does not match its sha256 {digest[:16]}…")


# Results stored as objects ------------------------------------------------------------
def block(x):
    return bytes([x]) * (x * 50_000)  # 50 kB inline; 100 kB goes to its own object


def test_a_result_too_large_to_travel_inline_is_read_back_from_its_object(storage, clock):
    job, event = one_task(storage, clock, [2], fn=block)
    worker.handler(event)
    status = stored_status(storage, job, event["task"])
    rkey = protocol.result_key(PREFIX, job.job_id, event["task"])
    blob = storage.get(rkey)  # named in the sealed status by its size and digest
    assert status["result"] == {"key": rkey, "bytes": len(blob), "sha256": integrity.sha256(blob)}
    assert status["stats"]["requests"]["PUT"] == 2  # the result's and the status's own
    assert worker.read_results(storage, PREFIX, job.job_id, status) == [(True, b"\x02" * 100_000)]


def zeros(n):
    return bytes(n)


def test_results_travel_inline_up_to_the_limit_exactly(storage, clock):
    def pickled_size(n):  # what the worker pickles: the task's outcomes
        return len(pickle.dumps([(True, bytes(n))], protocol=pickle.HIGHEST_PROTOCOL))

    n = next(n for n in range(protocol.INLINE_RESULT_BYTES - 100, protocol.INLINE_RESULT_BYTES)
             if pickled_size(n) == protocol.INLINE_RESULT_BYTES)
    be = FakeBackend()
    job = start_job(storage, be, clock, [n, n + 1], fn=zeros)
    for e in be.sent:
        worker.handler(e)
    at_limit, past_it = (stored_status(storage, job, e["task"])["result"] for e in be.sent)
    assert set(at_limit) == {"inline"} and set(past_it) == {"key", "bytes", "sha256"}
    assert past_it["bytes"] == protocol.INLINE_RESULT_BYTES + 1


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


# A cancelled task that does not stop ---------------------------------------------------
class WatchClock:
    """``time`` for the watch under test: its own thread's clock moves only when it sleeps
    (``then(t, f)`` calls ``f`` once the clock reaches ``t``); any other thread (a watch
    thread left by an earlier test) gets the real clock."""

    def __init__(self):
        self.t, self.thread, self.sleeps, self.events = 1000.0, threading.get_ident(), [], []

    def time(self):
        return self.t if threading.get_ident() == self.thread else time.time()

    def sleep(self, s):
        if threading.get_ident() != self.thread:
            return time.sleep(s)
        self.sleeps.append(s)
        self.t += s
        for when, f in list(self.events):
            if self.t >= when:
                self.events.remove((when, f))
                f()

    def then(self, at, f):
        self.events.append((self.t + at, f))


@pytest.fixture
def stopping(monkeypatch):
    """A watch of a running invocation whose job was just found cancelled, its clock, and
    the exit codes it ended its process with (none: it did not)."""
    fake, exits = WatchClock(), []
    monkeypatch.setattr(worker, "time", fake)
    monkeypatch.setattr(worker, "os", types.SimpleNamespace(_exit=exits.append))
    watch = worker._CancelWatch()
    watch.generation, watch.current, watch.cancelled = 7, ("storage", "key"), True
    return watch, fake, exits


def test_a_task_still_running_after_the_grace_ends_its_process_saying_why(stopping, capsys):
    watch, fake, exits = stopping
    watch._stop(7)
    assert exits == [local_runtime.CANCELLED_EXIT_CODE]
    assert capsys.readouterr().err == ("cloudbutton: the job was cancelled and the task did not "
                                       "stop: ending the worker process\n")
    assert fake.t == pytest.approx(1000.0 + worker.CANCEL_GRACE_S, abs=0.06)


def test_a_task_that_stops_late_in_the_grace_keeps_its_process(stopping, capsys):
    watch, fake, exits = stopping
    # 0.1 s before the grace ends: the watch looks often enough to see it.
    fake.then(worker.CANCEL_GRACE_S - 0.1, lambda: setattr(watch, "current", None))
    watch._stop(7)
    assert exits == [] and capsys.readouterr().err == ""


def test_stopping_a_cancelled_invocation_signals_the_thread_that_runs_it(stopping):
    watch, fake, exits = stopping
    got = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        watch._main_ident = threading.get_ident()  # the invocation runs in this thread
        fake.then(0.1, lambda: setattr(watch, "current", None))  # and stops when told
        watch._stop(7)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == [signal.SIGUSR1] and exits == []


def test_a_task_replaced_by_the_next_invocation_keeps_its_process(stopping):
    watch, fake, exits = stopping
    # The cancelled invocation ended and the next one already runs (its own generation).
    fake.then(0.5, lambda: setattr(watch, "generation", 8))
    watch._stop(7)
    assert exits == []


# The job's own deadline ---------------------------------------------------------------
class Remaining:
    """A runtime context (Lambda's) that has ``ms`` milliseconds left."""

    def __init__(self, ms):
        self.ms = ms

    def get_remaining_time_in_millis(self):
        return self.ms


@pytest.mark.parametrize("event, context, stop_at", [
    ({"timeout": 10}, None, None),                        # local workers: the runtime's own
    ({"timeout": 10}, Remaining(60_000), 1010.0),         # shorter than the runtime's: armed
    ({"timeout": 58.95}, Remaining(60_000), 1058.95),     # more than a second under it
    ({"timeout": 59}, Remaining(60_000), None),           # not: the runtime stops it in time
    ({"timeout": 10, "stop_at": 1005.0}, None, 1005.0),   # the supervisor's stop comes first
    ({"timeout": 10, "stop_at": 1020.0}, None, 1010.0),   # the job's timeout comes first
    ({"stop_at": 1020.0}, Remaining(60_000), 1020.0),     # no timeout of its own
])
def test_the_job_deadline_is_armed_only_when_it_comes_before_the_runtimes(
        monkeypatch, event, context, stop_at):
    monkeypatch.setattr(worker, "_timer_until", lambda at: ("timer", at))
    got = worker._job_deadline(event, context, 1000.0)
    assert got == (("timer", pytest.approx(stop_at)) if stop_at else worker._NO_DEADLINE)


def test_the_job_deadline_is_not_armed_outside_the_main_thread(monkeypatch):
    # SIGALRM reaches only the main thread: a handler run elsewhere keeps the runtime's.
    monkeypatch.setattr(worker, "_timer_until", lambda at: ("timer", at))
    got = []
    thread = threading.Thread(target=lambda: got.append(worker._job_deadline(
        {"timeout": 10, "stop_at": 1005.0}, Remaining(60_000), 1000.0)))
    thread.start()
    thread.join()
    assert got == [worker._NO_DEADLINE]


class _Enough(BaseException):
    """Ends the watch loop under test after the sleeps it was given."""


def enough():
    raise _Enough()


class MarkerStorage:
    """Answers the watch's HEADs of the cancel marker, recording when each was asked."""

    def __init__(self, clock, answers):
        self.clock, self.answers, self.asked = clock, list(answers), []

    def exists(self, key):
        self.asked.append((key, self.clock.t - 1000.0))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer() if callable(answer) else answer


def watch_for(fake, storage, sleeps, monkeypatch):
    """Run the watch loop of invocation 3 (started at the clock's start) for ``sleeps``
    sleeps: (the watch, the generations it stopped)."""
    watch, stopped = worker._CancelWatch(), []
    watch.generation, watch.current, watch.checked = 3, (storage, "the-marker"), fake.t
    monkeypatch.setattr(watch, "_stop", stopped.append)
    fake.then(worker.CANCEL_WATCH_S / 4 * sleeps - 1e-6, enough)  # in its last sleep
    with pytest.raises(_Enough):
        watch._run()
    return watch, stopped


def test_the_watch_looks_for_the_marker_every_few_seconds_and_stops_the_invocation(monkeypatch):
    fake = WatchClock()
    monkeypatch.setattr(worker, "time", fake)
    storage = MarkerStorage(fake, [False, True])
    watch, stopped = watch_for(fake, storage, 9, monkeypatch)
    # None for the first CANCEL_WATCH_S (the handler looked at its start), then one each.
    assert storage.asked == [("the-marker", pytest.approx(worker.CANCEL_WATCH_S * k))
                             for k in (1, 2)]
    assert watch.cancelled is True and stopped == [3]


def test_the_watch_tries_again_after_storage_trouble(monkeypatch):
    fake = WatchClock()
    monkeypatch.setattr(worker, "time", fake)
    storage = MarkerStorage(fake, [OSError("throttled"), True])
    watch, stopped = watch_for(fake, storage, 9, monkeypatch)
    assert [t for _, t in storage.asked] == [pytest.approx(worker.CANCEL_WATCH_S * k)
                                             for k in (1, 2)]
    assert stopped == [3]


def test_the_watch_does_not_stop_an_invocation_that_ended_while_it_looked(monkeypatch):
    fake = WatchClock()
    monkeypatch.setattr(worker, "time", fake)
    holder = {}
    storage = MarkerStorage(fake, [lambda: setattr(holder["watch"], "generation", 4) or True])
    watch, stopped = worker._CancelWatch(), []
    holder["watch"] = watch
    watch.generation, watch.current, watch.checked = 3, (storage, "the-marker"), fake.t
    monkeypatch.setattr(watch, "_stop", stopped.append)
    fake.then(worker.CANCEL_WATCH_S * 1.5, enough)
    with pytest.raises(_Enough):
        watch._run()
    assert len(storage.asked) == 1 and stopped == [] and watch.cancelled is False


def test_an_idle_watch_looks_for_nothing(monkeypatch):
    fake = WatchClock()
    monkeypatch.setattr(worker, "time", fake)
    watch = worker._CancelWatch()  # no invocation runs
    fake.then(worker.CANCEL_WATCH_S * 3, enough)
    with pytest.raises(_Enough):
        watch._run()
    assert watch.cancelled is False


class WatchThread:
    """``threading.Thread`` for the watch under test: made and started, never run."""

    def __init__(self, target, daemon, name):
        self.target, self.daemon, self.name, self.alive = target, daemon, name, False

    def start(self):
        self.alive = True

    def is_alive(self):
        return self.alive


def test_watching_an_invocation_starts_one_watch_thread_and_installs_its_signal(
        monkeypatch, storage):
    import signal

    threads = []
    fake = types.ModuleType("threading")
    fake.__dict__.update(vars(threading))
    fake.Thread = lambda **kw: threads.append(WatchThread(**kw)) or threads[-1]
    monkeypatch.setattr(worker, "threading", fake)
    previous = signal.getsignal(signal.SIGUSR1)
    watch = worker._CancelWatch()
    try:
        watch.cancelled = True  # left by the invocation before
        before = time.time()
        assert watch.watching(storage, "the-marker") is watch
        assert before <= watch.checked <= time.time()  # the handler looked at its start
        assert (watch.generation, watch.cancelled, watch.current) == (1, False,
                                                                      (storage, "the-marker"))
        # The watch thread and, from the main thread, the signal that stops a long item.
        assert [(t.target, t.daemon, t.name, t.alive) for t in threads] == [
            (watch._run, True, "cloudbutton-cancel-watch", True)]
        assert signal.getsignal(signal.SIGUSR1) == watch._raise
        assert watch._main_ident == threading.get_ident()
        with watch:
            pass
        assert watch.current is None
        watch.watching(storage, "the-marker")  # the next invocation: the same thread
        assert len(threads) == 1 and watch.generation == 2
        threads[0].alive = False  # a thread that died is replaced
        watch.watching(storage, "the-marker")
        assert len(threads) == 2 and threads[1].alive
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_watching_from_another_thread_installs_no_signal(monkeypatch, storage):
    import signal

    fake = types.ModuleType("threading")
    fake.__dict__.update(vars(threading))
    fake.Thread = WatchThread
    monkeypatch.setattr(worker, "threading", fake)
    previous = signal.getsignal(signal.SIGUSR1)
    watch = worker._CancelWatch()
    got = []  # only the main thread may install a signal handler: this one must not try
    runner = threading.Thread(target=lambda: got.append(watch.watching(storage, "the-marker")))
    runner.start()
    runner.join()
    assert got == [watch] and watch.current == (storage, "the-marker")
    assert watch._main_ident is None and signal.getsignal(signal.SIGUSR1) == previous


# What an item's exception becomes ------------------------------------------------------
class _TwoArgs(Exception):  # plain unpickling would call __init__ with one argument
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code


def test_an_exception_whose_init_differs_from_its_args_travels_by_its_state():
    """Not as a RemoteError: the host gets the exception itself, its args and attributes."""
    exc = _TwoArgs(7, "seven")
    back = cloudpickle.loads(cloudpickle.dumps(
        worker._picklable_exception(exc, worker._error_record(exc))))
    assert type(back) is _TwoArgs and back.args == ("7: seven",) and back.code == 7


def test_an_error_record_keeps_the_messages_first_2000_characters_and_the_tracebacks_last_20000():
    try:
        raise ValueError("x" * 30_000 + "TAIL")
    except ValueError as exc:
        record = worker._error_record(exc)
    assert record["message"] == "x" * 2000
    assert len(record["traceback"]) == 20_000 and record["traceback"].endswith("xTAIL\n")


def test_a_stored_result_without_its_sha256_or_not_matching_it_is_refused_naming_it(storage):
    rkey = protocol.result_key(PREFIX, "job-1", "000000-000001")
    storage.put(rkey, b"outcomes")
    status = {"task": "000000-000001", "result": {"key": rkey}}
    with pytest.raises(IntegrityError) as unnamed:
        worker.read_result_blob(storage, PREFIX, "job-1", status)
    assert str(unnamed.value) == f"the status of {rkey} names no sha256 for it"
    status["result"]["sha256"] = integrity.sha256(b"other outcomes")
    with pytest.raises(IntegrityError) as foreign:
        worker.read_result_blob(storage, PREFIX, "job-1", status)
    assert str(foreign.value).startswith(f"the result {rkey} is a tampered or foreign object")
    status["result"]["sha256"] = integrity.sha256(b"outcomes")
    assert worker.read_result_blob(storage, PREFIX, "job-1", status) == b"outcomes"
