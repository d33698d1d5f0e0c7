"""Live stdout: what a running task prints reaches the host while it runs (future.stdout,
the progress views), sealed like everything a worker stores, and costs nothing when a task
prints nothing."""
import io
import time

from cloudbutton_executor import integrity, protocol
from cloudbutton_executor.backends.aws_lambda.backend import LIVE_STDOUT_S
from cloudbutton_magic.widget import JobWidget, TextProgress


def chatty(x):
    import time

    for k in range(8):
        print(f"line {k} at {time.time():.3f}", flush=True)
        time.sleep(0.5)
    return x


def chattier(x):
    import time

    for k in range(8):
        for j in range(4):
            print(f"line {k}.{j}")
        time.sleep(0.5)
    return x


def silent(x):
    import time

    time.sleep(1.0)
    return x


def _stdout_keys(storage, job):
    keys = storage.list(protocol.tasks_prefix(job.prefix, job.job_id))
    return [k for k in keys if protocol.live_stdout_from_key(k)]


def test_local_lines_reach_future_stdout_within_a_second(ex):
    job = ex.map(chatty, [0])
    fut = job[0]
    arrived: dict[str, float] = {}
    while not fut.done():
        for line in fut.stdout.splitlines():
            arrived.setdefault(line, time.time())
        time.sleep(0.02)
    ended = time.time()
    assert fut.result() == 0
    seen_live = arrived
    assert len(seen_live) >= 5, seen_live  # 8 lines over 4 s: most seen before the end
    lags = sorted(t - float(line.rsplit(" ", 1)[1]) for line, t in seen_live.items())
    assert lags[len(lags) // 2] < 1.0 and lags[-1] < 1.6, lags
    assert min(seen_live.values()) < ended - 2.5
    assert fut.stdout == "".join(f"{line}\n" for line in fut.stdout.splitlines())
    assert len(fut.stdout.splitlines()) == 8


def test_a_silent_task_stores_no_live_stdout(ex, storage):
    job = ex.map(silent, [0, 1])
    assert job.result(timeout=30) == [0, 1]
    assert _stdout_keys(storage, job) == []


def test_live_stdout_objects_are_sealed_and_coalesced(ex, storage):
    job = ex.map(chattier, [0])
    assert job.result(timeout=30) == [0]
    keys = _stdout_keys(storage, job)
    # Every 0.5 s at most (local): 32 lines over 4 s in at most 9 objects, each sealed.
    assert 2 <= len(keys) <= 9, keys
    key = integrity.job_key(job.job_id)
    last = integrity.open_sealed(key, protocol.object_name(job.prefix, keys[-1]),
                                 storage.get(keys[-1]))
    assert last["task"] == job[0].task_id and last["items"]["0"].startswith("line 0.0\nline 0.1\n")


def test_a_forged_live_stdout_object_is_not_shown(ex, storage):
    job = ex.map(chatty, [0])
    tid = None
    while tid is None:
        tid = job.item_task(0)
        time.sleep(0.01)
    forged = protocol.live_stdout_key(job.prefix, job.job_id, tid, 0, 0)
    storage.put(forged, integrity.seal(b"k" * 32, protocol.object_name(job.prefix, forged),
                                       {"job_id": job.job_id, "task": tid, "attempt": 0,
                                        "seq": 0, "items": {"0": "FORGED\n"}}))
    while not job.done():
        assert "FORGED" not in job[0].stdout
        time.sleep(0.05)
    assert "FORGED" not in job[0].stdout and job[0].stdout.startswith("line 0")


def test_the_views_show_lines_while_the_task_runs_and_once(ex):
    job = ex.map(chatty, [0, 1])
    widget = JobWidget(job)
    out = io.StringIO()
    text = TextProgress(job, file=io.StringIO(), out=out)
    text.display()
    shown_early = ""
    t0 = time.time()
    while not job.wait(0.05):
        widget.update(force=True)
        text.update(force=True)
        if time.time() - t0 < 2.5:
            shown_early = widget.stdout.value
    early_text = out.getvalue()
    widget.finish()
    text.finish()
    assert "[0] line 0 at" in shown_early and "[1] line 0 at" in shown_early
    assert "[0] line 0 at" in early_text
    for view_text in (widget.stdout.value, out.getvalue()):
        for i in (0, 1):
            for k in range(8):
                assert view_text.count(f"[{i}] line {k} at") == 1, (i, k, view_text)


def test_lambda_live_stdout_costs_at_most_one_request_per_task_second(lambda_ex):
    job = lambda_ex.map(chatty, range(4))
    assert job.result(timeout=60) == list(range(4))
    req = job.stats["requests"]
    # 4 tasks printing for 4 s each: the worker stores what they printed every LIVE_STDOUT_S
    # (a PUT), the host reads each (a GET, its LISTs are the ones it makes anyway).
    print_s = 4 * 4.0
    extra_puts = req["workers"]["PUT"] - 4  # beyond one status each
    assert extra_puts >= 4, req  # every task stored some while it ran
    assert extra_puts <= 4 * (4.0 / LIVE_STDOUT_S + 1), req
    # One PUT and one GET per object: at most one request per task per second of printing.
    assert (2 * extra_puts) / print_s <= 1.0, req
    assert all(f.stdout.count("\n") == 8 for f in job.futures)

    quiet = lambda_ex.map(silent, range(4))
    assert quiet.result(timeout=60) == list(range(4))
    assert quiet.stats["requests"]["workers"]["PUT"] == 4  # silent: no live stdout at all


def quick_or_chatty(x):
    import time

    if x == 0:
        return x  # ends at once: the job learns its submit-to-stored latency
    for k in range(14):
        print(f"still working {k}", flush=True)
        time.sleep(0.5)
    return x


def test_a_task_seen_printing_is_not_presumed_lost_on_lambda(lambda_ex, lambda_emulator):
    # The emulator's config presumes an event lost after 1.5 s of silence (plus twice the
    # job's p90 latency): a task that runs 7 s without a status would be sent again as
    # "lost" by then, unless what it prints proves it runs. Slow backups are off, so any
    # backup here is a lost-event backup.
    job = lambda_ex.map(quick_or_chatty, [0, 1], backups=False)
    assert job.result(timeout=60) == [0, 1]
    fut = job[1]
    assert fut.stdout.count("still working") == 14
    assert fut.backups == [] and fut.attempts == 1, (fut.backups, fut.attempts)
    assert job.backups_sent == 0
    assert lambda_emulator.faults.counts["accepted"] == 2, lambda_emulator.faults.counts
