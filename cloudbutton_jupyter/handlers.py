"""Tiny REST handlers under ``/cloudbutton/``; the work is in ``CloudManager``."""
from __future__ import annotations

import json

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from .manager import CloudManager, Conflict, InvalidInput, JobNotFound, Unavailable

AUTH_RESOURCE = "cloudbutton"
JOB_ID = r"(?P<job_id>[^/]+)"  # any segment: the manager answers a bad id with 400, not a bare 404


class BaseHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, manager: CloudManager):
        self.manager = manager

    async def call(self, fn, *args):
        """Run a manager call off the event loop (storage may be S3) and map its errors to HTTP."""
        try:
            result = await IOLoop.current().run_in_executor(None, fn, *args)
        except InvalidInput as err:
            raise tornado.web.HTTPError(400, str(err)) from err
        except JobNotFound as err:
            raise tornado.web.HTTPError(404, f"no job {err.args[0]}") from err
        except Conflict as err:
            raise tornado.web.HTTPError(409, str(err)) from err
        except Unavailable as err:
            raise tornado.web.HTTPError(503, str(err)) from err
        self.finish(json.dumps(result))


class ConfigHandler(BaseHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self):
        await self.call(self.manager.get_config)

    @tornado.web.authenticated
    @authorized
    async def put(self):
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as err:
            raise tornado.web.HTTPError(400, f"the body is not JSON: {err}") from err
        await self.call(self.manager.put_config, body)


class BackendStatusHandler(BaseHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self):
        await self.call(self.manager.backend_status, self.get_argument("backend", None))


class JobsHandler(BaseHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self):
        await self.call(self.manager.list_jobs, self.get_argument("limit", "30"))


class JobHandler(BaseHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self, job_id):
        await self.call(self.manager.job_detail, job_id)


class CancelHandler(BaseHandler):
    @tornado.web.authenticated
    @authorized
    async def post(self, job_id):
        await self.call(self.manager.cancel, job_id)


def setup_handlers(web_app, manager: CloudManager | None = None) -> None:
    manager = manager or CloudManager()
    base = url_path_join(web_app.settings["base_url"], "cloudbutton")
    kwargs = {"manager": manager}
    web_app.add_handlers(".*$", [
        (url_path_join(base, "config"), ConfigHandler, kwargs),
        (url_path_join(base, "backend", "status"), BackendStatusHandler, kwargs),
        (url_path_join(base, "jobs"), JobsHandler, kwargs),
        (url_path_join(base, "jobs", JOB_ID), JobHandler, kwargs),
        (url_path_join(base, "jobs", JOB_ID, "cancel"), CancelHandler, kwargs),
    ])
