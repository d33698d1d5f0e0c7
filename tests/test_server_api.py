"""The server extension's REST API (`/cloudbutton/...`) on a real Jupyter server.

Jobs are made with the real executor (local worker processes) in a temp storage dir.
"""
import json
import time

import pytest
import tornado.httpclient

from cloudbutton_executor import Executor, protocol
from cloudbutton_executor.storage import LocalStorage

pytest_plugins = ("pytest_jupyter.jupyter_server",)


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"cloudbutton_jupyter": True}}}


@pytest.fixture
def cb_env(tmp_path, monkeypatch):
    storage_dir = tmp_path / "storage"
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", str(storage_dir))
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "conf" / "config.yaml"))
    return LocalStorage(str(storage_dir))


@pytest.fixture
def executor(cb_env):
    with Executor(workers=2, storage=cb_env, timeout=60) as ex:
        yield ex


def square(x):
    return x * x


def fails_on_three(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def sleepy(x):
    import time

    time.sleep(30)
    return x


def stored(storage, job_id):
    """A job's manifest and statuses, read from storage."""
    manifest = json.loads(storage.get(protocol.manifest_key("cloudbutton", job_id)))
    keys = storage.list(protocol.tasks_prefix("cloudbutton", job_id))
    return manifest, [json.loads(storage.get(k)) for k in keys if protocol.task_id_from_status_key(k)]


async def get_json(jp_fetch, *parts, **kwargs):
    response = await jp_fetch("cloudbutton", *parts, **kwargs)
    return response.code, json.loads(response.body)


async def expect_error(jp_fetch, code, *parts, **kwargs):
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await jp_fetch("cloudbutton", *parts, **kwargs)
    assert info.value.code == code, info.value.response.body
    body = info.value.response.body.decode()
    return json.loads(body).get("message", "") if body.startswith("{") else body


async def test_config_defaults_put_and_persist(jp_fetch, cb_env, tmp_path):
    code, conf = await get_json(jp_fetch, "config")
    assert code == 200 and conf["backend"] == "local" and conf["chunksize"] == 1
    new = {"backend": "local", "workers": 3, "memory_mb": 512, "timeout": 20, "chunksize": "auto",
           "retries": 1, "region": "eu-west-1", "bucket": "my-bucket",
           "lambda": {"function_name": "cb-worker"}}
    code, saved = await get_json(jp_fetch, "config", method="PUT", body=json.dumps(new))
    assert code == 200 and saved["workers"] == 3 and saved["chunksize"] == "auto"
    path = tmp_path / "conf" / "config.yaml"
    assert path.exists()
    import yaml

    on_disk = yaml.safe_load(path.read_text())
    # The executor's config layout: region/bucket at the top, the function under `lambda:`.
    assert on_disk["memory_mb"] == 512 and on_disk["region"] == "eu-west-1"
    assert on_disk["lambda"] == {"function_name": "cb-worker"}
    code, again = await get_json(jp_fetch, "config")
    assert again["timeout"] == 20 and again["retries"] == 1 and again["path"] == str(path)


@pytest.mark.parametrize("body, needle", [
    ({"backend": "gcp"}, "backend"),
    ({"workers": 0}, "workers"),
    ({"memory_mb": 64}, "memory_mb"),
    ({"chunksize": "some"}, "chunksize"),
    ({"colour": "red"}, "unknown config keys"),
    ({"backend": "lambda", "timeout": 1000}, "timeout"),
    ({"lambda": {"password": "x"}}, "unknown lambda key"),
    ({"lambda": {"memory": "big"}}, "lambda.memory"),
    ({"region": 5}, "region"),
    ([1, 2], "JSON object"),
])
async def test_put_config_rejects_bad_input(jp_fetch, cb_env, body, needle):
    message = await expect_error(jp_fetch, 400, "config", method="PUT", body=json.dumps(body))
    assert needle in message


async def test_put_config_keeps_keys_other_tools_wrote(jp_fetch, cb_env, tmp_path):
    import yaml

    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("prefix: team-a\nendpoints:\n  s3: http://127.0.0.1:9\n"
                    "lambda:\n  function_name: old\n  invoke_threads: 8\n")
    code, conf = await get_json(jp_fetch, "config")
    assert conf["lambda"] == {"function_name": "old", "invoke_threads": 8}
    await get_json(jp_fetch, "config", method="PUT",
                   body=json.dumps({"backend": "lambda", "lambda": {"function_name": "new"}}))
    on_disk = yaml.safe_load(path.read_text())
    assert on_disk["prefix"] == "team-a" and on_disk["endpoints"] == {"s3": "http://127.0.0.1:9"}
    assert on_disk["lambda"] == {"function_name": "new"} and on_disk["backend"] == "lambda"


async def test_put_config_rejects_non_json(jp_fetch, cb_env):
    message = await expect_error(jp_fetch, 400, "config", method="PUT", body="{not json")
    assert "JSON" in message


async def test_backend_status_local_and_lambda(jp_fetch, cb_env):
    code, st = await get_json(jp_fetch, "backend", "status")
    assert code == 200 and st["backend"] == "local" and st["ok"] is True
    assert st["storage"]["root"] == cb_env.root
    # Lambda without AWS: never a 500, the reason is shown.
    code, st = await get_json(jp_fetch, "backend", "status", params={"backend": "lambda"})
    assert code == 200 and st["backend"] == "lambda" and st["ok"] is False
    assert "no AWS region configured" in st["error"] and "config.yaml" in st["error"]
    # With a region but no credentials anywhere (the tests' environment has none).
    await get_json(jp_fetch, "config", method="PUT", body=json.dumps({"region": "eu-west-1"}))
    code, st = await get_json(jp_fetch, "backend", "status", params={"backend": "lambda"})
    assert code == 200 and st["ok"] is False and st["region"] == "eu-west-1"
    assert st["error"] == "NoCredentialsError: Unable to locate credentials", st
    await expect_error(jp_fetch, 400, "backend", "status", params={"backend": "gcp"})


async def test_unreachable_lambda_storage_is_503(jp_fetch, cb_env):
    """Jobs of the Lambda backend without AWS: 503, saying why (not a 500)."""
    await get_json(jp_fetch, "config", method="PUT", body=json.dumps({"backend": "lambda"}))
    message = await expect_error(jp_fetch, 503, "jobs")
    assert message.startswith("the Lambda backend's storage is not reachable: ConfigError: "
                              "no AWS region configured")


async def test_jobs_list_and_detail(jp_fetch, executor):
    code, jobs = await get_json(jp_fetch, "jobs")
    assert code == 200 and jobs == []
    first = executor.map(square, range(6), label="analysis.ipynb")
    assert first.result(timeout=60) == [x * x for x in range(6)]
    second = executor.map(fails_on_three, range(5), chunksize=2)
    second.wait(60)

    code, jobs = await get_json(jp_fetch, "jobs")
    assert [j["job_id"] for j in jobs] == [second.job_id, first.job_id]  # newest first
    done, failed = jobs[1], jobs[0]
    assert done["state"] == "done" and done["counts"]["done"] == 6 and done["progress"] == 1.0
    assert done["notebook"] == "analysis.ipynb" and done["backend"] == "local"
    assert done["finished"] and done["cost_usd"] > 0  # the cost itself: see the cost model's tests
    # The duration, from what the job stored: created -> last result stored. (GB-seconds
    # and cost: the cost model's own tests compare job, widget and panel.)
    manifest, statuses = stored(executor.storage, first.job_id)
    assert done["duration_s"] == pytest.approx(
        max(st["stats"]["result_stored"] for st in statuses) - manifest["created"])
    assert failed["state"] == "failed" and failed["counts"] == {
        "done": 4, "failed": 1, "pending": 0, "cancelled": 0, "lost": 0}

    code, detail = await get_json(jp_fetch, "jobs", second.job_id)
    assert code == 200 and detail["tasks"] == 3
    assert [t["task"] for t in detail["tasks_detail"]] == ["000000-000002", "000002-000004",
                                                          "000004-000005"]
    assert detail["tasks_detail"][1]["failed"] == 1
    assert all(t["t"]["worker_start"] is not None for t in detail["tasks_detail"])
    (failure,) = detail["failures"]
    assert failure["i"] == 3 and failure["type"] == "ValueError" and "bad item 3" in failure["message"]
    assert "fails_on_three" in failure["traceback"]

    code, jobs = await get_json(jp_fetch, "jobs", params={"limit": "1"})
    assert len(jobs) == 1
    await expect_error(jp_fetch, 400, "jobs", params={"limit": "many"})
    await expect_error(jp_fetch, 400, "jobs", params={"limit": "0"})


async def test_job_id_validation_and_unknown_job(jp_fetch, cb_env):
    assert "must be a job id" in await expect_error(jp_fetch, 400, "jobs", "nonsense")
    assert "must be a job id" in await expect_error(jp_fetch, 400, "jobs", "..", "cancel", method="POST",
                                                body="")
    unknown = "20240101-000000-abcdef"
    assert unknown in await expect_error(jp_fetch, 404, "jobs", unknown)
    await expect_error(jp_fetch, 404, "jobs", unknown, "cancel", method="POST", body="")


async def test_cancel_writes_marker_and_the_kernel_side_executor_stops(jp_fetch, executor, cb_env):
    job = executor.map(sleepy, range(6))
    deadline = time.time() + 20
    while not cb_env.exists(protocol.manifest_key("cloudbutton", job.job_id)):
        assert time.time() < deadline
        time.sleep(0.05)
    code, jobs = await get_json(jp_fetch, "jobs")
    assert jobs[0]["job_id"] == job.job_id and jobs[0]["state"] == "running"
    assert not jobs[0]["finished"] and jobs[0]["counts"]["pending"] == 6

    t0 = time.time()
    code, out = await get_json(jp_fetch, "jobs", job.job_id, "cancel", method="POST", body="")
    assert code == 200 and out == {"job_id": job.job_id, "cancelled": True, "already": False}
    assert cb_env.exists(protocol.cancel_key("cloudbutton", job.job_id))
    # The executor polls for the marker (every 0.5 s) and cancels its job.
    assert job.wait(10), "the executor did not see the cancel marker"
    assert job.cancelled and time.time() - t0 < 10

    code, detail = await get_json(jp_fetch, "jobs", job.job_id)
    assert detail["state"] == "cancelled" and detail["counts"]["cancelled"] == 6
    code, again = await get_json(jp_fetch, "jobs", job.job_id, "cancel", method="POST", body="")
    assert again["already"] is True


async def test_cancel_finished_job_is_a_conflict(jp_fetch, executor):
    job = executor.map(square, range(2))
    job.result(timeout=60)
    assert "already finished" in await expect_error(jp_fetch, 409, "jobs", job.job_id, "cancel",
                                                     method="POST", body="")


def test_manager_without_server(tmp_path, monkeypatch):
    """The manager is plain Python: usable (and tested) without tornado."""
    from cloudbutton_jupyter.manager import CloudManager, InvalidInput

    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "c.yaml"))
    storage = LocalStorage(str(tmp_path / "s"))
    m = CloudManager(storage=storage)
    assert m.list_jobs() == []
    with pytest.raises(InvalidInput):
        m.job_detail("../../etc")
    # A job whose kernel died long ago ends as lost, not running forever.
    job_id = "20200101-000000-abcdef"
    storage.put(protocol.manifest_key("cloudbutton", job_id), json.dumps(
        {"job_id": job_id, "created": 1.0, "n_items": 3, "timeout": 1, "memory_mb": 1024,
         "backend": "local", "function": "f", "label": None}).encode())
    (job,) = m.list_jobs()
    assert job["state"] == "lost" and job["counts"]["lost"] == 3


def test_polling_a_finished_job_costs_one_list(tmp_path, monkeypatch):
    """On S3 every request costs: a finished job's manifest and statuses are read once."""
    from cloudbutton_jupyter.manager import CloudManager

    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "c.yaml"))
    storage = LocalStorage(str(tmp_path / "s"))
    job_id = "20240101-000000-abcdef"
    storage.put(protocol.manifest_key("cloudbutton", job_id), json.dumps(
        {"job_id": job_id, "created": 100.0, "n_items": 2, "timeout": 10, "memory_mb": 2048,
         "backend": "local", "function": "f", "label": "/home/u/nb.ipynb"}).encode())
    storage.put(protocol.status_key("cloudbutton", job_id, "000000-000002"), json.dumps(
        {"task": "000000-000002", "state": "done",
         "items": [{"i": 0, "ok": True}, {"i": 1, "ok": True}],
         "stats": {"worker_start": 101.0, "result_stored": 103.0}}).encode())
    m = CloudManager(storage=storage)
    (job,) = m.list_jobs()
    assert job["state"] == "done" and job["duration_s"] == 3.0 and job["notebook"] == "/home/u/nb.ipynb"
    # 2 s at 2 GB, plus one request.
    assert job["cost_usd"] == pytest.approx(4 * 0.0000166667 + 0.2e-6)
    before = sum(storage.request_counts.values())
    assert m.list_jobs() == [job]
    assert sum(storage.request_counts.values()) - before == 1


def test_load_ext_delegates_to_the_magics(monkeypatch):
    """`%load_ext cloudbutton_jupyter` (what the panel sends) registers the %%cloud magics."""
    from IPython.core.interactiveshell import InteractiveShell

    import cloudbutton_jupyter

    shell = InteractiveShell.instance()
    try:
        cloudbutton_jupyter.load_ipython_extension(shell)
        assert "cloud" in shell.magics_manager.magics["cell"]
        assert cloudbutton_jupyter._jupyter_labextension_paths() == [
            {"src": "labextension", "dest": "cloudbutton-jupyter"}]
    finally:
        InteractiveShell.clear_instance()
