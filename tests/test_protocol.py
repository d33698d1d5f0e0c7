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


def test_every_key_of_a_job_lives_below_its_own_folder():
    tid = protocol.task_id(0, 1, 1)
    keys = {
        "manifest": protocol.manifest_key, "data": protocol.data_key,
        "data index": protocol.data_index_key, "dispatch": protocol.dispatch_key,
        "cancel": protocol.cancel_key, "owner": lambda p, j: protocol.owner_key(p, j, 2),
        "status": lambda p, j: protocol.status_key(p, j, tid),
        "result": lambda p, j: protocol.result_key(p, j, tid),
        "crash": lambda p, j: protocol.crash_key(p, j, tid, 0),
    }
    mine = {name: key("pre", "job-a") for name, key in keys.items()}
    assert all(k.startswith("pre/jobs/job-a/") for k in mine.values()), mine
    assert len(set(mine.values())) == len(mine)  # no two share a key
    # Another job or another prefix: none of the same keys (cleaning one never touches
    # another; the worker policy's prefix covers them all).
    others = {key(p, j) for key in keys.values() for p, j in (("pre", "job-b"), ("other", "job-a"))}
    assert not others & set(mine.values())
    assert protocol.owner_key("pre", "job-a", 1) != protocol.owner_key("pre", "job-a", 2)


def test_an_objects_name_below_its_prefix_is_what_a_seal_binds():
    assert protocol.object_name("pre", "pre/jobs/j/tasks/t/status.json") == "jobs/j/tasks/t/status.json"
    assert protocol.object_name("pre", "prefix/jobs/j") == "prefix/jobs/j"  # not below "pre/"
    assert protocol.object_name("a/b", "a/b/c") == "c"
    assert protocol.object_name("pre", "elsewhere/x") == "elsewhere/x"


def test_inline_inputs_leave_half_of_a_backends_payload_limit_for_the_rest():
    assert protocol.inline_event_limit(None) == protocol.INLINE_EVENT_BYTES
    assert protocol.inline_event_limit(10 * protocol.INLINE_EVENT_BYTES) == protocol.INLINE_EVENT_BYTES
    assert protocol.inline_event_limit(1001) == 500
    assert isinstance(protocol.inline_event_limit(1001), int)


def test_what_items_printed_is_read_by_item_index():
    status = {"items": {"base": 0.0, "errors": {}, "flops": {}, "stdout": {"3": "hi\n", "10": "x"}}}
    assert protocol.item_stdout(status) == {3: "hi\n", 10: "x"}
    v1 = {"items": [{"i": 0, "ok": True, "t0": 1.0, "t1": 2.0, "stdout": "a"},
                    {"i": 1, "ok": True, "t0": 1.5, "t1": 2.5}]}
    assert protocol.item_stdout(v1) == {0: "a"}  # a version 1 status: one record per item


@pytest.fixture
def india_time(monkeypatch):
    """A local time zone that is not UTC (job ids must not depend on it)."""
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_job_ids_are_their_utc_creation_time_to_the_millisecond_and_strictly_increasing(
        monkeypatch, india_time):
    import datetime

    now_ns = int(datetime.datetime(2026, 1, 1, 12, 0, 0, 999000,
                                   tzinfo=datetime.timezone.utc).timestamp() * 1e9)
    monkeypatch.setattr(protocol.time, "time_ns", lambda: now_ns)
    monkeypatch.setattr(protocol, "_last_job_ms", 0)
    first, second, third = (protocol.new_job_id() for _ in range(3))
    # Made within one millisecond, they still sort in the order they were made.
    assert [first[:18], second[:18], third[:18]] == [
        "20260101-120000999", "20260101-120001000", "20260101-120001001"]
    assert all(protocol.JOB_ID_RE.match(j) for j in (first, second, third))
    assert protocol.job_created(first) == datetime.datetime(
        2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc).timestamp()


def test_when_a_job_nobody_dispatches_can_no_longer_get_results():
    stale = protocol.DISPATCH_STALE_S
    # With its host's record: once the host stopped writing it and what it sent is overdue.
    assert protocol.lost_deadline({}, {"updated": 1000.0, "deadline": 900.0}) == 1000.0 + stale
    assert protocol.lost_deadline({}, {"updated": 1000.0, "deadline": 5000.0}) == 5000.0
    assert protocol.lost_deadline({}, {"updated": 1000.0}) == 1000.0 + stale
    # Without one (an older version): every item one after another at its timeout, plus a grace.
    grace = protocol.LOST_JOB_GRACE_S
    assert protocol.lost_deadline({"created": 1000.0, "n_items": 3, "timeout": 10}) == 1030.0 + grace
    assert protocol.lost_deadline({"created": 1000.0, "n_items": 0, "timeout": 10}) == 1010.0 + grace
    assert protocol.lost_deadline({"created": 1000.0, "n_items": 2}) == 1600.0 + grace  # 300 s


def test_a_version_1_status_reads_as_columns():
    v1 = {"items": [
        {"i": 4, "ok": True, "t0": 10.0, "t1": 10.5, "flops": 2e9, "stdout": "four\n"},
        {"i": 5, "ok": False, "t0": 10.5, "t1": 10.75, "error": {"type": "KeyError"}},
        {"i": 6, "ok": False, "t0": 10.75, "t1": 11.0},
    ]}
    cols = protocol.item_columns(v1)
    assert cols == {"base": 10.0, "t0_us": [0, 500000, 750000], "t1_us": [500000, 750000, 1000000],
                    "errors": {"5": {"type": "KeyError"}, "6": {}},
                    "flops": {"4": 2e9}, "stdout": {"4": "four\n"}}
    assert protocol.item_flops(v1) == 2e9
    assert protocol.item_errors(v1) == {5: {"type": "KeyError"}, 6: {}}
    # Without every item's times, no timeline (rather than a wrong one).
    partial = {"items": [{"i": 0, "ok": True, "t0": 3.0}, {"i": 1, "ok": True, "t0": 2.0, "t1": 4.0}]}
    assert protocol.item_columns(partial) == {"base": 2.0, "errors": {}, "flops": {}, "stdout": {}}
    assert protocol.item_columns({}) == {}  # a host-written status: no items
    assert protocol.item_flops({"items": {"flops": {"0": 1e9, "2": 5e8}}}) == 1.5e9


def test_task_ids_name_non_empty_ranges_of_items():
    assert protocol.task_id(3, 5, 10) == "000003-000005"
    assert protocol.task_range("000003-000005") == (3, 5)
    assert protocol.task_range(protocol.task_id(5, 123_456_789, 123_456_789)) == (5, 123_456_789)
    for start, stop in ((3, 3), (4, 3), (-1, 2), (0, 11)):
        with pytest.raises(ValueError, match=rf"no task \[{start}, {stop}\) in a job of 10 items"):
            protocol.task_id(start, stop, 10)
    with pytest.raises(ValueError, match="not a task id: 'status.json'"):
        protocol.task_range("status.json")
    assert protocol.is_task_id("000003-000005")
    assert not protocol.is_task_id("000003-000003") and not protocol.is_task_id("000005-000003")


def test_a_host_written_status_without_details_still_fails_its_items_readably():
    errors = protocol.item_errors({"task": "000000-000002", "infra": {}})
    record = {"type": "InfrastructureError", "kind": None, "message": "", "traceback": ""}
    assert errors == {0: record, 1: record}
    with_tb = protocol.item_errors({"task": "000000-000001", "infra": {"traceback": "tb"}})
    assert with_tb[0]["traceback"] == "tb"


def test_an_events_item_boundaries_travel_as_packed_sizes_and_read_back_as_offsets():
    import array

    sizes = array.array("Q", [23, 0, 70000, 5])
    data = protocol.encode_item_sizes(sizes)
    assert set(data) == {"sizes"} and protocol.item_offsets(data) == [0, 23, 23, 70023, 70028]
    assert protocol.item_offsets(protocol.encode_item_sizes(array.array("Q"))) == [0]
    # An item too big for 32 bits: the plain offsets, which workers read as well.
    big = protocol.encode_item_sizes(array.array("Q", [1, 2 ** 33]))
    assert big == {"offsets": [0, 1, 2 ** 33 + 1]} and protocol.item_offsets(big) == [0, 1, 2 ** 33 + 1]


def test_item_times_read_the_marks_of_a_status_and_the_older_columns_alike():
    import array

    cols = {"t_marks": protocol.encode_marks(array.array("d", [10.0, 10.5, 12.0]))}
    assert protocol.item_times(cols) == [(10.0, 10.5), (10.5, 12.0)]
    assert [protocol.item_time(cols, k) for k in (-1, 0, 1, 2)] == [None, (10.0, 10.5), (10.5, 12.0), None]
    old = {"base": 10.0, "t0_us": [0, 500000], "t1_us": [500000, 2000000]}
    assert protocol.item_times(old) == [(10.0, 10.5), (10.5, 12.0)] and protocol.item_time(old, 2) is None
    assert protocol.item_times({}) == [] and protocol.item_time({}, 0) is None
