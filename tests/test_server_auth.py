"""Every REST route of the server extension refuses a request without a valid token, and a
refused request changes nothing: no config written, no cancel marker.

Four kinds of client per route and method: none (no credentials at all), an ``_xsrf`` cookie
fetched from the server and echoed in the header (what a page on another origin cannot do,
but any script can: it passes tornado's XSRF check, so only authentication stands in the
way), a wrong token (with the same XSRF pair, so the token is what is judged) and the
server's token. Requests go over real HTTP to a real Jupyter server (pytest-jupyter).
"""
import json
import time
import urllib.parse

import pytest

from cloudbutton_executor import protocol
from cloudbutton_executor.storage import LocalStorage

pytest_plugins = ("pytest_jupyter.jupyter_server",)

JOB = "20240101-000000123-abcdef"


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"cloudbutton_jupyter": True}}}


@pytest.fixture
def job_storage(tmp_path, monkeypatch):
    """The server's job storage, holding one running job (its manifest, no statuses yet)."""
    storage_dir = tmp_path / "storage"
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", str(storage_dir))
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "conf" / "config.yaml"))
    storage = LocalStorage(str(storage_dir))
    storage.put(protocol.manifest_key("cloudbutton", JOB), json.dumps(
        {"job_id": JOB, "created": time.time(), "n_items": 4, "timeout": 300, "memory_mb": 1024,
         "backend": "local", "function": "f", "label": "nb.ipynb"}).encode())
    return storage


@pytest.fixture
def request_as(jp_serverapp, http_server_client, jp_base_url, jp_auth_header):
    """``request_as(who, method, *parts)`` -> (status code, body), who in CLIENTS."""

    async def xsrf_pair():
        # Any page the server renders for an anonymous client sets the cookie.
        resp = await http_server_client.fetch(f"{jp_base_url}login", raise_error=False)
        cookies = [c.split(";")[0] for c in resp.headers.get_list("Set-Cookie")]
        token = next(c.split("=", 1)[1] for c in cookies if c.startswith("_xsrf="))
        return {"Cookie": f"_xsrf={token}", "X-XSRFToken": urllib.parse.unquote(token)}

    async def fetch(who, method, *parts, body=None):
        headers = {}
        if who in ("xsrf-only", "wrong-token"):
            headers.update(await xsrf_pair())
        if who == "wrong-token":
            headers["Authorization"] = "token not-the-servers-token"
        if who == "good-token":
            headers.update(jp_auth_header)
        if method in ("PUT", "POST") and body is None:
            body = ""
        url = jp_base_url + "cloudbutton/" + "/".join(parts)
        resp = await http_server_client.fetch(url, method=method, headers=headers, body=body,
                                              raise_error=False, follow_redirects=False)
        return resp.code, resp.body

    return fetch


REFUSED = ("none", "xsrf-only", "wrong-token")
NEW_CONFIG = json.dumps({"backend": "local", "workers": 3})


async def test_xsrf_pair_is_real(request_as, job_storage):
    """The xsrf-only client passes the XSRF check: its POST is refused for want of a
    token, not of a cookie (else the cancel case below would prove nothing)."""
    code, body = await request_as("xsrf-only", "POST", "jobs", JOB, "cancel")
    assert code == 403
    assert b"XSRF" not in body and b"xsrf" not in body, body


@pytest.mark.parametrize("who", REFUSED)
async def test_get_config_refused(request_as, job_storage, who):
    code, body = await request_as(who, "GET", "config")
    assert code == 403 and b'"backend"' not in body


@pytest.mark.parametrize("who", REFUSED)
async def test_put_config_refused_and_nothing_written(request_as, job_storage, tmp_path, who):
    code, _ = await request_as(who, "PUT", "config", body=NEW_CONFIG)
    assert code == 403
    assert not (tmp_path / "conf").exists()


@pytest.mark.parametrize("who", REFUSED)
async def test_backend_status_refused(request_as, job_storage, who):
    code, body = await request_as(who, "GET", "backend", "status")
    assert code == 403 and b'"ok"' not in body


@pytest.mark.parametrize("who", REFUSED)
async def test_jobs_list_refused(request_as, job_storage, who):
    code, body = await request_as(who, "GET", "jobs")
    assert code == 403 and JOB.encode() not in body


@pytest.mark.parametrize("who", REFUSED)
async def test_job_detail_refused(request_as, job_storage, who):
    code, body = await request_as(who, "GET", "jobs", JOB)
    assert code == 403 and b"tasks_detail" not in body


@pytest.mark.parametrize("who", REFUSED)
async def test_cancel_refused_and_no_marker_written(request_as, job_storage, who):
    code, _ = await request_as(who, "POST", "jobs", JOB, "cancel")
    assert code == 403
    assert not job_storage.exists(protocol.cancel_key("cloudbutton", JOB))
    assert job_storage.list(protocol.job_prefix("cloudbutton", JOB) + "/") == [
        protocol.manifest_key("cloudbutton", JOB)]


async def test_every_route_answers_the_token(request_as, job_storage, tmp_path):
    """The same requests with the server's token do what they are for."""
    code, body = await request_as("good-token", "GET", "config")
    assert code == 200 and json.loads(body)["backend"] == "local"
    code, body = await request_as("good-token", "GET", "backend", "status")
    assert code == 200 and json.loads(body)["ok"] is True
    code, body = await request_as("good-token", "GET", "jobs")
    assert code == 200 and [j["job_id"] for j in json.loads(body)] == [JOB]
    code, body = await request_as("good-token", "GET", "jobs", JOB)
    assert code == 200 and json.loads(body)["state"] == "running"
    code, body = await request_as("good-token", "PUT", "config", body=NEW_CONFIG)
    assert code == 200 and json.loads(body)["workers"] == 3
    assert "workers: 3" in (tmp_path / "conf" / "config.yaml").read_text()
    code, body = await request_as("good-token", "POST", "jobs", JOB, "cancel")
    assert code == 200 and json.loads(body) == {"job_id": JOB, "cancelled": True, "already": False}
    assert job_storage.exists(protocol.cancel_key("cloudbutton", JOB))


def test_every_route_is_covered():
    """A route added to the extension without a case here fails this test."""
    from cloudbutton_jupyter import handlers

    class App:
        def __init__(self):
            self.settings = {"base_url": "/"}
            self.routes = []

        def add_handlers(self, host, rules):
            self.routes += [r[0] for r in rules]

    app = App()
    handlers.setup_handlers(app, manager=object())
    assert sorted(app.routes) == sorted([
        "/cloudbutton/config", "/cloudbutton/backend/status", "/cloudbutton/jobs",
        f"/cloudbutton/jobs/{handlers.JOB_ID}", f"/cloudbutton/jobs/{handlers.JOB_ID}/cancel"])
    methods = {name: sorted(m for m in ("get", "put", "post", "delete", "patch")
                            if m in vars(cls))
               for name, cls in vars(handlers).items()
               if isinstance(cls, type) and issubclass(cls, handlers.BaseHandler)
               and cls is not handlers.BaseHandler}
    assert methods == {"ConfigHandler": ["get", "put"], "BackendStatusHandler": ["get"],
                       "JobsHandler": ["get"], "JobHandler": ["get"], "CancelHandler": ["post"]}
