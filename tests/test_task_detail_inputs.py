"""The panel's task detail shows each item's input (a short repr the host stored when it
submitted the job) and what it printed, for succeeded tasks too; the server reads both as
JSON text and never unpickles anything."""
import pickle

import pytest

from cloudbutton_executor import integrity, protocol, shown_inputs
from cloudbutton_jupyter.manager import CloudManager


class Loud:
    def __repr__(self):
        raise RuntimeError("no repr for you")

    def __str__(self):
        return "loud"


def shout(x):
    print(f"got {str(x)[:20]}")
    return 1


def test_the_detail_shows_inputs_and_stdout_of_succeeded_tasks(ex, storage):
    items = [7, "s" * 500, [list(range(100))], Loud()]
    job = ex.map(shout, items)
    job.result(timeout=30)
    detail = CloudManager(storage=storage).job_detail(job.job_id)
    by_item = {d["i"]: d for t in detail["tasks_detail"] for d in t["item_detail"]}
    assert all(t["state"] == "done" for t in detail["tasks_detail"])
    assert by_item[0] == {"i": 0, "input": "7", "stdout": "got 7\n"}
    assert by_item[1]["input"].startswith("'sss") and len(by_item[1]["input"]) <= 80
    assert by_item[1]["stdout"] == "got " + "s" * 20 + "\n"
    assert by_item[2]["input"] == "[[0, 1, 2, 3, ...]]"
    assert by_item[3]["input"].startswith("<Loud instance at ")  # a repr that raises: no matter


def test_only_the_first_inputs_are_kept_and_a_batch_shows_its_first_items(ex, storage, monkeypatch):
    monkeypatch.setattr(protocol, "INPUT_REPRS_MAX", 6)
    job = ex.map(shout, range(10), chunksize=4)
    job.result(timeout=30)
    detail = CloudManager(storage=storage).job_detail(job.job_id)
    rows = {t["task"]: t["item_detail"] for t in detail["tasks_detail"]}
    assert [d["input"] for d in rows["000000-000004"]] == ["0", "1", "2", "3"]
    assert [d["input"] for d in rows["000004-000008"]] == ["4", "5", None, None]
    assert [d["stdout"] for d in rows["000008-000010"]] == ["got 8\n", "got 9\n"]


def test_a_planted_inputs_object_is_shown_as_text_only(ex, storage):
    job = ex.map(shout, [1, 2])
    job.result(timeout=30)
    key = protocol.inputs_shown_key("cloudbutton", job.job_id)
    sealed = integrity.unsealed(storage.get(key))
    assert sealed == shown_inputs.document(job.job_id, ["1", "2"])
    # What the manager reads is JSON: a pickle (or anything not this job's list of strings)
    # planted there is never loaded, only ignored or shown as text.
    storage.put(key, pickle.dumps(["x"]))
    assert CloudManager(storage=storage).job_detail(job.job_id)["tasks_detail"][0][
        "item_detail"][0]["input"] is None
    storage.put(key, integrity.seal(b"k" * 32, "n", {"job_id": job.job_id,
                                                     "reprs": [{"a": 1}, "x" * 1000]}))
    rows = CloudManager(storage=storage).job_detail(job.job_id)["tasks_detail"]
    assert [r["item_detail"][0]["input"] for r in rows] == ["?", "x" * 80]
    storage.put(key, integrity.seal(b"k" * 32, "n", {"job_id": "another", "reprs": ["1", "2"]}))
    rows = CloudManager(storage=storage).job_detail(job.job_id)["tasks_detail"]
    assert rows[0]["item_detail"][0]["input"] is None


def test_a_large_bytes_input_is_shown_by_its_head_and_length():
    """A 100 MB input is not repr'd whole (reprlib has no rule for bytes: that took 8 ms a
    megabyte on every map): its head and its length, within the bound."""
    from cloudbutton_executor import protocol, shown_inputs

    for big in (b"x" * 100_000_000, bytearray(b"y" * 100_000_000)):
        text = shown_inputs.short_repr(big)
        assert text.endswith("… (100,000,000 bytes)") and len(text) <= protocol.INPUT_REPR_CHARS
    assert shown_inputs.short_repr(b"ab") == "b'ab'"
    assert shown_inputs.short_repr(bytearray(b"ab")) == "bytearray(b'ab')"


@pytest.mark.parametrize("items", [
    list(range(-5, 1000)),                       # the common head: plain numbers
    [0.1, 1e300, float("nan"), True, None, "it's", ""],
    [10 ** 60, 1, 2],                            # a number past reprlib's 40 digits
    ["x" * 200, "a"],                            # a string past the bound
    [1, (2,), {"k": 1}],                         # a 1-tuple is shown bare; other kinds
    [type("Odd", (int,), {"__repr__": lambda self: 1 / 0})(3), 4],  # a failing repr
])
def test_the_shown_reprs_of_plain_inputs_are_reprlibs_bounded_ones(items):
    """Numbers and short strings take a fast path (every map pays for its shown inputs
    before its first task): it must give what the bounded reprlib rule gives."""
    from cloudbutton_executor import shown_inputs

    expected = [shown_inputs.short_repr(x[0] if type(x) is tuple and len(x) == 1 else x)
                for x in items[:protocol.INPUT_REPRS_MAX]]
    assert shown_inputs.reprs(items) == expected
    assert shown_inputs.reprs(iter(items)) == expected
