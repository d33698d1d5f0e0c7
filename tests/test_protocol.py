"""The storage protocol's facts that host, workers, panel and CLI must read alike: the cancel
marker (who, when, why; older free-text markers too), the names of crash reports and live
stdout objects, the order of job listings, and what the host stores for a task that ended
without a worker's status."""
import json

import pytest

from cloudbutton_executor import protocol


def test_a_cancel_marker_says_who_cancelled_when_and_why():
    plain = protocol.read_cancel_marker(protocol.cancel_marker("jupyter-panel", 1700000000.5))
    assert plain == {"v": protocol.PROTOCOL_VERSION, "by": "jupyter-panel", "at": 1700000000.5}
    budget = protocol.read_cancel_marker(protocol.cancel_marker("budget", 12.0, "over $1.00"))
    assert (budget["by"], budget["at"], budget["reason"]) == ("budget", 12.0, "over $1.00")
    assert "reason" not in protocol.read_cancel_marker(protocol.cancel_marker("x", 1.0, ""))


@pytest.mark.parametrize("raw, by", [
    (b"cancelled from the notebook", "cancelled from the notebook"),  # an older version's text
    (b"x" * 500, "x" * 200),  # bounded: it is shown in listings
    (b"\xff\xfeoops", "\ufffd\ufffdoops"),  # not UTF-8: still readable
    (b'["a", "list"]', '["a", "list"]'),  # JSON, but not a marker
    (b"", ""),
])
def test_a_marker_that_is_not_a_json_object_is_read_as_text(raw, by):
    assert protocol.read_cancel_marker(raw) == {"by": by}


def test_crash_reports_and_live_stdout_are_named_by_task_and_attempt():
    tid = protocol.task_id(0, 5, 100)
    crash = protocol.crash_key("pre", "job", tid, 3)
    assert protocol.crash_from_key(crash) == (tid, 3)
    assert protocol.crash_from_key(crash.replace("crash-3", "crash-x")) is None
    assert protocol.crash_from_key(crash.replace("crash-3.json", "crash-3.json.tmp")) is None
    assert protocol.crash_from_key(crash.replace(tid, "not-a-task")) is None
    assert protocol.crash_from_key("crash-3.json") is None
    live = protocol.live_stdout_key("pre", "job", tid, 2, 17)
    assert live.startswith(protocol.tasks_prefix("pre", "job"))
    assert protocol.live_stdout_from_key(live) == (tid, 2, 17)
    # Flushes of one attempt list in the order they were written.
    assert sorted([protocol.live_stdout_key("p", "j", tid, 0, n) for n in (10, 9, 100)]) == \
        [protocol.live_stdout_key("p", "j", tid, 0, n) for n in (9, 10, 100)]


def test_job_listings_are_newest_first_and_only_job_ids():
    a, b, c = "20260101-120000123-abcdef", "20260101-120000124-000000", "20251231-235959999-ffffff"
    assert protocol.job_ids([a, "notes.txt", b, c, a + "x", "_host_key"]) == [b, a, c]


def test_a_task_that_ended_without_a_worker_status_fails_every_item_with_the_hosts_reason():
    st = protocol.host_failure_status("job1", "000002-000004", 1, "TaskTimeoutError", "timeout",
                                      "exceeded its timeout of 3 s", 123.5)
    assert json.loads(json.dumps(st)) == st  # stored as JSON
    assert (st["v"], st["job_id"], st["task"], st["state"], st["attempt"]) == \
        (protocol.PROTOCOL_VERSION, "job1", "000002-000004", "error", 1)
    assert st["infra"] == {"type": "TaskTimeoutError", "kind": "timeout",
                           "message": "exceeded its timeout of 3 s"}
    assert st["written_by"] == "host" and st["stats"] == {"host_submit": 123.5}
    error = {"type": "TaskTimeoutError", "kind": "timeout",
             "message": "exceeded its timeout of 3 s", "traceback": ""}
    assert protocol.item_errors(st) == {2: error, 3: error}  # every item of the task
    assert protocol.item_stdout(st) == {}


def test_digests_are_64_lowercase_hex_digits():
    good = "0123456789abcdef" * 4
    assert protocol.is_digest(good)
    for bad in (good.upper(), good[:-1], good + "0", "g" * 64, "", None):
        assert not protocol.is_digest(bad)
    assert protocol.function_digest(protocol.function_key("pre", good)) == good
    with pytest.raises(ValueError, match="not a content-addressed function key"):
        protocol.function_digest(f"pre/functions/{good[:-1]}.pickle")
    assert protocol.result_key("pre", "job", "000000-000001").startswith(
        protocol.tasks_prefix("pre", "job") + "000000-000001/")
