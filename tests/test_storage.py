"""Both storages honour one contract; the executor runs unchanged on S3 (a real moto server)."""
import array
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from cloudbutton_executor import Executor
from cloudbutton_executor.storage import LocalStorage, NotFound, S3Storage, storage_from_description


@pytest.fixture(params=["local", "s3"])
def any_storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(str(tmp_path))
    endpoint = request.getfixturevalue("moto_endpoint")
    return S3Storage(request.getfixturevalue("s3_bucket"), region="us-east-1", endpoint_url=endpoint)


def test_storage_contract(any_storage):
    st = any_storage
    st.put("p/jobs/a/data.pickle", b"0123456789")
    assert st.get("p/jobs/a/data.pickle") == b"0123456789"
    assert st.get("p/jobs/a/data.pickle", 2, 5) == b"234"
    assert st.put_if_absent("p/jobs/a/tasks/t/status.json", b"first") is True
    assert st.put_if_absent("p/jobs/a/tasks/t/status.json", b"second") is False
    assert st.get("p/jobs/a/tasks/t/status.json") == b"first"  # first write wins
    assert st.exists("p/jobs/a/data.pickle") and not st.exists("p/nothing")
    with pytest.raises(NotFound):
        st.get("p/nothing")
    assert st.list("p/jobs/a/") == ["p/jobs/a/data.pickle", "p/jobs/a/tasks/t/status.json"]
    assert st.children("p/jobs/") == ["a"]
    assert st.request_counts["PUT"] == 3
    copy = storage_from_description(st.describe())
    assert copy.get("p/jobs/a/data.pickle", 0, 1) == b"0"
    assert "secret" not in str(st.describe()).lower() and "key" not in st.describe()
    assert st.delete_prefix("p/jobs/a/") == 2
    assert st.list("p/") == []


def test_local_storage_rejects_escaping_keys(tmp_path):
    with pytest.raises(ValueError):
        LocalStorage(str(tmp_path)).get("../etc/passwd")


def test_executor_on_s3_storage(moto_endpoint, s3_bucket):
    storage = S3Storage(s3_bucket, region="us-east-1", endpoint_url=moto_endpoint)

    def cube(x):
        return x ** 3

    with Executor(workers=2, storage=storage) as ex:
        job = ex.map(cube, range(12))
        assert job.result(timeout=60) == [x ** 3 for x in range(12)]
        big = ex.map(len, [b"x" * 200_000, b"y" * 300_000])  # inputs read by byte range
        assert big.result(timeout=60) == [200_000, 300_000]
    keys = storage.list(f"cloudbutton/jobs/{big.job_id}/")
    assert f"cloudbutton/jobs/{big.job_id}/data.pickle" in keys
    assert job.stats["requests"]["workers"]["PUT"] == 12


# The contract in detail -----------------------------------------------------------------
BIG = bytes(range(256)) * 1024  # 256 KiB: more than one 64 KiB read


def test_reads_whole_ranges_and_big_objects(any_storage):
    st = any_storage
    st.put("p/big", BIG)
    assert st.get("p/big") == BIG
    assert st.get("p/big", 70_000) == BIG[70_000:]  # from an offset to the end
    assert st.get("p/big", 65_530, 65_546) == BIG[65_530:65_546]
    assert st.get("p/big", 0, 1) == BIG[:1] and st.get("p/big", len(BIG) - 1, len(BIG)) == BIG[-1:]
    st.put("p/small", bytearray(b"abc"))
    assert st.get("p/small") == b"abc"
    st.put("p/small", b"replaced")  # put replaces
    assert st.get("p/small") == b"replaced"
    assert st.get("p/small", 2) == b"placed"


def test_missing_keys(any_storage):
    st = any_storage
    with pytest.raises(NotFound) as info:
        st.get("p/jobs/none/manifest.json")
    assert info.value.args[0] == "p/jobs/none/manifest.json"
    with pytest.raises(NotFound):
        st.get("p/none", 0, 5)
    assert st.exists("p/none") is False
    assert st.list("p/none/") == [] and st.children("p/none/") == []
    assert st.delete_prefix("p/none/") == 0


def test_list_children_and_start_after(any_storage):
    st = any_storage
    for k in ["j/b/t/2/s", "j/b/t/1/s", "j/a/m", "j/b/m", "k/x"]:
        st.put(k, b"-")
    assert st.list("j/") == ["j/a/m", "j/b/m", "j/b/t/1/s", "j/b/t/2/s"]
    assert st.list("j/b/t/") == ["j/b/t/1/s", "j/b/t/2/s"]
    assert st.list("j/b/t/", start_after="j/b/t/1") == ["j/b/t/1/s", "j/b/t/2/s"]
    assert st.list("j/b/t/", start_after="j/b/t/1/s") == ["j/b/t/2/s"]
    assert st.list("j/", start_after="j/b/t/2/s") == []
    # Names where a directory sorts differently from its keys ("/" sorts before "0"
    # and "a"): listing from a key inside, or between, directories misses nothing.
    for k in ["j/b/t/10/s", "j/b/t/1a/s", "j/b/t/1/u/v"]:
        st.put(k, b"-")
    after = ["j/b/t/1/s", "j/b/t/1/u/v", "j/b/t/10/s", "j/b/t/1a/s", "j/b/t/2/s"]
    for start in ["j/b/t/0", "j/b/t/1", "j/b/t/1/", "j/b/t/1/s", "j/b/t/1/t", "j/b/t/1/u/v",
                  "j/b/t/1/v", "j/b/t/10", "j/b/t/10/s", "j/b/t/1a", "j/b/t/1b", "j/b/t/2/s"]:
        assert st.list("j/b/t/", start_after=start) == [k for k in after if k > start], start
    assert st.list("j/", start_after="j/a") == ["j/a/m", "j/b/m"] + after
    assert st.children("j/") == ["a", "b"] and st.children("j") == ["a", "b"]
    assert st.children("j/b/") == ["m", "t"]


def test_request_counts(any_storage):
    st = any_storage
    st.put("c/a", b"1")
    st.put_if_absent("c/a", b"2")
    st.get("c/a")
    st.get("c/a", 0, 1)
    st.exists("c/a")
    st.exists("c/zzz")
    st.list("c/")
    st.children("c/")
    assert st.request_counts == {"PUT": 2, "GET": 2, "HEAD": 2, "LIST": 2}
    assert st.delete_prefix("c/") == 1
    assert st.request_counts["LIST"] == 3 and st.request_counts["DELETE"] == 1


def test_delete_prefix_leaves_the_rest(any_storage):
    st = any_storage
    for k in ["d/x/1", "d/x/sub/2", "d/xy/3", "d/y/4"]:
        st.put(k, b"-")
    assert st.delete_prefix("d/x/") == 2
    assert st.list("d/") == ["d/xy/3", "d/y/4"]
    assert st.children("d/") == ["xy", "y"]  # no empty directory left behind


def test_local_put_parts_many_small_and_large(tmp_path):
    st = LocalStorage(str(tmp_path))
    # Many small parts (written in joined runs) around large ones (written as they are),
    # views of other item sizes among them: the same bytes, in order.
    big = os.urandom(3 << 20)
    words = array.array("Q", range(1000))
    parts = ([i.to_bytes(3, "big") for i in range(400_000)] + [big, memoryview(words)]
             + [b"x"] * 10 + [memoryview(big)[5:(1 << 20) + 7], b"end"])
    st.put_parts("many", parts)
    assert st.get("many") == b"".join(bytes(p) for p in parts)


def test_local_storage_details(tmp_path, monkeypatch):
    st = LocalStorage(str(tmp_path / "root"))
    st.put_parts("p/joined", [b"ab", bytearray(b"cd"), memoryview(b"ef")])
    assert st.get("p/joined") == b"abcdef" and st.request_counts["PUT"] == 1
    st.put("q/view", memoryview(b"xyz"))
    assert st.get("q/view") == b"xyz"
    assert st.put_if_absent("p/once", b"1") and not st.put_if_absent("p/once", b"2")
    assert st.get("p/once") == b"1"
    assert sorted(os.listdir(tmp_path / "root" / "p")) == ["joined", "once"]  # no temp files
    (tmp_path / "root" / "p" / "half.0123.tmp").write_bytes(b"being written")
    assert st.list("p/") == ["p/joined", "p/once"] and st.children("p/") == ["joined", "once"]
    assert st.get("p/joined", 2, 2) == b"" and st.get("p/joined", 4, 100) == b"ef"
    st.put("top", b"t")  # a key at the root
    assert st.list("") == ["p/joined", "p/once", "q/view", "top"]
    assert st.children("") == ["p", "q", "top"]
    # Objects are plain files: readable, never executable (mode 0o666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    for key in ("top", "p/once", "p/joined"):
        assert os.stat(tmp_path / "root" / key).st_mode & 0o777 == 0o666 & ~umask
    assert st.get("p/joined", None, 2) == b"abcdef"  # no start: the whole object
    for bad in ["/etc/passwd", "../x", "p/../../x", "p/.."]:
        with pytest.raises(ValueError, match="invalid storage key"):
            st.put(bad, b"x")
    st.put("p/a..b", b"dots inside a name are fine")
    assert st.exists("p/a..b")
    assert st.describe() == {"kind": "local", "root": str(tmp_path / "root")}
    assert LocalStorage("relative").root == os.path.abspath("relative")
    # The default root: $CLOUDBUTTON_STORAGE_DIR, else the XDG cache, else ~/.cache.
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", str(tmp_path / "explicit"))
    assert LocalStorage().root == str(tmp_path / "explicit")
    monkeypatch.delenv("CLOUDBUTTON_STORAGE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert LocalStorage().root == str(tmp_path / "xdg" / "cloudbutton")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert LocalStorage().root == str(tmp_path / "home" / ".cache" / "cloudbutton")


def test_concurrent_first_writes_into_a_new_directory(tmp_path):
    """Writers racing to create the same new directory all succeed."""
    import threading

    st = LocalStorage(str(tmp_path))

    def write(barrier, errors, key, first_wins):
        barrier.wait()
        try:
            if first_wins:
                st.put_if_absent(key, b"x")
            else:
                st.put(key, b"x")
        except Exception as exc:  # any failure is the finding
            errors.append(exc)

    for round_ in range(10):
        barrier, errors = threading.Barrier(8), []
        threads = [threading.Thread(target=write, args=(barrier, errors, f"r{round_}/deep/k{i}",
                                                        i % 2 == 0)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(st.list(f"r{round_}/")) == 8


def test_a_failed_write_leaves_nothing(tmp_path):
    st = LocalStorage(str(tmp_path))

    def parts():
        yield b"first part"
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        st.put_parts("p/broken", parts())
    assert os.listdir(tmp_path / "p") == [] and not st.exists("p/broken")


def test_s3_details(moto_endpoint, s3_bucket):
    import boto3
    from botocore.exceptions import ClientError

    st = S3Storage(s3_bucket, region="us-east-1", endpoint_url=moto_endpoint)
    assert st.describe() == {"kind": "s3", "bucket": s3_bucket, "region": "us-east-1",
                             "endpoint_url": moto_endpoint}
    assert S3Storage("b").describe() == {"kind": "s3", "bucket": "b"}
    with pytest.raises(ValueError, match="bucket"):
        S3Storage("")
    cfg = st.client.meta.config
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 9}  # 8 retries
    assert cfg.max_pool_connections == 64
    assert st.client is st.client  # one client, made once
    session = boto3.session.Session(region_name="us-east-1")
    assert S3Storage(s3_bucket, endpoint_url=moto_endpoint, session=session,
                     max_pool_connections=3).client.meta.config.max_pool_connections == 3
    # More than one page of keys: LIST follows continuation tokens, DELETE goes by 1,000.
    keys = [f"many/{i:05d}" for i in range(1001)]
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_bucket, Key=k, Body=b""), keys))
    client.put_object(Bucket=s3_bucket, Key="many/ZZX/deeper", Body=b"")
    assert st.list("many/") == keys + ["many/ZZX/deeper"]
    assert st.request_counts == {"LIST": 2}
    assert st.children("many") == [k.split("/")[1] for k in keys] + ["ZZX"]
    assert st.request_counts == {"LIST": 4}
    assert st.list("many/", start_after="many/00999") == ["many/01000", "many/ZZX/deeper"]
    assert st.delete_prefix("many/") == 1002
    assert st.request_counts["DELETE"] == 2 and st.list("many/") == []
    # Errors other than a missing key are not mistaken for one.
    gone = S3Storage("no-such-bucket-cb", region="us-east-1", endpoint_url=moto_endpoint)
    for call in (lambda: gone.get("k"), lambda: gone.put_if_absent("k", b"x"),
                 lambda: gone.get("k", 0, 1), lambda: gone.list("k/")):
        with pytest.raises(ClientError, match="NoSuchBucket"):
            call()


def test_descriptions_rebuild_the_storage(tmp_path):
    local = storage_from_description({"kind": "local", "root": str(tmp_path)})
    assert isinstance(local, LocalStorage) and local.root == str(tmp_path)
    s3 = storage_from_description({"kind": "s3", "bucket": "b", "region": "eu-west-1",
                                   "endpoint_url": "http://127.0.0.1:9"})
    assert isinstance(s3, S3Storage) and s3.describe() == {
        "kind": "s3", "bucket": "b", "region": "eu-west-1", "endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(ValueError, match="unknown storage kind 'gcs'"):
        storage_from_description({"kind": "gcs"})


def test_counting_view_counts_only_its_own_requests(tmp_path):
    from cloudbutton_executor.storage import CountingView

    st = LocalStorage(str(tmp_path))
    view = CountingView(st)
    view.put("a", b"1")
    view.put_parts("b", [b"2"])
    view.put_if_absent("a", b"x")
    view.get("a")
    view.exists("a")
    view.list("")
    view.children("")
    assert view.list("", start_after="a") == ["b"]  # keyword arguments reach the storage
    st.get("a")  # not through the view
    assert view.counts == {"PUT": 3, "GET": 1, "HEAD": 1, "LIST": 3}
    assert view.inner is st and view.describe() == st.describe()
    assert st.request_counts["GET"] == 2


def test_touch_refreshes_last_modified_without_changing_the_bytes(any_storage):
    """``cloudbutton clean`` keeps what a starting job refreshed: touch moves the
    last-modified time to now and leaves the object as it was; a missing key is NotFound."""
    import time

    st = any_storage
    st.put("p/values/a.pickle", b"payload")
    if isinstance(st, LocalStorage):  # age it (S3 dates are the server's: compare before/after)
        os.utime(os.path.join(st.root, "p/values/a.pickle"), (1_000_000, 1_000_000))
    before = dict(st.iter_modified("p/"))["p/values/a.pickle"]
    time.sleep(1.1)  # S3's Last-Modified has a resolution of a second
    st.touch("p/values/a.pickle")
    after = dict(st.iter_modified("p/"))
    assert list(after) == ["p/values/a.pickle"] and after["p/values/a.pickle"] > before
    assert abs(after["p/values/a.pickle"] - time.time()) < 60
    assert st.get("p/values/a.pickle") == b"payload"
    with pytest.raises(NotFound):
        st.touch("p/values/missing.pickle")


OLD_BOTOCORE_PUTS = r"""
import json, sys
import botocore
from cloudbutton_executor.storage import S3Storage

bucket, endpoint = sys.argv[1:3]
st = S3Storage(bucket, region="us-east-1", endpoint_url=endpoint)
shape = st.client.meta.service_model.operation_model("PutObject").input_shape
first, second = st.put_if_absent("status", b"first"), st.put_if_absent("status", b"second")
st.put("plain", b"one")
st.put("plain", b"two")  # a plain put still replaces (no condition sent with it)
print(json.dumps({"botocore": botocore.__version__, "knows_if_none_match": "IfNoneMatch" in shape.members,
                  "first": first, "second": second, "status": st.get("status").decode(),
                  "plain": st.get("plain").decode()}))
"""


def test_first_write_wins_with_the_botocore_lambdas_runtime_bundles(moto_endpoint, s3_bucket):
    """Lambda's Python runtime bundles a botocore older than S3's conditional writes: the
    workers' first-write-wins puts (their statuses) must still send If-None-Match there."""
    import json
    import subprocess
    import sys

    import cloudbutton_executor
    from aws_fixtures import emulator_runtime

    _, runtime_dir = emulator_runtime()
    package_parent = os.path.dirname(os.path.dirname(cloudbutton_executor.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([runtime_dir, package_parent]))
    p = subprocess.run([sys.executable, "-c", OLD_BOTOCORE_PUTS, s3_bucket, moto_endpoint],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["knows_if_none_match"] is False, out  # else this test tests nothing
    assert (out["first"], out["second"], out["status"]) == (True, False, "first"), out
    assert out["plain"] == "two", out


def test_a_counting_view_passes_every_argument_through(tmp_path):
    """A job's view of its storage reads and writes exactly what the storage would."""
    from cloudbutton_executor.storage import CountingView

    st = LocalStorage(str(tmp_path))
    view = CountingView(st)
    view.put("d/a", b"0123456789")
    view.put("d/sub/b", b"x")
    assert view.get("d/a", 2, 5) == b"234" and view.get("d/a", 7) == b"789"
    assert view.size("d/a") == 10
    with view.open_range("d/a", 3, 6) as f:
        assert f.read() == b"345"
    with view.open_range("d/a") as f:  # from the start by default
        assert f.read() == b"0123456789"
    assert list(view.iter_objects("d/", start_after="d/a")) == [("d/sub/b", 1)]
    assert [k for k, _ in view.iter_modified("d/")] == ["d/a", "d/sub/b"]
    view.touch("d/a")
    view.delete("d/a")
    assert not st.exists("d/a")
    assert view.delete_prefix("d/") == 1 and st.list("d/") == []
    assert view.counts == {"PUT": 3, "GET": 4, "HEAD": 1, "LIST": 2, "DELETE": 2}
    assert view.kind == "local"
    view.add_counts({"GET": 5, "LIST": 0})  # a data listing's requests, made elsewhere
    assert view.counts["GET"] == 9 and view.counts["LIST"] == 2


# Sizes, streams, listings with sizes and deletes, on both storages --------------------------
def test_sizes_streams_listings_and_deletes(any_storage):
    """size, open_range, iter_objects and delete answer alike on a directory and on S3:
    exact bytes for every range (empty, past the end, cut short by the object's end),
    a missing key is NotFound naming it, and each call counts as one request of its kind."""
    st = any_storage
    st.put("p/a", b"0123456789")
    st.put("p/sub/b", b"xy")
    st.put("q/empty", b"")
    assert (st.size("p/a"), st.size("p/sub/b"), st.size("q/empty")) == (10, 2, 0)
    assert st.request_counts == {"PUT": 3, "HEAD": 3}
    st.touch("q/empty")
    assert st.request_counts == {"PUT": 4, "HEAD": 3} and st.get("q/empty") == b""

    def read(*args):
        with st.open_range("p/a", *args) as f:
            assert f.readable()
            return f.read()

    assert read() == b"0123456789"  # from the start by default
    assert read(3) == b"3456789" and read(3, 7) == b"3456" and read(0, 1) == b"0"
    assert read(5, 100) == b"56789"  # the object ends first
    assert read(7, 7) == b"" and read(8, 3) == b""  # an empty range reads nothing
    assert read(10) == b"" and read(20, 25) == b""  # at or past the end
    with st.open_range("p/a", 1, 8) as f:  # read piece by piece: never past the range
        assert [f.read(3), f.read(3), f.read(3), f.read(3)] == [b"123", b"456", b"7", b""]
    assert st.request_counts["GET"] == 11

    assert list(st.iter_objects("p/")) == [("p/a", 10), ("p/sub/b", 2)]
    assert list(st.iter_objects("p/", start_after="p/a")) == [("p/sub/b", 2)]
    assert list(st.iter_objects("")) == [("p/a", 10), ("p/sub/b", 2), ("q/empty", 0)]
    assert list(st.iter_objects("none/")) == []
    assert [k for k, _ in st.iter_modified("p/")] == ["p/a", "p/sub/b"]

    for call in (st.size, st.open_range):
        with pytest.raises(NotFound) as info:
            call("p/none")
        assert type(info.value) is NotFound and str(info.value) == "p/none"
    with pytest.raises(NotFound) as info:
        st.touch("p/none")
    assert type(info.value) is NotFound and str(info.value) == "p/none"
    counts = st.request_counts
    st.delete("p/a")
    st.delete("p/a")  # deleting a missing key is no error
    assert not st.exists("p/a") and st.list("") == ["p/sub/b", "q/empty"]
    assert st.request_counts["DELETE"] == counts.get("DELETE", 0) + 2


def test_not_found_reads_as_its_key():
    assert str(NotFound("p/jobs/x/manifest.json")) == "p/jobs/x/manifest.json"
    assert str(NotFound()) == "not found"


def test_a_missing_bucket_is_named_not_taken_for_a_missing_key(tmp_path, moto_endpoint):
    """Reads of data in a bucket (or local root) that does not exist raise NoSuchBucket
    naming it: the job protocol must not wait for keys that can never appear."""
    from cloudbutton_executor.storage import NoSuchBucket

    absent = str(tmp_path / "absent")
    gone = [(LocalStorage(absent), f"no such directory: {absent}"),
            (S3Storage("no-such-bucket-cb", region="us-east-1", endpoint_url=moto_endpoint),
             "no such bucket: no-such-bucket-cb")]
    def reads(st):
        last = st.get if isinstance(st, LocalStorage) else st.touch
        return [lambda: st.size("k"), lambda: st.open_range("k", 0, 4),
                lambda: list(st.iter_objects("p/")), lambda: last("k")]

    for st, message in gone:
        for call in reads(st):
            with pytest.raises(NoSuchBucket) as info:
                call()
            assert str(info.value) == message


def test_a_missing_key_is_told_from_a_missing_bucket_at_one_head_more(tmp_path, moto_endpoint,
                                                                      s3_bucket):
    """S3's HEAD has no error body: a 404 for a key in a bucket that exists costs one
    more HEAD (of the bucket) to say it is the key; a directory needs none."""
    for st, heads in ((LocalStorage(str(tmp_path)), 1),
                      (S3Storage(s3_bucket, region="us-east-1", endpoint_url=moto_endpoint), 2)):
        with pytest.raises(NotFound) as info:
            st.size("k")
        assert type(info.value) is NotFound and st.request_counts == {"HEAD": heads}


def test_local_listings_skip_keys_deleted_while_they_are_read(tmp_path):
    """A key deleted after the listing was taken is skipped; the keys after it still come."""
    st = LocalStorage(str(tmp_path))
    for k in ("p/a", "p/b", "p/c"):
        st.put(k, b"12")
    for listing in (st.iter_objects, st.iter_modified):
        st.put("p/b", b"12")
        it = listing("p/")
        assert next(it)[0] == "p/a"
        st.delete("p/b")
        assert [k for k, _ in it] == ["p/c"]


def test_small_parts_are_written_in_runs_of_about_a_megabyte():
    """put_parts' pieces: runs of small parts joined until they reach 1 MB (then written),
    a part of 1 MB or more (counted in bytes, whatever its item size) passed as it is,
    never copied, and a last lone part as it is."""
    from cloudbutton_executor.storage import _COALESCE_BYTES as MB
    from cloudbutton_executor.storage import _coalesced

    almost, one = b"x" * (MB - 1), b"y"
    big = b"B" * MB
    words = memoryview(array.array("Q", range(MB // 8)))  # MB // 8 items, MB bytes
    tail = bytearray(b"tail")
    parts = [almost, one, almost, one, big, almost, one, words, b"s", tail]
    pieces = list(_coalesced(parts))
    assert [len(p) if not isinstance(p, memoryview) else p.nbytes for p in pieces] == [
        MB, MB, MB, MB, MB, 5]
    assert pieces[0] == almost + one and pieces[1] == almost + one and pieces[3] == almost + one
    assert pieces[2] is big and pieces[4] is words and pieces[5] == b"stail"
    assert list(_coalesced([tail]))[0] is tail
    # Small parts waiting when a large one comes are written first; the count starts over.
    assert [len(p) for p in _coalesced([b"s", big, almost, one, b"z"])] == [1, MB, MB, 1]
    assert list(_coalesced([])) == []


def test_s3_touch_copies_the_object_onto_itself_with_new_metadata(moto_endpoint, s3_bucket):
    """S3 copies an object onto itself only if something changes: touch replaces its
    metadata with the time of the touch, billed as one PUT."""
    import time

    st = S3Storage(s3_bucket, region="us-east-1", endpoint_url=moto_endpoint)
    st.put("k", b"payload")
    before = time.time()
    st.touch("k")
    meta = st.client.head_object(Bucket=s3_bucket, Key="k")["Metadata"]
    assert list(meta) == ["touched"] and before - 1 <= float(meta["touched"]) <= time.time() + 1
    assert st.request_counts == {"PUT": 2} and st.get("k") == b"payload"


def test_s3_construction_and_descriptions_with_a_profile(moto_endpoint, s3_bucket):
    """A profile (a name in the host's ~/.aws, never a secret) travels in the description;
    a given session or client is the one used."""
    import boto3

    with pytest.raises(ValueError) as info:
        S3Storage("")
    assert str(info.value) == "S3 storage needs a bucket name"
    named = storage_from_description({"kind": "s3", "bucket": "b", "profile": "work"})
    assert isinstance(named, S3Storage) and named.profile == "work"
    assert named.describe() == {"kind": "s3", "bucket": "b", "profile": "work"}
    session = boto3.session.Session(region_name="eu-west-3")
    assert S3Storage("b", session=session).client.meta.region_name == "eu-west-3"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    shared = S3Storage(s3_bucket, client=client)
    assert shared.client is client
    shared.put("k", b"v")
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"


def test_s3_listings_with_sizes_and_times_follow_every_page(moto_endpoint, s3_bucket):
    """iter_objects and iter_modified read S3's pages of 1,000 keys one after another (one
    LIST each), so a job of more tasks than a page is listed whole."""
    import time

    import boto3

    st = S3Storage(s3_bucket, region="us-east-1", endpoint_url=moto_endpoint)
    keys = [f"many/{i:05d}" for i in range(1001)]
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_bucket, Key=k, Body=b"12"), keys))
    client.put_object(Bucket=s3_bucket, Key="many/ZZX/deeper", Body=b"abc")
    assert list(st.iter_objects("many/")) == [(k, 2) for k in keys] + [("many/ZZX/deeper", 3)]
    assert st.request_counts == {"LIST": 2}
    assert list(st.iter_objects("many/", start_after="many/00999")) == [
        ("many/01000", 2), ("many/ZZX/deeper", 3)]
    assert st.request_counts == {"LIST": 3}
    modified = list(st.iter_modified("many/"))
    assert [k for k, _ in modified] == keys + ["many/ZZX/deeper"]
    assert all(abs(t - time.time()) < 600 for _, t in modified)
    assert st.request_counts == {"LIST": 5}


def test_put_parts_stores_the_parts_joined(any_storage):
    st = any_storage
    st.put_parts("p/joined", [b"ab", bytearray(b"cd"), b"", b"e"])
    assert st.get("p/joined") == b"abcde" and st.request_counts == {"PUT": 1, "GET": 1}


def test_prefixes_ending_in_x_are_cut_at_their_slash_only(any_storage):
    """A prefix loses its trailing "/" and nothing more (not a set of characters): jobs
    named like "...X/" list, show as children and are deleted like any other."""
    st = any_storage
    for k in ["p/boX/1", "p/boX/sub/2", "p/bo/3"]:
        st.put(k, b"-")
    assert st.list("p/boX/") == ["p/boX/1", "p/boX/sub/2"]
    assert st.children("p/boX/") == ["1", "sub"] and st.children("p/boX") == ["1", "sub"]
    assert st.delete_prefix("p/boX/") == 2
    assert st.list("p/") == ["p/bo/3"] and st.children("p/") == ["bo"]


@pytest.mark.parametrize("unnamed_files", [True, False], ids=["o_tmpfile", "portable"])
def test_racing_first_writes_one_wins_and_no_reader_sees_a_partial_object(
        tmp_path, monkeypatch, unnamed_files):
    """put_if_absent on Linux writes an unnamed file and links it in place; elsewhere (or
    where the kernel refuses) a named temporary file. Either way exactly one writer of a key
    wins, and a reader meanwhile finds nothing or one writer's complete bytes."""
    import threading

    from cloudbutton_executor import storage

    if unnamed_files and not storage._ANONYMOUS_FILES:
        pytest.skip("no O_TMPFILE or /proc here")
    monkeypatch.setattr(storage, "_ANONYMOUS_FILES", unnamed_files)
    st = LocalStorage(str(tmp_path))
    payloads = [bytes([i]) * (4 << 20) for i in range(6)]  # several writes per object
    for round_ in range(5):
        key = f"p/jobs/j/tasks/{round_:06d}/status.json"
        barrier, wins, seen, stop = threading.Barrier(len(payloads) + 1), [], [], threading.Event()

        def write(data, key=key, barrier=barrier, wins=wins):
            barrier.wait()
            wins.append((st.put_if_absent(key, data), data[:1]))

        def read(key=key, barrier=barrier, seen=seen, stop=stop):
            barrier.wait()
            while not stop.is_set():
                try:
                    seen.append(st.get(key))
                except NotFound:
                    pass

        reader = threading.Thread(target=read)
        writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
        for t in [reader, *writers]:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        reader.join()
        winners = [first for ok, first in wins if ok]
        assert len(wins) == len(payloads) and len(winners) == 1
        stored = st.get(key)
        assert stored == winners[0] * len(stored) and len(stored) == 4 << 20
        assert all(s == stored for s in seen)  # never partial, never another writer's
        assert os.listdir(os.path.dirname(os.path.join(st.root, key))) == ["status.json"]


def test_unnamed_files_refused_falls_back_to_named_temporary_files(tmp_path, monkeypatch):
    """A sandbox or filesystem that refuses to link an unnamed file (no /proc, EXDEV) gets
    the portable write, and the process stops trying."""
    import errno

    from cloudbutton_executor import storage

    if not storage._ANONYMOUS_FILES:
        pytest.skip("no O_TMPFILE or /proc here")
    real_link = os.link
    tried = []

    def link(src, dst, **kw):
        if str(src).startswith("/proc/self/fd/"):
            tried.append(dst)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(storage.os, "link", link)
    monkeypatch.setattr(storage, "_ANONYMOUS_FILES", True)
    st = LocalStorage(str(tmp_path))
    assert st.put_if_absent("p/a/status.json", b"first") is True
    assert st.put_if_absent("p/a/status.json", b"second") is False
    assert st.put_if_absent("p/b/status.json", b"other") is True
    assert st.get("p/a/status.json") == b"first" and st.get("p/b/status.json") == b"other"
    assert len(tried) == 1 and storage._ANONYMOUS_FILES is False  # tried once, then not
    assert sorted(os.listdir(tmp_path / "p" / "a")) == ["status.json"]  # no temp files
