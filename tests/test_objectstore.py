"""The storage API for tasks and the host (Lithops' ``Storage``): the same calls and the same
error types on local directories and on S3 (a real moto server over HTTP), inside tasks
(the task's own job storage) and on the host."""
import hashlib

import pytest

from cloudbutton_executor import CloudObject, Executor, NoSuchBucket, NotFound, ObjectStorage
from cloudbutton_executor.errors import IntegrityError
from cloudbutton_executor.storage import LocalStorage, S3Storage

REGION = "us-east-1"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An ObjectStorage and the name of an existing bucket in it."""
    if request.param == "local":
        (tmp_path / "buck").mkdir()
        return ObjectStorage("local", root=str(tmp_path)), "buck"
    endpoint = request.getfixturevalue("moto_endpoint")
    return (ObjectStorage("s3", region=REGION, endpoint_url=endpoint),
            request.getfixturevalue("s3_bucket"))


def test_put_get_ranges_head_list_delete(store):
    st, bucket = store
    st.put_object(bucket, "a/one.txt", b"0123456789")
    st.put_object(bucket, "a/two.txt", "text is stored as utf-8 ✓")
    st.put_object(bucket, "b/three.bin", __import__("io").BytesIO(b"\x00\x01"))
    assert st.get_object(bucket, "a/one.txt") == b"0123456789"
    assert st.get_object(bucket, "a/two.txt").decode() == "text is stored as utf-8 ✓"
    # ranged reads: Python's half-open ranges, and Lithops' inclusive HTTP ranges
    assert st.get_object(bucket, "a/one.txt", byte_range=(2, 5)) == b"234"
    assert st.get_object(bucket, "a/one.txt", byte_range=(7, None)) == b"789"
    assert st.get_object(bucket, "a/one.txt", extra_get_args={"Range": "bytes=2-5"}) == b"2345"
    assert st.get_object(bucket, "a/one.txt", extra_get_args={"Range": "bytes=8-"}) == b"89"
    with st.get_object(bucket, "a/one.txt", stream=True, byte_range=(3, 6)) as f:
        assert f.read() == b"345"
    assert st.head_object(bucket, "a/one.txt")["ContentLength"] == 10
    assert st.list_keys(bucket, "a/") == ["a/one.txt", "a/two.txt"]
    assert st.list_objects(bucket) == [{"Key": "a/one.txt", "Size": 10},
                                       {"Key": "a/two.txt", "Size": len("text is stored as utf-8 ✓".encode())},
                                       {"Key": "b/three.bin", "Size": 2}]
    st.put_object(bucket, "a/one.txt", b"replaced")
    assert st.get_object(bucket, "a/one.txt") == b"replaced"
    st.delete_object(bucket, "a/one.txt")
    st.delete_objects(bucket, ["a/two.txt", "never/was.txt"])  # an absent key is no error
    assert st.list_keys(bucket) == ["b/three.bin"]


def test_same_error_types_on_both_storages(store):
    st, bucket = store
    with pytest.raises(NotFound, match="absent.txt"):
        st.get_object(bucket, "absent.txt")
    with pytest.raises(NotFound, match="absent.txt"):
        st.get_object(bucket, "absent.txt", stream=True)
    with pytest.raises(NotFound, match="absent.txt"):
        st.head_object(bucket, "absent.txt")
    missing = "no-such-bucket-anywhere"
    for call in (lambda: st.get_object(missing, "k"), lambda: st.head_object(missing, "k"),
                 lambda: st.put_object(missing, "k", b"x"), lambda: st.list_keys(missing)):
        with pytest.raises(NoSuchBucket, match=missing):
            call()
    with pytest.raises(ValueError, match="Range must read"):
        st.get_object(bucket, "k", extra_get_args={"Range": "rows=1-2"})
    with pytest.raises(TypeError, match="bytes, str or a file-like"):
        st.put_object(bucket, "k", 12)


def test_cloudobjects_are_checked_against_their_sha256(store):
    st, bucket = store
    ref = st.put_cloudobject(b"a large result", bucket=bucket)
    assert ref.size == 14 and ref.sha256 == hashlib.sha256(b"a large result").hexdigest()
    assert st.get_cloudobject(ref) == b"a large result"
    assert st.get_cloudobject(ref, stream=True).read() == b"a large result"
    st.put_object(bucket, ref.key, b"something else")  # replaced behind the reference's back
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        st.get_cloudobject(ref)
    st.delete_cloudobject(ref)
    with pytest.raises(NotFound):
        st.get_cloudobject(ref)


def test_a_local_bucket_is_one_directory_name(tmp_path):
    st = ObjectStorage("local", root=str(tmp_path))
    for bad in ("../escape", "a/b", ".."):
        with pytest.raises(ValueError, match="one directory name"):
            st.put_object(bad, "k", b"x")
    with pytest.raises(ValueError, match="root="):
        ObjectStorage("local")
    with pytest.raises(ValueError, match="'s3' or 'local'"):
        ObjectStorage("gcs", bucket="b")


# Inside tasks: the task's own job storage -------------------------------------------------------
def storing_task(x, storage):
    """Lithops' reserved parameter name ``storage``: the task's ObjectStorage."""
    ref = storage.put_cloudobject(f"value {x}".encode())
    return ref, storage.get_cloudobject(ref)


@pytest.fixture(params=["local", "s3"])
def job_storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(str(tmp_path / "jobs"))
    return S3Storage(request.getfixturevalue("s3_bucket"), region=REGION,
                     endpoint_url=request.getfixturevalue("moto_endpoint"))


def test_tasks_store_results_by_reference_beside_their_status(job_storage):
    with Executor(workers=2, storage=job_storage, prefix="cb") as ex:
        job = ex.map(storing_task, [1, 2, 3])
        out = job.result(timeout=60)
        host = ex.object_storage()
        for x, (ref, echoed) in zip([1, 2, 3], out):
            assert isinstance(ref, CloudObject) and echoed == f"value {x}".encode()
            # under the task's own prefix (the only place a Lambda worker may write) ...
            assert f"cb/jobs/{job.job_id}/tasks/" in ref.key
            # ... and read back on the host through the same API
            assert host.get_cloudobject(ref) == f"value {x}".encode()
        for f, x in zip(job, [1, 2, 3]):  # what it read back counts in its read throughput
            assert f.stats["read_bytes"] == len(f"value {x}") and f.stats["read_s"] > 0


def test_object_storage_in_a_task_without_the_parameter(job_storage):
    def uses_the_constructor(x):
        st = ObjectStorage()  # inside a task: the task's job storage
        ref = st.put_cloudobject(b"%d" % x)
        return st.describe()["backend"], ref.key

    with Executor(workers=1, storage=job_storage, prefix="cb") as ex:
        backend, key = ex.map(uses_the_constructor, [7]).result(timeout=60)[0]
    assert backend == ("local" if isinstance(job_storage, LocalStorage) else "s3")
    assert key.startswith("cb/jobs/")


def test_on_the_host_object_storage_reads_the_config(moto_endpoint, s3_bucket, tmp_path, monkeypatch):
    import yaml

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"endpoints": {"s3": moto_endpoint}, "region": REGION,
                                   "bucket": s3_bucket}))
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(cfg))
    st = ObjectStorage()
    assert st.bucket == s3_bucket and st.endpoint_url == moto_endpoint
    ref = st.put_cloudobject(b"from the host")
    assert ref.bucket == s3_bucket and st.get_object(s3_bucket, ref.key) == b"from the host"
