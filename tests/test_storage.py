"""Both storages honour one contract; the executor runs unchanged on S3 (a real moto server)."""
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
