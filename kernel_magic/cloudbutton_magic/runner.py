"""The real work behind the magics: evaluate, capture, submit, watch, collect.

Kept apart from IPython's magic machinery so it can be driven directly: it
needs only an IPython shell (for ``user_ns``, ``ev`` and ``transform_cell``).
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime
import os
import sys
import time
import types
from dataclasses import dataclass, field

from IPython.core.error import UsageError

from cloudbutton_executor import (Executor, NotFound, SerializationError, catalog, config, largevalues,
                                  protocol)
from cloudbutton_executor import cache as result_cache
from cloudbutton_executor.cell import CellTask
from cloudbutton_executor.datamap import is_location
from cloudbutton_executor.errors import JobCancelled
from cloudbutton_executor.interrupt import cancel_jobs

from . import capture as cap


def file_settings() -> dict:
    """Run defaults from the config file the Jupyter panel writes and from the
    environment (read at every run); a bad one is reported and ignored."""
    path = config.config_path()
    try:
        env = config.env_run_settings(os.environ)
    except config.ConfigError as err:
        print(f"cloudbutton: ignoring the environment: {err}")
        env = {}
    if not os.path.exists(path):
        return env
    try:
        return {**config.from_dict(config.read_file(path), path).defaults, **env}
    except config.ConfigError as err:  # a broken config file must be reported, not crash the run
        print(f"cloudbutton: ignoring the config file: {err}")
        return env


def notebook_label(shell) -> str | None:
    """The notebook's path when the kernel was started by a Jupyter server session."""
    return os.environ.get("JPY_SESSION_NAME") or shell.user_ns.get("__session__") or None


def body_first_line(shell) -> int:
    """The line number the magic's body has in the cell the user sees: 2 under a typed
    ``%%cloud`` line; what the Cloud panel says (its execute request's metadata) when it
    runs a cell that has no magic line of its own."""
    kernel = getattr(shell, "kernel", None)
    value = None
    if kernel is not None:  # terminal IPython has none
        try:
            value = (kernel.get_parent() or {}).get("metadata", {}).get("cloudbutton_first_line")
        except Exception:  # another kernel implementation
            value = None
    return value if isinstance(value, int) and value >= 1 else 2


@dataclass
class MapRequest:
    iterable: str
    name: str | None = "item"
    func: str | None = None        # line form: a function already defined
    body: str | None = None        # cell form: the cell's code
    out: str = "results"
    options: dict = field(default_factory=dict)
    noblock: bool = False
    dry_run: bool = False
    raise_: bool = False
    data_options: dict = field(default_factory=dict)  # obj_chunk_size / obj_chunk_number


class CloudRunner:
    def __init__(self, shell):
        self.shell = shell
        self.overrides: dict = {}     # %cloud config key=value, for this session
        self.jobs: dict = {}          # this kernel's jobs by id
        self._executors: dict = {}

    # Settings -----------------------------------------------------------------
    def settings(self, **cli) -> dict:
        merged = {**config.run_defaults(), **file_settings(), **self.overrides}
        merged.update({k: v for k, v in cli.items() if v is not None})
        try:
            return config.check_run(merged)
        except config.ConfigError as err:
            raise UsageError(str(err)) from None

    def configure(self, assignments: list[str]) -> None:
        for text in assignments:
            key, sep, value = text.partition("=")
            if not sep or key not in config.RUN:
                raise UsageError(f"%cloud config takes key=value with key in {', '.join(config.RUN)}; "
                                 f"got {text!r}")
            try:
                self.overrides[key] = config.parse_run(key, value)
            except config.ConfigError as err:
                raise UsageError(f"%cloud config: {err}") from None
        current = self.settings()
        for key in config.RUN:
            source = "session" if key in self.overrides else "default"
            print(f"{key:<10} = {current[key]!s:<10} ({source})")

    def prewarm(self) -> None:
        """Start the local workers of the first ``%%cloud`` cell ahead of it (the extension
        loads seconds before that cell runs). Nothing for Lambda, nor for a config that
        does not parse: the cell itself will say what is wrong."""
        try:
            settings = self.settings()
        except UsageError:
            return
        if settings["backend"] == "local":
            from cloudbutton_executor.backends.local import prewarm

            prewarm(settings["workers"])

    def executor(self, settings: dict) -> Executor:
        key = (settings["backend"], settings["workers"])
        ex = self._executors.get(key)
        if ex is None:
            ex = self._executors[key] = Executor(settings["backend"], workers=settings["workers"])
            ex.track_uncollected = False  # the runner keeps its jobs itself (self.jobs)
        return ex

    # %%cloud map / %cloud map -----------------------------------------------------
    def map(self, req: MapRequest):
        settings = self.settings(**req.options)
        location = self._data_location(req.iterable)
        if req.data_options and location is None:
            raise UsageError(f"--obj-chunk-size and --obj-chunk-number split storage objects: "
                             f"the iterable {req.iterable!r} names none (s3://bucket/prefix/, a "
                             "local directory, or a variable holding one)")
        values = [] if location is not None else self._evaluate_iterable(req.iterable)
        report = cap.CaptureReport()
        if req.body is not None:
            code = self._python_code(req.body, body_first_line(self.shell))
            try:
                captured, report = cap.capture(code, self.shell.user_ns, exclude={req.name})
                if not req.dry_run:
                    self._store_large(captured, report, settings)
                fn = CellTask(code, captured, name=req.name, label=self._cell_label())
            except (cap.CaptureError, SyntaxError) as err:
                raise UsageError(str(err)) from None
            calls = location if location is not None else [(v,) for v in values]
        else:
            try:
                fn = self.shell.ev(req.func)
            except Exception as err:
                raise UsageError(f"FUNC {req.func!r} is not defined in the notebook: {err}") from None
            if not callable(fn):
                raise UsageError(f"FUNC {req.func!r} is a {type(fn).__name__}, not a function")
            try:
                # A defined function's globals travel inside it (cloudpickle): none is stored apart.
                cap.check_and_measure(cap.function_globals(fn), report, large_bytes=2 ** 63)
            except cap.CaptureError as err:
                raise UsageError(str(err)) from None
            calls = location if location is not None else values
        if req.dry_run:
            what = (f"one task per object or chunk of {location}" if location is not None
                    else f"{len(calls)} tasks")
            print(f"would run {what} on the {settings['backend']} backend "
                  f"(chunksize {settings['chunksize']}); captured:")
            print(report.to_text())
            return None
        job = self._submit(fn, calls, settings, req.data_options)
        return self._follow(job, report, out=req.out, noblock=req.noblock, raise_=req.raise_)

    # %%cloud run ------------------------------------------------------------------
    def run(self, body: str, out: str | None, options: dict, dry_run: bool = False):
        settings = self.settings(**options)
        code = self._python_code(body, body_first_line(self.shell))
        try:
            captured, report = cap.capture(code, self.shell.user_ns)
            if not dry_run:
                self._store_large(captured, report, settings)
            _, assigned = cap.analyse(code)
            fn = CellTask(code, captured, name=None, mode="assigned", assigned=tuple(assigned),
                          label=self._cell_label())
        except (cap.CaptureError, SyntaxError) as err:
            raise UsageError(str(err)) from None
        if dry_run:
            print("would run the cell once on the", settings["backend"], "backend; captured:")
            print(report.to_text())
            return None
        job = self._submit(fn, [()], {**settings, "chunksize": 1})
        self._follow(job, report, out=None, noblock=False, raise_=True)
        value = job[0].result()
        if "__value__" in value:
            if out:
                self.shell.user_ns[out] = value["__value__"]
            return value["__value__"]
        skipped = {k: v for k, v in value.items() if type(v).__name__ == "_NotShipped"}
        self.shell.user_ns.update({k: v for k, v in value.items() if k not in skipped})
        if out:
            self.shell.user_ns[out] = {k: v for k, v in value.items() if k not in skipped}
        for k, v in skipped.items():
            print(f"cloudbutton: {k!r} was not brought back: {v!r}")
        return None

    # Jobs ---------------------------------------------------------------------------
    def print_jobs(self, n: int = 10) -> None:
        ex = self.executor(self.settings())
        now = time.time()
        rows = [catalog.brief(ex.storage, ex.prefix, m, now)
                for m in catalog.manifests(ex.storage, ex.prefix, n)]
        if not rows:
            print("no jobs yet")
            return
        print(f"{'job id':<24} {'created (UTC)':<20} {'backend':<8} {'tasks':>7} {'ended':>7} "
              f"{'state':<9}  what")
        for r in rows:
            created = datetime.datetime.fromtimestamp(r["created"], datetime.timezone.utc)
            what = r["label"] or r["function"] or ""
            print(f"{r['job_id']:<24} {created:%Y-%m-%d %H:%M:%S} {r['backend']:<8} "
                  f"{r['items']:>7} {r['ended']:>7} {r['state']:<9}  {what}")

    def attach(self, job_id: str, out: str = "results"):
        ex = self.executor(self.settings())
        try:
            job = ex.attach(job_id)
        except (KeyError, ValueError) as err:
            raise UsageError(str(err).strip("'\"")) from None
        return self._follow(job, None, out=out, noblock=False, raise_=False)

    def cancel(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            n = job.cancel()
            print(f"cancelled job {job_id} ({n} tasks had not finished)")
            return
        try:
            config.check("job_id", job_id, "%cloud cancel: ")
        except config.ConfigError as err:
            raise UsageError(str(err)) from None
        ex = self.executor(self.settings())
        if not ex.storage.exists(protocol.manifest_key(ex.prefix, job_id)):
            raise UsageError(f"no job {job_id} in {ex.storage.describe()}")
        ex.storage.put_if_absent(protocol.cancel_key(ex.prefix, job_id),
                                 protocol.cancel_marker(by="%cloud cancel", at=time.time()))
        print(f"asked job {job_id} to cancel (its kernel stops it within a second)")

    def rerun(self, job_id: str, out: str = "results"):
        """``%cloud rerun``: a job's failed items, again, into its results (a job of another
        kernel is attached first)."""
        try:
            job = self.jobs.get(job_id)
            if job is None:  # another kernel's: from its stored, verified inputs
                job = self.executor(self.settings()).attach(config.check("job_id", job_id))
                job.wait()
            again = job.rerun_failed()
        except (KeyError, ValueError, RuntimeError) as err:
            raise UsageError(str(err).strip("'\"")) from None
        if again is None:
            print(f"job {job_id} has no failed items")
            self.shell.user_ns[out] = job.results()
            return None
        self.jobs[again.job_id] = again
        self._follow(again, None, out=None, noblock=False, raise_=False)
        job.wait()
        self.shell.user_ns[out] = job.results()
        c = job.counts()
        print(f"job {job_id}: {c['done'] + c['cached']} of {len(job)} done, {c['failed']} failed "
              f"after re-running {len(again)} items (job {again.job_id}); results in {out!r}")
        return None

    def cache(self, action: str, identity: str | None = None) -> None:
        """``%cloud cache list|clear``: the result cache in this session's storage."""
        ex = self.executor(self.settings())
        if action == "list":
            print(result_cache.format_listing(result_cache.list_functions(ex.storage, ex.prefix)))
            return
        try:
            n = result_cache.clear(ex.storage, ex.prefix, identity)
        except ValueError as err:
            raise UsageError(str(err)) from None
        print(f"cleared the result cache{' of ' + identity if identity else ''}: {n} objects")

    # Internals -----------------------------------------------------------------------
    def _store_large(self, captured: dict, report, settings: dict) -> None:
        """Store each captured value the report found too large for the function blob
        once, content-addressed, and ship a reference to it instead (largevalues)."""
        if not report.large:
            return
        ex = self.executor(settings)
        for name, blob in report.large.items():
            captured[name] = largevalues.stash(ex.storage, ex.prefix, blob)

    def _data_location(self, expr: str) -> str | None:
        """The storage a data-driven map reads: ``s3://bucket/prefix/`` or a path written
        as is, or a notebook variable holding one; None for any other iterable."""
        text = expr.strip()
        if is_location(text) and not any(c.isspace() for c in text):
            return text
        if text.isidentifier():
            value = self.shell.user_ns.get(text)
            if isinstance(value, str) and is_location(value):
                return value
        return None

    def _evaluate_iterable(self, expr: str) -> list:
        try:
            value = self.shell.ev(expr)
        except NameError as err:
            raise UsageError(f"the iterable {expr!r} is not defined in the notebook ({err})") from None
        except Exception as err:
            raise UsageError(f"evaluating the iterable {expr!r} failed: "
                             f"{type(err).__name__}: {err}") from None
        if isinstance(value, (str, bytes)):
            raise UsageError(f"the iterable {expr!r} is a {type(value).__name__}; "
                             "wrap it in a list to run one task on it")
        try:
            items = iter(value)
        except TypeError:
            raise UsageError(f"the iterable {expr!r} is a {type(value).__name__}, which is not "
                             "iterable") from None
        out: list = []
        try:
            out.extend(items)
        except Exception as err:  # a generator failing midway: its own error, not "not iterable"
            raise UsageError(f"the iterable {expr!r} raised {type(err).__name__}: {err} "
                             f"after {len(out)} elements; nothing was submitted") from None
        return out

    def _cell_label(self) -> str | None:
        """The running cell's name as IPython's tracebacks give it ("In[5]"): the caller
        frame whose file IPython's compiler knows as a cell."""
        name_of = getattr(getattr(self.shell, "compile", None), "format_code_name", None)
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None and name_of is not None:
            label = name_of(frame.f_code.co_filename)
            if label:
                return label[1]
            frame = frame.f_back
        return None

    def _python_code(self, body: str, first_line: int = 2) -> str:
        """The body as plain Python; errors name the line as the user sees it in the
        cell (``first_line``: the body's first line number, after the ``%%cloud`` line)."""
        code = self.shell.transform_cell(body)
        if "get_ipython()" in code and "get_ipython()" not in body:
            lineno = next(i for i, line in enumerate(code.splitlines(), 1) if "get_ipython()" in line)
            raise UsageError(f"line {lineno + first_line - 1} of the cell uses IPython syntax (a "
                             "magic or shell escape), which cannot run on the workers")
        try:
            compile(code, "<cell>", "exec")
        except SyntaxError as err:
            raise UsageError(cap.describe_syntax_error(err, first_line)) from None
        return code

    def _submit(self, fn, calls, settings, data_options=None):
        ex = self.executor(settings)
        try:
            job = ex.map(fn, calls, chunksize=settings["chunksize"], timeout=settings["timeout"],
                         retries=settings["retries"], memory_mb=settings["memory_mb"],
                         label=notebook_label(self.shell), cache=settings["cache"],
                         budget=settings["budget"], backups=settings["backups"],
                         **(data_options or {}))
        except (SerializationError, ValueError, TypeError, NotFound) as err:
            raise UsageError(str(err)) from None
        self.jobs[job.job_id] = job
        return job

    def _follow(self, job, report, *, out, noblock, raise_):
        view = None
        try:  # from the first line: the job runs already, and Ctrl-C may come at any time
            from .widget import make_progress

            view = make_progress(job, capture_report=report)
            view.display()
            if noblock:
                if out:
                    self.shell.user_ns[out] = job
                view.start_background()
                return None
            while not job.wait(0.2):
                view.update()
        except KeyboardInterrupt as exc:
            # Ctrl-C / kernel interrupt: cancel the job, keep what finished, and end the
            # cell with one line (JobCancelled renders as its message in IPython).
            cancelled = exc if isinstance(exc, JobCancelled) else cancel_jobs([job])
            if view is not None:
                view.finish()
            if out:
                self.shell.user_ns[out] = job.results()
            if cancelled is None:
                raise
            note = f"; finished results are in {out!r}" if out else ""
            raise JobCancelled(f"{cancelled}{note} (job {job.job_id})") from None
        view.finish()
        outcomes = job.results()
        if out:
            self.shell.user_ns[out] = outcomes
        # A cancelled item (the panel's cancel, %cloud cancel) is not a failure.
        failures = [o for o in outcomes
                    if isinstance(o, BaseException) and not isinstance(o, cf.CancelledError)]
        if failures and out:
            print(f"{len(failures)} of {len(outcomes)} tasks failed; their exceptions are in {out!r}")
        if job.cancelled:
            c = job.counts()
            print(f"job {job.job_id} was cancelled: {c['done']} of {len(job)} done, "
                  f"{c['cancelled']} cancelled" + (f" (CancelledError in {out!r})" if out else ""))
        if failures and (raise_ or len(failures) == len(outcomes)):
            raise failures[0]
        return None
