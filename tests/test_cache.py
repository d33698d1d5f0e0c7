"""The per-item result cache: what its keys cover, what a re-run computes, and that
nothing read from it is used before it verifies (real worker processes, real storage)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest

from cloudbutton_executor import Executor, cache, protocol
from cloudbutton_executor.cell import CellTask
from cloudbutton_executor.storage import LocalStorage


def double(x):
    if x == 3:
        raise ValueError("three")
    return 2 * x


# Keys -----------------------------------------------------------------------------------------
def _code_at(fn, filename):
    """``fn`` with its code (and nested code) compiled as if from ``filename``."""
    def moved(code):
        consts = tuple(moved(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_filename=filename, co_consts=consts)

    return types.FunctionType(moved(fn.__code__), fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)


def test_a_function_keeps_its_identity_across_kernels_but_not_across_changes():
    ns = {}
    exec(compile("def f(x):\n    return [y + 1 for y in range(x)]\n", "/tmp/ipykernel_101/123.py",
                 "exec"), ns)
    f = ns["f"]
    ident = cache.function_identity(f, ())
    assert protocol.is_digest(ident) and len(ident) == 64
    # Another kernel (pid) runs the same cell: same identity.
    assert cache.function_identity(_code_at(f, "/tmp/ipykernel_202/123.py"), ()) == ident
    # Other code, or another module version: another identity.
    exec(compile("def f(x):\n    return [y + 2 for y in range(x)]\n", "/tmp/ipykernel_101/123.py",
                 "exec"), ns)
    assert cache.function_identity(ns["f"], ()) != ident
    assert cache.function_identity(f, ("pytest",)) != ident


def test_a_cells_identity_is_its_code_and_captured_values_not_its_label():
    a = CellTask("x * k", {"k": 3}, name="x", label="In[4]")
    b = CellTask("x * k", {"k": 3}, name="x", label="In[9]")
    c = CellTask("x * k", {"k": 4}, name="x", label="In[4]")
    d = CellTask("x * k + 0", {"k": 3}, name="x", label="In[4]")
    ids = [cache.function_identity(t, ()) for t in (a, b, c, d)]
    assert ids[0] == ids[1] and len(set(ids)) == 3


def test_item_keys_are_full_hashes_of_the_function_and_the_items_bytes():
    keys = cache.item_keys("a" * 64, [b"one", b"two", b"one"])
    assert keys[0] == keys[2] != keys[1] and all(protocol.is_digest(k) for k in keys)
    assert cache.item_keys("b" * 64, [b"one"])[0] != keys[0]


# Re-runs --------------------------------------------------------------------------------------
def test_a_rerun_computes_only_new_and_failed_items(ex):
    first = ex.map(double, range(6), cache=True)
    assert first.counts()["cached"] == 0 if first.wait(30) else False
    second = ex.map(double, range(8), cache=True)
    out = second.results(timeout=30)
    assert out[:3] == [0, 2, 4] and out[4:] == [8, 10, 12, 14] and isinstance(out[3], ValueError)
    c = second.counts()
    assert (c["cached"], c["done"], c["failed"]) == (5, 2, 1)
    assert [second.item_state(i) for i in range(8)] == ["cached"] * 3 + ["failed"] + \
        ["cached"] * 2 + ["done"] * 2
    # Only the failed item and the new ones ran; cached items keep their original timings.
    assert sorted(protocol.task_range(t)[0] for t in second.task_ids()) == [3, 6, 7]
    info = second[1].cache_info
    assert info["job_id"] == first.job_id and second[1].stats["compute_done"] == \
        first[1].stats["compute_done"] and second[1].state == "cached"
    assert second.dispatcher.cache_lookup["hits"] == 5


def test_without_cache_nothing_is_reused(ex):
    ex.map(double, range(3), cache=True).wait(30)
    again = ex.map(double, range(3))
    again.wait(30)
    assert again.counts()["cached"] == 0 and len(again.task_ids()) == 3


def test_a_fully_cached_job_uploads_nothing_and_the_manifest_says_cached(ex, storage):
    ex.map(double, [1, 2], cache=True).wait(30)
    job = ex.map(double, [1, 2], cache=True)
    assert job.done() and job.result() == [2, 4] and job.task_ids() == []
    assert not storage.exists(protocol.data_key(ex.prefix, job.job_id))
    manifest = job.dispatcher.read_manifest()
    assert manifest["cached"] == [[0, 2]] and manifest["cache"] == job.spec.cache


SCRIPT = textwrap.dedent("""
    import json, sys
    from cloudbutton_executor import Executor
    from cloudbutton_executor.storage import LocalStorage

    def work(x):
        return x ** 2

    with Executor(workers=2, storage=LocalStorage(sys.argv[1])) as ex:
        job = ex.map(work, range(int(sys.argv[2])), cache=True)
        print(json.dumps({"results": job.result(timeout=60), "counts": job.counts()}))
""")


def test_a_new_process_sharing_the_storage_and_host_key_reuses_the_results(tmp_path):
    """A kernel restart, or another machine with the same bucket and host key."""
    script = tmp_path / "work.py"
    script.write_text(SCRIPT)
    root = str(tmp_path / "shared")
    import json

    def run(n, key_file):
        env = dict(os.environ, CLOUDBUTTON_KEY_FILE=str(key_file))
        out = subprocess.run([sys.executable, str(script), root, str(n)], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    key = tmp_path / "host.key"
    assert run(4, key)["counts"]["cached"] == 0
    again = run(6, key)
    assert again["results"] == [0, 1, 4, 9, 16, 25] and again["counts"]["cached"] == 4
    # Another host key cannot verify the entries: nothing is reused (and nothing unpickled).
    other = run(6, tmp_path / "other.key")
    assert other["results"] == [0, 1, 4, 9, 16, 25] and other["counts"]["cached"] == 0


def test_a_tampered_entry_is_a_miss_and_is_never_unpickled(ex, storage, tmp_path):
    ex.map(double, [5], cache=True).wait(30)
    (name,) = storage.list(cache.prefix_of(ex.prefix))
    raw = storage.get(name)
    head, _, body = raw.partition(b"\n")
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # The body swapped for a malicious pickle: its sha256 no longer matches the header.
    storage.put(name, head + b"\n" + pickle.dumps([(True, Evil())]))
    job = ex.map(double, [5], cache=True)
    assert job.result(timeout=30) == [10] and job.counts()["cached"] == 0
    assert not marker.exists()
    # A header edited to match is refused by its seal.
    import hashlib
    import json

    doc = json.loads(head)
    doc["parts"][0]["sha256"] = hashlib.sha256(pickle.dumps([(True, Evil())])).hexdigest()
    cache.clear(storage, ex.prefix)  # the good entry the last run wrote goes
    storage.put(name, json.dumps(doc).encode() + b"\n" + pickle.dumps([(True, Evil())]))
    job = ex.map(double, [5], cache=True)
    assert job.result(timeout=30) == [10] and job.counts()["cached"] == 0 and not marker.exists()


def test_cache_list_and_clear(ex, storage):
    ex.map(double, [1, 2], cache=True).wait(30)
    ex.map(double, [3, 4], cache=True).wait(30)
    (row,) = cache.list_functions(storage, ex.prefix)
    assert row["entries"] == 2 and protocol.is_digest(row["identity"])
    with pytest.raises(ValueError, match="not a cache identity"):
        cache.clear(storage, ex.prefix, "../jobs")
    assert cache.clear(storage, ex.prefix, row["identity"]) == 2
    assert cache.list_functions(storage, ex.prefix) == []
    assert ex.map(double, [1], cache=True).counts()["cached"] == 0


def test_the_cache_setting_comes_from_the_config_file(storage, tmp_path):
    with open(os.environ["CLOUDBUTTON_CONFIG"], "w") as f:
        f.write("cache: true\nbudget: 2.5\nbackups: false\n")
    with Executor(workers=1, storage=storage) as ex:
        assert (ex.cache, ex.budget, ex.backups) == (True, 2.5, False)
        ex.map(double, [7]).wait(30)
        assert ex.map(double, [7]).counts()["cached"] == 1
    with pytest.raises(ValueError, match="cache must be true or false"):
        Executor(workers=1, storage=storage, cache="yes")
    assert isinstance(LocalStorage, type)
