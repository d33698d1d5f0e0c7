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
