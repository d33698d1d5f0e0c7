"""A captured global over protocol.LARGE_VALUE_BYTES is stored once, content-addressed,
and loaded once per warm worker, not shipped inside every function blob."""
import os

import numpy as np
import pytest

from cloudbutton_executor import largevalues, protocol
from cloudbutton_executor.errors import IntegrityError
from cloudbutton_executor.storage import LocalStorage
from test_magics import cell

BIG = bytes(range(256)) * (protocol.LARGE_VALUE_BYTES // 256 + 4096)  # just over the threshold


def stored(ip, kind):
    ex = ip.runner.executor(ip.runner.settings())
    return {k: len(ex.storage.get(k)) for k in ex.storage.list(f"{ex.prefix}/{kind}/")}


def test_a_large_global_is_stored_once_not_in_the_function_blob(ip, capsys):
    ip.user_ns.update(big=BIG, small=b"tiny")
    cell(ip, "map range(6) as i --workers 2 --dry-run", "len(big) + len(small) + i")
    report = capsys.readouterr().out
    assert "stored once, loaded by each worker on first use" in report
    assert [line for line in report.splitlines() if "stored once" in line][0].startswith("big ")
    assert not stored(ip, "values")  # a dry run stores nothing

    cell(ip, "map range(6) as i --workers 2", "len(big) + len(small) + i")
    assert ip.user_ns["results"] == [len(BIG) + 4 + i for i in range(6)]
    values = stored(ip, "values")
    assert len(values) == 1 and list(values.values())[0] > protocol.LARGE_VALUE_BYTES
    assert max(stored(ip, "functions").values()) < 100_000  # the function blob holds a reference
    # Another cell reading the same value: the same stored object, not a second copy.
    cell(ip, "map [1] as i", "big[:3]")
    assert ip.user_ns["results"] == [BIG[:3]] and stored(ip, "values") == values
    # %%cloud run too
    cell(ip, "run", "n = len(big)")
    assert ip.user_ns["n"] == len(BIG) and stored(ip, "values") == values


def test_loaded_once_per_warm_worker(ip):
    """Tasks on one warm process share one loaded copy: the value is read at a task's
    first use and kept (a worker that read it again would have to read it again from
    storage, which now holds something else and would be refused)."""
    ip.user_ns["big"] = BIG
    cell(ip, "map range(3) as i --workers 1", "import os; (os.getpid(), len(big))")
    pids = {pid for pid, _n in ip.user_ns["results"]}
    key = next(iter(stored(ip, "values")))
    ex = ip.runner.executor(ip.runner.settings())
    ex.storage.put(key, b"replaced behind the host's back")
    cell(ip, "map range(3) as i --workers 1", "import os; (os.getpid(), big[:2])")
    out = ip.user_ns["results"]
    same = [r for r in out if not isinstance(r, BaseException) and r[0] in pids]
    assert same and all(r[1] == BIG[:2] for r in same)  # the warm process's own copy
    for r in out:  # a fresh process, if one ran, refused the tampered object
        if isinstance(r, BaseException):
            assert isinstance(r, IntegrityError)


def test_a_tampered_stored_value_is_refused(tmp_path):
    st = LocalStorage(str(tmp_path / "s"))
    ref = largevalues.stash(st, "cb", b"\x80\x05K\x07.")  # pickle of 7
    assert ref.key == protocol.value_key("cb", ref.sha256)
    assert largevalues.load(ref, st) == 7
    st.put(ref.key, b"\x80\x05K\x08.")  # a valid pickle of something else
    largevalues._values.pop(ref.sha256)
    with pytest.raises(IntegrityError, match="stored value"):
        largevalues.load(ref, st)
    with pytest.raises(RuntimeError, match="inside a task"):
        largevalues.load(largevalues.StoredValue("cb/values/x.pickle", "0" * 64, 1))
    assert os.path.getsize(os.path.join(st.root, ref.key)) == 5


BIG_ROWS = np.arange(protocol.LARGE_VALUE_BYTES // 8 + 1024, dtype=np.float64)


def reads_the_big_global(i):
    return float(BIG_ROWS[i]), len(BIG_ROWS)


def test_a_large_global_of_a_python_function_is_stored_apart(ex):
    """The Python API: a function's large numpy/bytes global is named in its blob by
    sha256 and stored once beside it, loaded by each warm worker once."""
    out = ex.map(reads_the_big_global, [0, 5, 7]).result(timeout=60)
    assert out == [(0.0, len(BIG_ROWS)), (5.0, len(BIG_ROWS)), (7.0, len(BIG_ROWS))]
    values = ex.storage.list(f"{ex.prefix}/values/")
    functions = ex.storage.list(f"{ex.prefix}/functions/")
    assert len(values) == 1 and len(ex.storage.get(values[0])) > BIG_ROWS.nbytes
    assert all(len(ex.storage.get(k)) < 100_000 for k in functions)
    ex.map(reads_the_big_global, [1]).result(timeout=60)
    assert ex.storage.list(f"{ex.prefix}/values/") == values  # not stored twice


BIG_WITH_KEY = b"x" * protocol.LARGE_VALUE_BYTES + b" AKIAIOSFODNN7EXAMPLE "


def reads_a_big_secret(i):
    return len(BIG_WITH_KEY)


def test_a_large_global_is_screened_like_the_blob(ex):
    from cloudbutton_executor import SecretError

    with pytest.raises(SecretError, match="access key"):
        ex.map(reads_a_big_secret, [1])
    assert ex.storage.list(f"{ex.prefix}/values/") == []  # nothing stored


# Values of any type, not only bytes and arrays: a dict global, a list a closure captured,
# an object of the notebook's own class; each pickle just over the threshold.
BIG_TABLE = {i: f"{i:0100d}" for i in range(protocol.LARGE_VALUE_BYTES // 100)}


class Catalogue:
    def __init__(self, n):
        self.names = [f"name-{i:090d}" for i in range(n)]


BIG_CATALOGUE = Catalogue(protocol.LARGE_VALUE_BYTES // 90)


def reads_the_table(i):
    return BIG_TABLE[i][-3:], len(BIG_TABLE), BIG_CATALOGUE.names[i][-2:]


def closure_over_a_big_list():
    rows = [f"row-{i:090d}" for i in range(protocol.LARGE_VALUE_BYTES // 90)]

    def nth(i, scale=1):
        return rows[i * scale][-2:], len(rows)
    return nth


def value_keys(ex):
    return ex.storage.list(f"{ex.prefix}/values/")


def test_large_globals_and_closures_of_any_type_are_stored_apart(ex, caplog):
    """The Python API: a by-value function's dict global, custom object global and a
    closure's list are each stored once apart (the blob names them), the results right."""
    import logging

    with caplog.at_level(logging.INFO, logger="cloudbutton.executor"):
        assert ex.map(reads_the_table, [3, 7]).result(timeout=60) == [
            ("003", len(BIG_TABLE), "03"), ("007", len(BIG_TABLE), "07")]
    assert "global BIG_TABLE read by reads_the_table()" in caplog.text  # says what was stored
    values = value_keys(ex)
    assert len(values) == 2 and all(len(ex.storage.get(k)) > protocol.LARGE_VALUE_BYTES for k in values)
    nth = closure_over_a_big_list()
    assert ex.map(nth, [2, 4]).result(timeout=60) == [("02", len(BIG_CATALOGUE.names)),
                                                    ("04", len(BIG_CATALOGUE.names))]
    assert len(value_keys(ex)) == 3
    assert all(len(ex.storage.get(k)) < 100_000 for k in ex.storage.list(f"{ex.prefix}/functions/"))
    ex.map(reads_the_table, [1]).result(timeout=60)
    assert len(value_keys(ex)) == 3  # the same values: not stored twice


def test_a_large_value_of_any_type_is_loaded_once_per_warm_worker_and_verified(storage):
    """One warm process loads the stored dict once (a tampered copy stored after that is
    never read by it); a fresh process reads the tampered copy and refuses it."""
    from cloudbutton_executor import Executor
    from cloudbutton_executor.errors import IntegrityError

    with Executor(workers=1, storage=storage, timeout=60) as ex:
        first = ex.map(reads_the_table, [1, 2]).result(timeout=60)
        assert first == [("001", len(BIG_TABLE), "01"), ("002", len(BIG_TABLE), "02")]
        for key in value_keys(ex):  # one bit changed behind the host's back
            data = storage.get(key)
            storage.put(key, data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
        again = ex.map(reads_the_table, [5, 6]).result(timeout=60)
        assert again == [("005", len(BIG_TABLE), "05"), ("006", len(BIG_TABLE), "06")]
    with Executor(workers=3, storage=storage, timeout=60) as fresh:  # another pool: new processes
        job = fresh.map(reads_the_table, [1])
        with pytest.raises(IntegrityError, match="stored value"):
            job.result(timeout=60)
        assert job[0].stats["cold_start"]


BIG_NESTED = {"rows": np.zeros(protocol.LARGE_VALUE_BYTES // 8 + 1024), "name": "nested",
              "labels": [f"label-{i:090d}" for i in range(protocol.LARGE_VALUE_BYTES // 90)]}


def reads_the_nested_array(i):
    return float(BIG_NESTED["rows"][i]), BIG_NESTED["name"]


def test_a_large_value_is_stored_whole_naming_no_other(ex):
    """A large dict holding a large array (and large besides) is one stored value: a stored
    value never names another, so a job's function blob names every value it needs
    (`cloudbutton clean`)."""
    assert ex.map(reads_the_nested_array, [1]).result(timeout=60) == [(0.0, "nested")]
    (key,) = value_keys(ex)
    fkey = ex.storage.list(f"{ex.prefix}/functions/")[0]
    assert protocol.content_digest(key).encode() in ex.storage.get(fkey)
