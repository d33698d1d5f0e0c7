"""What the server extension's manager accepts and writes (plain Python, no server): the
config a client PUTs, job ids, and the cancel marker. The handlers only map its errors
to 400/404/409 (test_server_api.py, test_server_auth.py)."""
import json
import time

import pytest
import yaml

from cloudbutton_executor import protocol
from cloudbutton_executor.storage import LocalStorage
from cloudbutton_jupyter.manager import CloudManager, Conflict, InvalidInput, JobNotFound


@pytest.fixture
def manager(tmp_path):
    return CloudManager(storage=LocalStorage(str(tmp_path / "s")),
                        config_file=str(tmp_path / "conf" / "config.yaml"))


def on_disk(manager):
    with open(manager.config_file) as f:
        return yaml.safe_load(f)


DEFAULTS = {"backend": "local", "workers": None, "memory_mb": None, "timeout": None,
            "chunksize": 1, "retries": 0, "region": None, "profile": None, "bucket": None,
            "lambda": {}}


def test_defaults_and_a_full_round_trip(manager):
    assert manager.get_config() == {**DEFAULTS, "path": manager.config_file}
    full = {"backend": "lambda", "workers": 10000, "memory_mb": 10240, "timeout": 900,
            "chunksize": "auto", "retries": 10, "region": " eu-west-1 ", "profile": "p",
            "bucket": "my-bucket", "lambda": {"function_name": " fn ", "role_name": "r",
                                              "layer_name": "l", "memory": 128, "timeout": 2,
                                              "workers": 3, "invoke_threads": 4}}
    out = manager.put_config(full)
    expected = {**full, "timeout": 900.0, "region": "eu-west-1",
                "lambda": {**full["lambda"], "function_name": "fn"}}
    assert {k: v for k, v in out.items() if k not in ("path", "warning")} == expected
    assert on_disk(manager) == expected
    assert isinstance(on_disk(manager)["timeout"], float)
    assert manager.get_config()["lambda"]["function_name"] == "fn"


@pytest.mark.parametrize("body, message", [
    ([1], "the config must be a JSON object"),
    ("local", "the config must be a JSON object"),
    ({"colour": 1, "b": 2}, "unknown config keys: colour, b; known: backend, workers"),
    ({"backend": "gcp"}, "backend must be 'local' or 'lambda', got 'gcp'"),
    ({"workers": 0}, "workers must be an integer from 1 to 10000, got 0"),
    ({"workers": 10001}, "workers must be an integer from 1 to 10000, got 10001"),
    ({"workers": 2.5}, "workers must be an integer from 1 to 10000, got 2.5"),
    ({"workers": True}, "workers must be an integer from 1 to 10000, got True"),
    ({"memory_mb": 127}, "memory_mb must be an integer from 128 to 10240, got 127"),
    ({"timeout": 0}, "timeout must be a number from 0.001 to 86400, got 0"),
    ({"backend": "lambda", "timeout": 900.5}, "timeout must be at most 900 s on Lambda, got 900.5"),
    ({"chunksize": "some"}, "chunksize must be a positive integer or 'auto', got 'some'"),
    ({"retries": 11}, "retries must be an integer from 0 to 10, got 11"),
    ({"region": 5}, "region must be an AWS region name like eu-west-1, got 5"),
    ({"bucket": "B"}, "bucket must be an S3 bucket name"),
    ({"lambda": ["x"]}, "lambda must be an object, got list"),
    ({"lambda": {"password": "x"}}, "unknown lambda keys: lambda.password (credentials do not belong"),
    ({"lambda": {"memory": 0}}, "lambda.memory must be an integer from 128 to 10240, got 0"),
])
def test_bad_config_is_named_and_nothing_is_written(manager, body, message):
    with pytest.raises(InvalidInput) as info:
        manager.put_config(body)
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(FileNotFoundError):
        on_disk(manager)


@pytest.mark.parametrize("body, saved", [
    ({"workers": 1, "memory_mb": 128, "timeout": 0.001, "retries": 0},
     {"workers": 1, "memory_mb": 128, "timeout": 0.001, "chunksize": 1}),
    ({"workers": 4.0, "timeout": 86400, "chunksize": 8, "retries": 3},
     {"workers": 4, "timeout": 86400.0, "chunksize": 8, "retries": 3}),  # > 900 s when local
    ({"workers": "", "memory_mb": None, "chunksize": None, "retries": None, "region": "  "},
     {"chunksize": 1}),  # empty fields: unset
    ({"lambda": {"function_name": "", "memory": None, "timeout": 900}},
     {"chunksize": 1, "lambda": {"timeout": 900}}),
])
def test_edge_values_accepted(manager, body, saved):
    manager.put_config(body)
    assert on_disk(manager) == {"backend": "local", "retries": 0, **saved}


def test_keys_keep_the_panels_order_and_a_bare_file_name_works(tmp_path, monkeypatch):
    m = CloudManager(storage=LocalStorage(str(tmp_path / "s")), config_file="config.yaml")
    monkeypatch.chdir(tmp_path)
    m.put_config({"retries": 2, "backend": "local", "lambda": {"memory": 256}})
    assert list(on_disk(m)) == ["backend", "chunksize", "retries", "lambda"]  # not sorted
    assert (tmp_path / "config.yaml").exists()


def test_put_keeps_what_other_tools_wrote_and_drops_what_was_cleared(manager, tmp_path):
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("prefix: team\nendpoints: {s3: 'http://127.0.0.1:9'}\nworkers: 7\n"
                    "lambda: {function_name: old, memory: 512, invoke_threads: 8, poll_interval: 0.5}\n")
    out = manager.put_config({"workers": None, "lambda": {"function_name": "new"},
                              "path": "/elsewhere", "warning": "ignored"})
    assert out["path"] == str(path) and "warning" not in out
    assert on_disk(manager) == {"prefix": "team", "endpoints": {"s3": "http://127.0.0.1:9"},
                                "backend": "local", "chunksize": 1, "retries": 0,
                                "lambda": {"function_name": "new", "poll_interval": 0.5}}
    manager.put_config({})  # every lambda key cleared: the section goes when nothing is left
    assert "lambda" in on_disk(manager)  # poll_interval is not ours to clear
    path.write_text("lambda: {memory: 512}\n")
    manager.put_config({})
    assert "lambda" not in on_disk(manager)
    assert not list(path.parent.glob("*.tmp"))


def test_a_file_the_executor_cannot_read_is_saved_with_a_warning(manager, tmp_path):
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("lambda: {nonsense: 1}\n")  # kept (not the panel's), but the executor refuses it
    out = manager.put_config({"backend": "local"})
    assert out["warning"].startswith("saved, but the Lambda backend cannot read the file:")
    assert "lambda.nonsense" in out["warning"]
    # A bad hand-edited file does not lock the panel out: defaults, and why.
    path.write_text("workers: 0\n")
    conf = manager.get_config()
    assert conf["workers"] is None and "workers must be an integer from 1" in conf["warning"]
    path.write_text("[not, a, mapping]\n")
    with pytest.raises(InvalidInput, match="config.yaml does not hold a mapping"):
        manager.get_config()


@pytest.mark.parametrize("job_id", [None, 5, "", "nonsense", "../../etc", "20240101-000000-ABCDEF",
                                    "20240101-000000-abcdef/..", "20240101-0000001-abcdef"])
def test_job_ids_are_checked(manager, job_id):
    for call in (manager.job_detail, manager.cancel, CloudManager.check_job_id):
        with pytest.raises(InvalidInput, match="job_id must be a job id"):
            call(job_id)


def write_job(storage, job_id, *, created=None, n_items=2, done=0):
    storage.put(protocol.manifest_key("cloudbutton", job_id), json.dumps(
        {"job_id": job_id, "created": created or time.time(), "n_items": n_items, "timeout": 60,
         "memory_mb": 1024, "backend": "local", "function": "f", "label": None}).encode())
    for i in range(done):
        tid = protocol.task_id(i, i + 1, n_items)
        storage.put(protocol.status_key("cloudbutton", job_id, tid), json.dumps(
            {"task": tid, "state": "done", "items": {}, "stats": {}}).encode())


def test_cancel_writes_one_marker_and_refuses_what_it_cannot_cancel(manager):
    st = manager._storage
    running, finished = "20240101-000000123-abcdef", "20240101-000000124-abcdef"
    assert CloudManager.check_job_id(running) == running
    with pytest.raises(JobNotFound):
        manager.cancel(running)
    write_job(st, running, done=1)
    write_job(st, finished, done=2)
    t0 = time.time()
    assert manager.cancel(running) == {"job_id": running, "cancelled": True, "already": False}
    marker = json.loads(st.get(protocol.cancel_key("cloudbutton", running)))
    assert marker["by"] == "jupyter-panel" and t0 <= marker["at"] <= time.time()
    assert manager.cancel(running)["already"] is True
    assert json.loads(st.get(protocol.cancel_key("cloudbutton", running))) == marker  # first wins
    with pytest.raises(Conflict, match=f"job {finished} already finished \\(done\\)"):
        manager.cancel(finished)
    assert not st.exists(protocol.cancel_key("cloudbutton", finished))
    failed = "20240101-000000125-abcdef"
    write_job(st, failed, n_items=1)
    tid = protocol.task_id(0, 1, 1)
    st.put(protocol.status_key("cloudbutton", failed, tid), json.dumps(
        {"task": tid, "state": "error", "items": {"errors": {"0": {"type": "ValueError"}}},
         "stats": {}}).encode())
    with pytest.raises(Conflict, match="already finished \\(failed\\)"):
        manager.cancel(failed)
