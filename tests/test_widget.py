"""The live progress views, driven by real jobs on real local workers."""
import io
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cloudbutton_executor import protocol, report_flops
from cloudbutton_magic.widget import (JOB_VIEW, JobWidget, TextProgress, make_progress, normalize_report,
                                      task_detail_html, widgets_available)
from cloudbutton_magic.widget_state import JobTracker

def follow(view, job, poll=0.02):
    """The waiting loop of `%%cloud map` (runner._follow)."""
    while not job.wait(poll):
        view.update()
    view.finish()
    return view


def noisy(x):
    import time

    time.sleep(0.05)
    print(f"hello {x}")
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x * 2


def flopper(x):
    import time

    time.sleep(0.1)
    report_flops(2e9)
    return x


def slow_flopper(x):
    import time

    time.sleep(0.25)
    report_flops(1e9)
    return x


def sleepy(x):
    import time

    time.sleep(x)
    return x


def cols(view):
    return view.plots.timeline_source.data


# --- JobWidget ----------------------------------------------------------------------
def test_widget_counts_timeline_stdout_failures(ex):
    job = ex.map(noisy, range(12))
    view = follow(JobWidget(job), job)
    d = cols(view)
    assert len(d["task"]) == 12
    assert sorted(d["bottom"]) == list(range(12))
    by_item = {b: k for k, b in enumerate(d["bottom"])}
    for f in job.futures:
        k = by_item[f.index]
        assert d["task"][k] == f.task_id
        assert d["submit"][k] <= d["start"][k] <= d["setup"][k] <= d["c0"][k] < d["c1"][k] <= d["fetched"][k]
        assert 0.04 <= d["compute_s"][k] < 5
        for seg in ("queue_s", "setup_s", "return_s"):
            assert 0 <= d[seg][k] < 5
        assert d["cold"][k] in ("yes", "no")
    assert all(math.isnan(x) == (c == "no") for x, c in zip(d["cold_x"], d["cold"], strict=True))
    k3 = by_item[3]
    assert d["state"][k3] == "failed" and d["compute_color"][k3] == "#d62728"
    assert d["error"][k3] == "ValueError: bad item 3"
    assert all(d["error"][k] == "" for k in range(12) if k != k3)

    header = view.header.value
    assert "11 done · 1 failed · 0 running · 0 queued · 0 cancelled · 0 retried" in header
    assert "finished" in header and job.job_id in header and "local" in header
    assert "on Lambda" in header and "$" in header
    assert "cloudbutton-header" in header
    assert "cloudbutton-job-widget" in view.box._dom_classes
    assert "width:" in header and "#d62728" in header  # a failed segment of the bar

    for i in range(12):
        assert f"[{i}] hello {i}\n" in view.stdout.value
    assert "1 failed" in view.failures.value
    assert "<details>" in view.failures.value and "ValueError: bad item 3" in view.failures.value
    assert "raise ValueError" in view.failures.value  # the remote traceback
    assert view.report_box is None


def test_cold_starts_are_marked(storage):
    from cloudbutton_executor import Executor

    # Local worker pools are shared per concurrency level: 3 slots is a pool no other test warms.
    with Executor(workers=3, storage=storage, timeout=60) as ex3:
        job = ex3.map(sleepy, [0.2] * 6)
        view = follow(JobWidget(job), job)
    d = cols(view)
    cold_rows = [k for k, c in enumerate(d["cold"]) if c == "yes"]
    pids = {f.stats.get("cold_start") for f in job.futures}
    assert pids == {True, False}  # fresh processes ran first, then were reused warm
    assert 1 <= len(cold_rows) <= 3
    for k in cold_rows:
        assert d["cold_x"][k] == d["start"][k] and d["cold_y"][k] == d["bottom"][k] + 0.5


def test_gflops_series_from_report_flops(ex):
    n = 10
    job = ex.map(flopper, range(n))
    view = follow(JobWidget(job), job)
    s = view.plots.series_source.data
    dt = view.tracker.series.dt
    assert view.plots.flops_mode
    assert "GFLOPS" in view.plots.rates.title.text and view.plots.rates.yaxis.axis_label == "GFLOPS"
    assert [i.label.value for i in view.plots.rates.legend[0].items] == [
        "effective (cumulative)", "in flight"]
    assert view.tracker.series.total_flops == pytest.approx(n * 2e9)
    assert len(s["x_end"]) == len(s["eff"]) == len(s["inst"]) >= 2
    # effective = cumulative FLOPs / elapsed: at the end, all FLOPs over the last bin's end
    assert s["eff"][-1] * s["x_end"][-1] * 1e9 == pytest.approx(n * 2e9, rel=1e-6)
    # in flight integrates back to the total, and never exceeds 2 workers at their rate
    assert sum(s["inst"]) * dt * 1e9 == pytest.approx(n * 2e9, rel=1e-6)
    rates = [f.stats["flops"] / (f.stats["compute_done"] - f.stats["compute_start"]) / 1e9
             for f in job.futures]
    assert max(s["inst"]) <= 2 * max(rates) * 1.001
    assert max(s["inst"]) >= min(rates) * 0.5
    assert "GFLOPS" in view.header.value


def test_tasks_per_second_when_no_flops(ex):
    job = ex.map(sleepy, [0.05] * 8)
    view = follow(JobWidget(job), job)
    s = view.plots.series_source.data
    assert not view.plots.flops_mode
    assert "tasks/s" in view.plots.rates.title.text and "FLOPs" in view.plots.rates.title.text
    assert view.plots.rates.yaxis.axis_label == "tasks/s"
    # Smoothed, so only about the 8 completions in area (the last bins are renormalised).
    assert sum(s["inst"]) * view.tracker.series.dt == pytest.approx(8, rel=0.35)
    assert s["eff"][-1] * s["x_end"][-1] == pytest.approx(8)
    assert "GFLOPS" not in view.header.value


@pytest.mark.parametrize("seconds", [2.0, 3600.0])
def test_rate_line_is_smoothed_over_a_window_that_fits_the_job(seconds):
    """Two completions every sixteenth of the job: per bin a 0/N/0 sawtooth, smoothed a line."""
    from cloudbutton_magic.widget_state import RateSeries

    rs = RateSeries()
    every = seconds / 16
    for k in range(1, 16):
        rs.add(k * every, 0)
        rs.add(k * every + 1e-6, 0)
    cols = rs.series(seconds, flops_mode=False)
    inst = cols["inst"]
    raw = rs.tasks_done[:len(inst)] / rs.dt
    true_rate = 2 / every
    middle = slice(len(inst) // 4, 3 * len(inst) // 4)
    assert raw[middle].max() > 2 * true_rate and raw[middle].min() == 0  # the sawtooth
    assert inst[middle] == pytest.approx(np.full(len(inst[middle]), true_rate), rel=0.1)
    assert inst[:3].max() < true_rate  # nothing ended at the very start: no head start
    assert inst[-1] > 0.5 * true_rate  # the end is not dragged to zero


def test_updates_are_throttled(ex):
    job = ex.map(sleepy, [5.0, 5.0])
    view = JobWidget(job)
    t0 = time.monotonic()
    calls = 0
    while time.monotonic() - t0 < 1.0:
        view.update()
        calls += 1
    renders = view.renders
    assert calls > 1000
    assert 4 <= renders <= 6
    assert "0 done" in view.header.value and "running" in view.header.value
    job.cancel()
    view.finish()
    assert view.renders == renders + 1
    assert "2 cancelled" in view.header.value


def test_series_are_patched_and_streamed_not_recreated(ex):
    job = ex.map(slow_flopper, range(12))  # about 1.5 s: several renders even on a loaded machine
    view = JobWidget(job)
    events = []  # what the BokehModel forwards to the browser
    view.plots.layout.document.on_change(lambda e: events.append(type(e).__name__))
    follow(view, job)
    assert view.renders >= 3, (view.renders, view.tracker.header_stats(), events)
    assert events.count("ColumnsStreamedEvent") >= 2  # timeline rows and new bins
    # a full resend of a source happens only when switching to FLOPs mode or doubling the bin width
    replaced = [e for e in events if e == "ColumnDataChangedEvent"]
    assert len(replaced) <= 2 + view.tracker.series.version, events


def test_large_job_draws_sampled_invocation_rows(ex):
    n = 5000
    job = ex.map(lambda x: x, range(n), chunksize="auto")
    view = follow(JobWidget(job), job)
    d = cols(view)
    tasks = {f.task_id for f in job.futures}
    assert not view.tracker.per_item and view.tracker.stride == 3
    assert "one row per invocation" in view.plots.timeline.title.text
    assert 1 <= len(d["task"]) <= 2000
    assert set(d["task"]) <= tasks and len(set(d["task"])) == len(d["task"])
    for tid, bottom in zip(d["task"], d["bottom"]):
        a, b = protocol.task_range(tid)
        assert bottom == a
        assert -(-a // 3) * 3 < b  # holds a sampled item
    # every invocation holding a multiple of the stride is drawn
    expected = {t for t in tasks if -(-protocol.task_range(t)[0] // 3) * 3 < protocol.task_range(t)[1]}
    assert set(d["task"]) == expected
    assert f"{n} done" in view.header.value


def test_tracker_samples_one_row_per_invocation(ex):
    job = ex.map(lambda x: x, range(45))
    tracker = JobTracker(job, max_rows=10)  # stride 5 over 45 single-item invocations
    job.wait(60)
    rows = tracker.poll().rows
    assert tracker.stride == 5
    assert sorted(r["bottom"] for r in rows) == list(range(0, 45, 5))
    assert tracker.counts["done"] == 45 and tracker.invocations == 45
    assert tracker.gb_seconds == pytest.approx(job.stats["gb_seconds"]) and tracker.gb_seconds > 0


def test_cancelled_job_says_so(ex):
    job = ex.map(sleepy, [0.05] + [2.0] * 6)
    view = JobWidget(job)
    job[0].result(timeout=30)
    view.update(force=True)
    job.cancel()
    view.finish()
    c = view.tracker.counts
    assert c["cancelled"] >= 4 and c["done"] >= 1
    assert "cancelled" in view.header.value.split("cb-state")[1][:60]
    assert f"{c['cancelled']} cancelled" in view.header.value


def test_interrupt_inside_update_keeps_final_counts_exact(ex):
    job = ex.map(sleepy, [0.05] * 10)
    view = JobWidget(job)
    job.wait(30)
    take = view.tracker._take

    def interrupted(*args):  # Ctrl-C lands while the first ended task is being taken
        view.tracker._take = take
        raise KeyboardInterrupt

    view.tracker._take = interrupted
    with pytest.raises(KeyboardInterrupt):
        view.update()
    view.finish()
    assert "10 done · 0 failed · 0 running · 0 queued" in view.header.value


class Report:
    def __init__(self, rows, warnings=()):
        self.rows = rows
        self.warnings = list(warnings)

    @property
    def total(self):
        return sum(r["size"] for r in self.rows)


def test_capture_report_collapsed(ex):
    job = ex.map(lambda x: x, range(3))
    rep = Report([{"name": "df", "type": "DataFrame", "size": 3 * 2**20},
                  {"name": "f", "type": "function", "size": 1200}],
                 ["captured 3.0 MB: more than the threshold"])
    view = follow(JobWidget(job, capture_report=rep), job)
    acc = view.report_box
    assert acc.selected_index is None  # collapsed
    assert acc.titles[0].startswith("Captured: 2 names, 3.0 MB") and "1 warning" in acc.titles[0]
    body = acc.children[0].value
    assert "df" in body and "DataFrame" in body and "1.2 KB" in body and "threshold" in body

    as_dict = normalize_report({"rows": [{"name": "a", "type": "int", "size_bytes": 28}],
                                "total": 28, "warnings": []})
    assert as_dict == {"rows": [{"name": "a", "type": "int", "size": 28, "stored": False}],
                       "total": 28, "warnings": []}
    assert normalize_report(rep)["total"] == 3 * 2**20 + 1200


def test_background_updates_then_finishes(ex):
    job = ex.map(sleepy, [0.3] * 8)
    view = JobWidget(job)
    thread = view.start_background(interval=0.05)
    thread.join(30)
    assert not thread.is_alive() and view.finished
    assert view.renders >= 3, (view.renders, view.tracker.header_stats())
    assert "8 done" in view.header.value and "finished" in view.header.value
    assert len(cols(view)["task"]) == 8


def test_widget_and_panel_say_the_same_cost_and_elapsed_time(ex, storage, monkeypatch, tmp_path):
    """The cell's numbers are the panel's: same records (the statuses), same code
    (accounting), same money format; elapsed ends at the last status stored, not when
    this host happened to see it."""
    from cloudbutton_executor.units import format_usd
    from cloudbutton_jupyter.manager import CloudManager
    from cloudbutton_magic.widget import fmt_cost, fmt_seconds

    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "none.yaml"))
    job = ex.map(sleepy, [0.25] * 6, memory_mb=10240)
    view = follow(JobWidget(job), job)
    (panel,) = CloudManager(storage=storage).list_jobs()
    hs = view._header_stats
    assert hs["cost_usd"] == pytest.approx(panel["cost_usd"], rel=1e-12)
    assert fmt_cost(hs["cost_usd"]) == format_usd(panel["cost_usd"])
    assert format_usd(panel["cost_usd"]).startswith("$0.000")  # not "< $0.0001": a real check
    assert hs["elapsed_s"] == pytest.approx(panel["duration_s"], abs=1e-6)
    assert fmt_seconds(hs["elapsed_s"]) in view.header.value
    assert f"{format_usd(panel['cost_usd'])} on Lambda" in view.header.value


# --- choosing the view, TextProgress -----------------------------------------------
def test_plain_process_gets_text_progress(ex):
    job = ex.map(lambda x: x, range(2))
    assert not widgets_available()
    assert isinstance(make_progress(job), TextProgress)
    assert isinstance(make_progress(job, force_text=True), TextProgress)
    job.wait(30)


def test_terminal_ipython_gets_text_progress(ex):
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()  # a shell without a kernel, like terminal IPython
    job = ex.map(lambda x: x, range(2))
    assert not widgets_available()
    assert isinstance(make_progress(job), TextProgress)
    job.wait(30)


def test_text_progress_in_a_plain_script(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        from cloudbutton_executor import Executor
        from cloudbutton_executor.storage import LocalStorage
        from cloudbutton_magic.widget import make_progress

        def work(x):
            import time
            time.sleep(0.05)
            print("line from", x)
            if x == 2:
                raise KeyError("missing " + str(x))
            return x

        if __name__ == "__main__":
            with Executor(workers=2, storage=LocalStorage({str(tmp_path / 's')!r})) as ex:
                job = ex.map(work, range(5))
                view = make_progress(job, capture_report={{"rows": [], "total": 0,
                                                           "warnings": ["a warning"]}})
                print("VIEW", type(view).__name__)
                view.display()
                while not job.wait(0.05):
                    view.update()
                view.finish()
    """))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       check=False, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    out, err = p.stdout, p.stderr
    assert "VIEW TextProgress" in out
    assert "warning: a warning" in out
    assert "[2] line from 2" in out and "[4] line from 4" in out
    assert "item 2 failed" in out and "KeyError" in out and 'raise KeyError("missing "' in out
    assert "finished: 4 done, 1 failed" in out
    assert "5/5" in err and "4 done, 1 failed" in err  # the tqdm bar with its postfix
    assert "<" not in out.replace("<module>", "")  # plain text, no HTML


# --- in a real kernel -----------------------------------------------------------------
NOTEBOOK_CELLS = [
    """
import os, time
from cloudbutton_executor import Executor, report_flops
from cloudbutton_executor.storage import LocalStorage
from cloudbutton_magic.widget import make_progress, JobWidget, widgets_available
ex = Executor(workers=2, storage=LocalStorage(os.environ["CB_WIDGET_TEST_STORAGE"]))
def work(x):
    time.sleep(0.1)
    report_flops(1e9)
    print("out", x)
    return x
""",
    """
job = ex.map(work, range(6))
report = {"rows": [{"name": "work", "type": "function", "size": 900}], "total": 900, "warnings": []}
view = make_progress(job, capture_report=report)
view.display()
while not job.wait(0.1):
    view.update()
view.finish()
print(type(view).__name__, widgets_available(), len(view.plots.timeline_source.data["task"]))
""",
]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def static_images(html_text: str) -> list[bytes]:
    """The PNG plots embedded in a static rendering, decoded."""
    import base64
    import re

    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                                                     html_text)]


def run_cells(cells, tmp_path, **kwargs):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    os.environ["CB_WIDGET_TEST_STORAGE"] = str(tmp_path / "storage")
    try:
        NotebookClient(nb, kernel_name="python3", timeout=120, resources={
            "metadata": {"path": str(tmp_path)}}, **kwargs).execute()
    finally:
        os.environ.pop("CB_WIDGET_TEST_STORAGE", None)
    return nb


def test_notebook_output_ends_as_a_static_rendering(tmp_path):
    """Live: the widget view with an HTML fallback; ended: header, counts and both plots as
    HTML and PNG, no widget view, no BokehJS left in the notebook."""
    nb = run_cells(NOTEBOOK_CELLS, tmp_path, store_widget_state=True)
    outputs = nb.cells[1].outputs
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "JobWidget True 6" in text  # it was the live widget while it ran
    data = [o["data"] for o in outputs if o.output_type == "display_data"]
    assert not any("application/vnd.jupyter.widget-view+json" in d for d in data)
    # BokehJS ran in the page, then its output was emptied: the notebook does not carry it.
    assert not any("application/javascript" in d for d in data)
    (final,) = [d for d in data if "text/html" in d]
    page = final["text/html"]
    assert "6 done · 0 failed · 0 running · 0 queued" in page and "finished" in page
    assert "[5] out 5" in page  # the tasks' stdout
    assert "Captured: 1 name" in page
    images = static_images(page)
    assert len(images) == 2 and all(im.startswith(PNG_MAGIC) for im in images)
    assert "finished: 6 done, 0 failed" in final["text/plain"]
    size = len(json.dumps(nb))
    assert size < 250_000, size  # tens of KB per job, not megabytes


def test_an_ended_jobs_widget_stays_clickable_beside_its_static_rendering(tmp_path):
    """Ended: the output holds the static rendering and a reference to the widget (not a
    widget view, which kernel-less viewers cannot show); the widget stays open, so a click
    on a bar after the job (the selection syncs from the page, here set in a later cell)
    shows that task's detail."""
    cells = [*NOTEBOOK_CELLS,
             "k = list(view.plots.timeline_source.data['bottom']).index(4)\n"
             "view.plots.timeline_source.selected.indices = [k]\n"
             "print(view.task_detail.value)\n"
             "print('open:', all(x.comm is not None for x in (view.box, view.bokeh, view.task_detail)))"]
    nb = run_cells(cells, tmp_path)
    data = [o["data"] for o in nb.cells[1].outputs if o.output_type == "display_data"]
    (final,) = [d for d in data if "text/html" in d]
    assert set(final) == {JOB_VIEW, "text/html", "text/plain"}
    assert len(final[JOB_VIEW]["model_id"]) == 32
    assert len(static_images(final["text/html"])) == 2
    shown = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "item 4 · state done" in shown and "input: <code>4" in shown
    assert "out 4" in shown and "compute" in shown
    assert "open: True" in shown  # the page can still show it, and send clicks to it


def test_a_job_displays_itself(tmp_path):
    """``job`` as a cell's last expression: the live widget, following the job from a
    background thread, replaced by the static rendering once the job has ended (sent from
    a later cell, so nbclient records it too); a finished job shows the static rendering."""
    cells = [NOTEBOOK_CELLS[0] + "\n%load_ext cloudbutton_jupyter",
             "job = ex.map(work, range(4))\njob",
             "job.result()",
             "job",
             "cancelled = ex.map(lambda x: time.sleep(5), range(3))\n"
             "cancelled.cancel()\ncancelled"]
    nb = run_cells(cells, tmp_path)
    live = [o for o in nb.cells[1].outputs if o["data"].get("text/plain")]  # BokehJS emptied
    assert len(live) == 1 and "text/html" in live[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" not in live[0]["data"]  # updated at the end
    assert "4 done · 0 failed" in live[0]["data"]["text/html"]
    assert len(static_images(live[0]["data"]["text/html"])) == 2
    again = nb.cells[3].outputs[0]["data"]
    assert "4 done · 0 failed" in again["text/html"] and len(static_images(again["text/html"])) == 2
    stopped = nb.cells[4].outputs[0]["data"]["text/html"]
    assert "cancelled" in stopped and "failed</span>" not in stopped
    assert "cancelled before any task ended" in stopped and not static_images(stopped)


def test_background_thread_messages_land_in_their_cell(tmp_path):
    """ipykernel 7: the --noblock thread's comm messages carry its own cell's parent."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3",
                              env=dict(os.environ, CB_WIDGET_TEST_STORAGE=str(tmp_path / "s")))
    try:
        kc.execute(textwrap.dedent(NOTEBOOK_CELLS[0]) + "\nimport bokeh.plotting, ipywidgets, jupyter_bokeh")
        assert kc.get_shell_msg(timeout=60)["content"]["status"] == "ok"
        cell_a = kc.execute(textwrap.dedent("""
            job = ex.map(lambda x: time.sleep(0.5), range(8))  # about 2 s: outlives cell A
            view = make_progress(job)
            view.display()
            view.start_background()
            print("A ends with job done:", job.done())
        """))
        assert kc.get_shell_msg(timeout=60)["content"]["status"] == "ok"
        cell_b = kc.execute("view._thread.join(60)\nprint('B done')")
        assert kc.get_shell_msg(timeout=90)["content"]["status"] == "ok"
        msgs = []
        while True:  # iopub is ordered: everything up to B's idle status
            msg = kc.get_iopub_msg(timeout=30)
            msgs.append(msg)
            if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    and msg["parent_header"].get("msg_id") == cell_b):
                break
        out_a = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream"
                        and m["parent_header"].get("msg_id") == cell_a)
        assert "A ends with job done: False" in out_a
        parents = []
        for msg in msgs:
            if msg["msg_type"] == "comm_msg":
                value = msg["content"].get("data", {}).get("state", {}).get("value", "")
                if " done · " in value:
                    parents.append((msg["parent_header"].get("msg_id"), value))
        assert len(parents) >= 4
        assert any("8 done" in v for _, v in parents)  # the final state, sent while B ran
        assert {p for p, _ in parents} == {cell_a}, (cell_a, cell_b)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_kernel_killed_mid_job_leaves_its_latest_static_rendering(tmp_path):
    """While a job runs, its output's static rendering (header, counts, both plots) is sent
    again every few seconds: a kernel killed mid-job (SIGKILL, nothing runs after it)
    leaves a notebook whose saved output shows where the job had got, with no kernel."""
    import nbformat
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3",
                              env=dict(os.environ, CB_WIDGET_TEST_STORAGE=str(tmp_path / "s")))
    outputs: dict[str, dict] = {}  # display id -> its latest data, as a frontend keeps it
    try:
        kc.execute(textwrap.dedent(NOTEBOOK_CELLS[0]) + "\nimport bokeh.plotting, ipywidgets, jupyter_bokeh")
        assert kc.get_shell_msg(timeout=60)["content"]["status"] == "ok"
        kc.execute(textwrap.dedent("""
            job = ex.map(work, range(800))  # 0.1 s each on 2 workers: 40 s, more than we wait
            view = make_progress(job)
            view.display()
            while not job.wait(0.1):
                view.update()
        """))
        t0 = time.time()
        refreshed = []
        while time.time() - t0 < 25:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except Exception:  # queue.Empty
                continue
            if msg["msg_type"] in ("display_data", "update_display_data"):
                did = msg["content"].get("transient", {}).get("display_id")
                if did:
                    outputs[did] = msg["content"]["data"]
                    if (msg["msg_type"] == "update_display_data"
                            and "cloudbutton-job" in outputs[did].get("text/html", "")):
                        refreshed.append(time.time() - t0)
        os.kill(km.provisioner.pid, 9)  # no atexit, no final update: what a crash leaves
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    (data,) = [d for d in outputs.values() if "cloudbutton-job" in d.get("text/html", "")]
    # Refreshed while it ran, every few seconds (not at each of the 5 renders a second;
    # less often on a loaded machine, where drawing the plots takes longer).
    assert 1 <= len(refreshed) <= 25 / 5 + 1, refreshed
    assert all(b - a > 2.5 for a, b in zip(refreshed, refreshed[1:])), refreshed
    page = data["text/html"]
    done = int(re.search(r"(\d+) done · 0 failed", page).group(1))
    assert 40 <= done < 800, done  # the latest counts, not the first header
    assert ">running<" in page
    images = static_images(page)
    assert len(images) == 2 and all(im.startswith(PNG_MAGIC) for im in images)
    assert "[3] out 3" in page  # the tasks' stdout so far
    # What JupyterLab saves: the output as last updated (the widget view it also carries
    # shows "model not found" without a kernel; the lab extension and nbconvert show the
    # static rendering). Small: one job's static rendering, no BokehJS.
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("job", outputs=[
        nbformat.v4.new_output("display_data", data=data)])]
    path = tmp_path / "crashed.ipynb"
    nbformat.write(nb, path)
    size = path.stat().st_size
    print(f"saved notebook after a kernel death: {size} bytes")
    assert size < 150_000, size
    assert "application/javascript" not in data and JOB_VIEW in data


# --- cached items -----------------------------------------------------------------------
def tripled(x):
    return 3 * x


def test_cached_items_are_their_own_state_in_counts_bar_and_timeline(ex):
    ex.map(tripled, range(4), cache=True).result(timeout=30)
    job = ex.map(tripled, range(6), cache=True)
    view = follow(JobWidget(job), job)
    d = cols(view)
    by_item = {b: k for k, b in enumerate(d["bottom"])}
    assert sorted(by_item) == list(range(6))
    for i in range(4):
        k = by_item[i]
        assert d["state"][k] == "cached" and d["task"][k] == "cached"
        assert d["compute_color"][k] == "#17becf"
        # The original run's compute time, not a time of this job.
        assert d["compute_s"][k] == pytest.approx(
            job[i].stats["compute_done"] - job[i].stats["compute_start"])
        assert d["c0"][k] == 0.0 and d["c1"][k] < 5
    assert all(d["state"][by_item[i]] == "done" for i in (4, 5))
    header = view.header.value
    assert "4 cached · 2 done · 0 failed · 0 running · 0 queued" in header
    assert "cb-cached" in header and "#17becf" in header  # its own segment of the bar
    assert "finished" in header
    assert "4 cached, 2 done" in view.text_line()
    out = io.StringIO()
    text = follow(TextProgress(job, file=io.StringIO(), out=out), job)
    assert "finished: 4 cached, 2 done, 0 failed" in out.getvalue()
    assert text.tracker.queued == 0 and text.tracker.ended == 6
    html = view.static_html()
    assert "4 cached" in html and "data:image/png;base64," in html


def test_a_large_cached_rerun_is_sampled_in_invocation_mode(ex):
    ex.map(tripled, range(2500), chunksize=50, cache=True).result(timeout=120)
    job = ex.map(tripled, range(2500), chunksize=50, cache=True)
    assert job.result(timeout=60) == [3 * x for x in range(2500)]
    tracker = JobTracker(job)
    delta = tracker.poll()
    assert tracker.counts["cached"] == 2500 and tracker.ended == 2500 and tracker.queued == 0
    assert delta.rows and all(r["state"] == "cached" for r in delta.rows)
    assert tracker.usage.tasks == 0  # nothing was computed, nothing is billed


# --- budget: estimate, cost meter, stop -------------------------------------------------
def slow_square(x):
    import time

    time.sleep(0.3)
    return x * x


def test_the_widget_shows_the_estimate_the_cost_meter_and_the_budget_stop(ex):
    warm = ex.map(slow_square, [1])
    follow(JobWidget(warm), warm)  # imports bokeh: the views below are made in no time
    job = ex.map(slow_square, range(60), budget=0.0002)
    view = JobWidget(job)
    out = io.StringIO()
    text = TextProgress(job, file=io.StringIO(), out=out)
    text.display()
    running_headers = []
    while not job.wait(0.05):
        view.update(force=True)
        text.update(force=True)
        running_headers.append(view.header.value)
    view.finish()
    text.finish()
    assert any("projected $" in h and "budget $0.0002" in h for h in running_headers)
    header = view.header.value
    spending = job.spending
    assert spending["stopped"] and "stopped by its budget" in spending["stopped"]
    est = spending["estimate"]
    assert f"estimate: {est['invocations']:,} invocations, about $" in header
    assert "<div class='cb-cost-meter'>spent " in header and "budget $0.0002" in header
    assert "projected" not in header.split("cb-cost-meter")[1].split("</div>")[0]  # ended
    assert "cb-budget-stop" in header and "stopped by its budget" in header
    printed = out.getvalue()
    assert "cloudbutton: estimate: " in printed and "stopped by its budget" in printed
    assert "stopped by its budget" in view.static_html()


def test_no_budget_no_meter(ex):
    job = ex.map(slow_square, range(3))
    view = follow(JobWidget(job), job)
    assert job.spending is None and "cb-cost-meter" not in view.header.value


# --- where the time went ------------------------------------------------------------------
def test_where_the_time_went_in_the_widget_and_its_static_rendering(ex):
    ex.map(abs, range(2)).result(timeout=30)  # warm workers: no queue, no cold start
    job = ex.map(slow_square, range(2))
    view = follow(JobWidget(job), job)
    b = job.time_breakdown()
    assert b["tasks"] == 2
    # Every task computed 0.3 s: compute is at least 0.6 s of the sum, and the phases add
    # up to the tasks' submit -> stored time.
    assert 0.6 <= b["seconds"]["compute"] < 2
    walls = sum(f.stats["result_stored"] - f.stats["host_submit"] for f in job.futures)
    assert b["total_s"] == pytest.approx(walls, abs=0.01)
    assert view.tracker.phases.as_dict()["seconds"] == pytest.approx(b["seconds"])
    header = view.header.value
    assert "Where the time went (2 tasks" in header and "cb-phase-compute" in header
    share = b["seconds"]["compute"] / b["total_s"]
    assert f"compute {share:.0%}" in header
    assert "batching would gain little" in header  # mostly compute
    assert "cb-phase-bar" in view.static_html()

    tiny = ex.map(abs, range(30))
    tiny_view = follow(JobWidget(tiny), tiny)
    assert "larger batches (chunksize) would pay" in tiny_view.header.value


def test_phases_of_a_cold_task_split_its_wait():
    from cloudbutton_executor import phases

    p = phases.task_phases({"host_submit": 10.0, "worker_start": 11.5, "cold_start": True,
                            "init_s": 1.0, "setup_done": 11.7, "compute_done": 13.7,
                            "result_stored": 13.8})
    assert p == pytest.approx({"invoke": 0.5, "cold_start": 1.0, "download": 0.2,
                               "compute": 2.0, "upload": 0.1})
    warm = phases.task_phases({"host_submit": 10.0, "worker_start": 9.9, "cold_start": False,
                               "init_s": 1.0, "setup_done": 10.0, "compute_done": 10.0,
                               "result_stored": 10.1})
    assert warm["invoke"] == 0.0 and warm["cold_start"] == 0.0  # clock skew: never negative


# --- a click on a bar; re-run failed --------------------------------------------------------
def fails_until(x, fixed):
    import os
    import time

    time.sleep(0.4)
    print(f"working on {x}")
    if x == 2 and not os.path.exists(fixed):
        raise KeyError(f"missing {x}")
    return x


def test_a_click_on_a_bar_shows_its_task_and_the_widget_reruns_failed_items(ex, tmp_path):
    fixed = tmp_path / "fixed"
    warm = ex.map(abs, [1])
    follow(JobWidget(warm), warm)  # imports bokeh: the widget below is made in no time
    job = ex.map(fails_until, range(6), extra_args=(str(fixed),))
    view = JobWidget(job)
    src = view.plots.timeline_source
    tapped = False
    while not job.wait(0.05):
        view.update(force=True)
        if src.data["bottom"] and not tapped:
            tapped = True
            k = len(src.data["bottom"]) - 1
            src.selected.indices = [k]  # what a click on that bar does (TapTool)
            item = int(src.data["bottom"][k])
            shown = view.task_detail.value
            assert f"item {item} · state " in shown and f"input: <code>{item}, " in shown
            assert "compute" in shown and ("warm start" in shown or "cold start" in shown)
            assert f"working on {item}" in shown
    view.finish()
    assert tapped  # while the job ran
    detail = task_detail_html(job, 2)
    assert "state failed" in detail and "KeyError" in detail and "raise KeyError" in detail
    assert "1 attempt" in detail and "input: <code>2, " in detail
    src.selected.indices = []
    assert view.task_detail.value == ""

    assert view.rerun_button is not None and view.rerun_button.description == "Re-run 1 failed"
    fixed.write_text("")
    view.rerun_button.click()
    assert view.rerun_button.disabled
    assert job.result(timeout=30) == list(range(6))


def test_no_rerun_button_without_failures(ex):
    job = ex.map(abs, range(3))
    view = follow(JobWidget(job), job)
    assert view.rerun_button is None
