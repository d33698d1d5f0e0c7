"""End to end in a real browser: the Cloud sidebar runs a notebook cell over a list,
lists the job, and cancels a long job while the kernel is busy.

Starts JupyterLab on 127.0.0.1 (token auth, temp root and storage) and drives
Debian's Chromium through Python Playwright. Screenshots go to test-artifacts/.
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import hermetic

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make browser)"),
    pytest.mark.timeout(240),
]


@pytest.fixture(autouse=True)
def jp_asyncio_loop():
    """Replaces pytest-jupyter's autouse event loop for these tests: Playwright's sync API
    runs its own loop in this thread, and closing pytest-jupyter's loop under it fails."""
    yield None


@pytest.fixture(autouse=True)
def jp_server_cleanup():
    """pytest-jupyter's in-process server cleanup; this module's server is a subprocess."""
    yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook() -> dict:
    def code(src):
        return {"cell_type": "code", "metadata": {}, "source": src, "outputs": [],
                "execution_count": None, "id": uuid.uuid4().hex[:8]}

    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "cells": [code("xs = list(range(20))"),
                  code("x * x"),
                  code("import time\ntime.sleep(4 if x < 2 else 30)\nx"),
                  code("y = x\nz = (x +* 1)\nz"),
                  code("%%cloud map range(6) --memory 10240\nimport time\ntime.sleep(0.3)\nitem"),
                  code("print('squares:', results)"),
                  code("len(obj.data_stream.read())"),
                  code("%load_ext cloudbutton_jupyter\nimport os\nmark = os.path.abspath('rerun-fixed')"),
                  code("%%cloud map range(5) -o flaky\nprint('ran', item)\n"
                       "10 * item if item % 4 or os.path.exists(mark) else 1 // 0"),
                  code("%%cloud map range(3) -o doubled\nimport time\ntime.sleep(1.5)\n"
                       "print('tapped', item)\n2 * item"),
                  code("%%cloud map range(60) --budget 0.0002 -o capped\nimport time\n"
                       "time.sleep(0.3)\nitem")],
    }


@contextlib.contextmanager
def running_lab(tmp: Path, server_extension: bool = True):
    """A JupyterLab server with its own root dir, storage, settings and config."""
    root = tmp / "root"
    root.mkdir()
    (root / "demo.ipynb").write_text(json.dumps(_notebook()))
    settings = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "fetch Jupyter news?" toast over the page (and no network from the lab).
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    config_dir = tmp / "jupyter-config"
    config_dir.mkdir()
    if not server_extension:
        (config_dir / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"cloudbutton_jupyter": False}}}))
    port, token = _free_port(), uuid.uuid4().hex
    env = hermetic.environ(tmp,  # module-scoped: before the per-test hermetic environment
               CLOUDBUTTON_STORAGE_DIR=str(tmp / "storage"),
               CLOUDBUTTON_CONFIG=str(tmp / "config.yaml"),
               JUPYTER_CONFIG_DIR=str(config_dir),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"))
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.port_retries=0", "--LabApp.news_url=None"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    assert r.status == 200
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp / "lab.log").read_text())
                time.sleep(0.3)
        # hermetic.environ gave the lab (and its kernels) tmp/host.key as their host key.
        yield {"base": base, "token": token, "tmp": tmp, "storage": tmp / "storage",
               "key_file": tmp / "host.key"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("lab")) as info:
        yield info


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def open_notebook(browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(f"{lab['base']}/lab/tree/demo.ipynb?token={lab['token']}")
    return pg


@pytest.fixture(scope="module")
def lab_ui(browser, lab):
    pg = open_notebook(browser, lab)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.context.close()
    assert not errors, f"errors in the page: {errors}"


def _cell(page, n):
    return page.locator(".jp-NotebookPanel:visible .jp-Cell").nth(n)


def _select_cell(page, n):
    # Click the prompt, not the editor: selects the cell in command mode.
    _cell(page, n).locator(".jp-InputPrompt").click()


def _open_panel(page):
    panel = page.locator("#cloudbutton-panel")
    if not panel.is_visible():
        page.locator(".jp-SideBar [data-id='cloudbutton-panel']").click()
    panel.wait_for(state="visible")
    return panel


def _kernel_status(page, status):
    # The status bar's kernel item reads e.g. "Python 3 (ipykernel) | Idle".
    return page.locator(f".jp-StatusBar-TextItem:has-text('| {status}')")


def _wait_kernel_idle(page, timeout=60):
    _kernel_status(page, "Idle").wait_for(timeout=timeout * 1000)


@pytest.fixture
def page(lab_ui, request):
    """The shared page; on failure a screenshot of the whole lab goes to test-artifacts/."""
    failed_before = request.session.testsfailed
    yield lab_ui
    if request.session.testsfailed > failed_before or getattr(sys, "last_value", None):
        lab_ui.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"))


def test_run_cell_over_list_from_the_panel(page, lab):
    _cell(page, 0).wait_for()
    _wait_kernel_idle(page)
    # Define xs the ordinary way.
    _select_cell(page, 0)
    page.keyboard.press("Shift+Enter")
    page.locator(".jp-NotebookPanel:visible .jp-Cell").nth(0).locator(
        ".jp-InputPrompt:has-text('[1]')").wait_for()

    # The notebook toolbar and the cell toolbar carry the cloud button.
    page.locator(".jp-NotebookPanel:visible [data-jp-item-name='cloudbutton-run']").wait_for()
    panel = _open_panel(page)
    panel.locator(".cb-status.cb-ok").wait_for()  # local backend ready
    assert "No jobs yet" in panel.locator(".cb-jobs-message").inner_text()

    # No iterable chosen: an error, nothing run.
    _select_cell(page, 1)
    panel.locator(".cb-run").click()
    assert "iterable" in panel.locator(".cb-run-message.cb-error").inner_text()

    # The picker offers the kernel's list-like names.
    panel.locator(".cb-refresh-names").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#cb-iterables option')].some(o => o.value === 'xs')")

    # An undefined name is reported before anything runs.
    panel.locator(".cb-iterable").fill("ys")
    panel.locator(".cb-as").fill("x")
    panel.locator(".cb-run").click()
    panel.locator(".cb-run-message.cb-error:has-text('not defined')").wait_for()

    # The run itself: the notebook toolbar's cloud button, on the selected cell.
    panel.locator(".cb-iterable").fill("xs")
    _select_cell(page, 1)
    page.locator(".jp-NotebookPanel:visible .jp-NotebookPanel-toolbar "
                 "[data-jp-item-name='cloudbutton-run'] button").click()

    out = _cell(page, 1).locator(".jp-OutputArea")
    # A 20-item job may end before the live widget is seen: its header, live or static.
    out.locator(".cloudbutton-header:has-text('20 done')").wait_for(timeout=90_000)
    # The cell's source is not rewritten.
    assert "%%cloud" not in _cell(page, 1).locator(".jp-InputArea").inner_text()
    assert _cell(page, 1).locator(".jp-InputArea").inner_text().strip().endswith("x * x")

    # Once the job has ended, while its kernel lives, the cell shows the ended job's widget
    # (its bars still open a task's detail), and only it: the static rendering it carries
    # (counts and both plots as images) stands in where no kernel has the widget (see
    # test_saved_notebook_and_its_html_show_the_jobs_offline).
    ended = out.locator(".cb-job-output-live .cloudbutton-job-widget")
    ended.wait_for(timeout=60_000)
    assert out.locator(".cloudbutton-job").count() == 1
    assert out.locator("img.cloudbutton-plot").count() == 0
    assert "20 done · 0 failed" in ended.locator(".cloudbutton-header").inner_text()

    row = panel.locator(".cb-job.cb-state-done").first
    row.wait_for(timeout=30_000)
    assert "20/20 done" in row.inner_text()
    assert "demo.ipynb" in row.inner_text()
    assert panel.locator(".cb-jobs-message").inner_text().startswith("Jobs from demo.ipynb")

    # The job's detail replaces the list in place: tasks, timeline, and a way back.
    row.click()
    detail = panel.locator(".cb-detail")
    detail.locator(".cb-tasks tbody tr").first.wait_for()
    assert detail.locator(".cb-tasks tbody tr").count() == 20
    assert detail.locator(".cb-timeline rect").count() >= 20
    assert "seconds since the job started" in detail.locator(".cb-timeline").text_content()
    assert not panel.locator(".cb-jobs").is_visible()
    _wait_kernel_idle(page)
    page.wait_for_timeout(500)
    _cell(page, 1).screenshot(path=str(ARTIFACTS / "browser-widget.png"))
    page.screenshot(path=str(ARTIFACTS / "browser-lab.png"))
    detail.locator(".cb-detail-back").click()
    panel.locator(".cb-jobs .cb-job").first.wait_for()
    assert not detail.is_visible()

    # The job is listed over REST too.
    jobs = json.loads(urllib.request.urlopen(
        f"{lab['base']}/cloudbutton/jobs?token={lab['token']}").read())
    assert jobs[0]["state"] == "done" and jobs[0]["n_items"] == 20

    # The results are in the notebook's namespace: a cell run after the job prints them.
    _select_cell(page, 5)
    page.keyboard.press("Shift+Enter")
    printed = _cell(page, 5).locator(".jp-OutputArea-output:has-text('squares:')")
    printed.wait_for(timeout=30_000)
    assert printed.inner_text().strip() == f"squares: {[x * x for x in range(20)]}"


def _set_sidebar_width(page, width):
    """Drag the handle between the left sidebar and the main area."""
    box = page.locator("#jp-left-stack").bounding_box()
    handle_x = box["x"] + box["width"] + 2
    y = box["y"] + box["height"] / 2
    page.mouse.move(handle_x, y)
    page.mouse.down()
    page.mouse.move(box["x"] + width + 2, y, steps=5)
    page.mouse.up()
    page.wait_for_timeout(300)


def _clipped_elements(locator):
    """Elements inside ``locator`` whose right edge is past the panel's visible right edge."""
    return locator.evaluate("""root => {
        const panel = root.closest('#cloudbutton-panel');
        const right = panel.getBoundingClientRect().right;
        const out = [];
        for (const el of [root, ...root.querySelectorAll('*')]) {
            const r = el.getBoundingClientRect();
            if (r.width && r.right > right + 0.5) out.push(el.tagName + '.' + el.className);
        }
        if (panel.scrollWidth > panel.clientWidth + 1) out.push('panel scrolls sideways');
        return out;
    }""")


def test_detail_view_fits_a_300px_sidebar(page, lab):
    panel = _open_panel(page)
    _set_sidebar_width(page, 300)
    width = panel.bounding_box()["width"]
    assert 285 <= width <= 315, width
    panel.locator(".cb-job.cb-state-done").first.click()
    detail = panel.locator(".cb-detail")
    detail.locator(".cb-tasks tbody tr").first.wait_for()
    assert _clipped_elements(detail) == []
    assert _clipped_elements(panel.locator(".cb-backend-section")) == []
    # Long values are cut with an ellipsis and whole in their tooltip.
    meta = detail.locator(".cb-job-meta")
    assert meta.get_attribute("title").endswith("· local")
    panel.screenshot(path=str(ARTIFACTS / "browser-panel-300px-detail.png"))
    detail.locator(".cb-detail-back").click()
    panel.locator(".cb-jobs .cb-job").first.wait_for()
    assert _clipped_elements(panel.locator(".cb-jobs-section")) == []
    panel.screenshot(path=str(ARTIFACTS / "browser-panel.png"))


def test_list_shows_this_notebooks_jobs_unless_asked_for_all(page, lab):
    from cloudbutton_executor import Executor
    from cloudbutton_executor.storage import LocalStorage

    with Executor(workers=1, storage=LocalStorage(str(lab["storage"]))) as ex:
        other = ex.map(abs, [-1, -2], label="/elsewhere/other.ipynb")
        other.result(timeout=60)
    panel = _open_panel(page)
    rows = panel.locator(".cb-jobs .cb-job")
    page.wait_for_timeout(2500)  # a poll or two
    assert panel.locator(f".cb-job[data-job-id='{other.job_id}']").count() == 0
    n_mine = rows.count()
    panel.locator(".cb-all-jobs").check()
    panel.locator(f".cb-job[data-job-id='{other.job_id}']").wait_for()
    assert rows.count() == n_mine + 1
    assert "other.ipynb" in panel.locator(f".cb-job[data-job-id='{other.job_id}']").inner_text()
    panel.locator(".cb-all-jobs").uncheck()
    panel.locator(f".cb-job[data-job-id='{other.job_id}']").wait_for(state="detached")


def test_cancel_long_job_while_kernel_is_busy(page, lab):
    panel = _open_panel(page)
    panel.locator(".cb-iterable").fill("range(50)")
    panel.locator(".cb-as").fill("x")
    # This time through the keyboard shortcut on the selected cell.
    _select_cell(page, 2)
    page.keyboard.press("Alt+Shift+Enter")

    running = panel.locator(".cb-job.cb-state-running")
    running.wait_for(timeout=60_000)
    live = _cell(page, 2).locator(".cloudbutton-job-widget")
    live.wait_for(timeout=30_000)
    # Until a task ends, a sentence stands in for the plots; then the live bokeh plots,
    # drawn at the output's full width.
    live.locator("text=No task has ended yet").wait_for(timeout=10_000)
    live.locator("canvas").first.wait_for(timeout=30_000)
    assert live.locator(".bk-Figure, .bk-Column").first.bounding_box()["width"] > 500
    assert not live.locator("text=No task has ended yet").is_visible()
    # The kernel is busy with the cell: a comm-based cancel could not get through.
    assert _kernel_status(page, "Busy").count() == 1
    job_id = running.first.get_attribute("data-job-id")
    t0 = time.time()
    running.first.locator(".cb-job-cancel").click()

    panel.locator(f".cb-job.cb-state-cancelled[data-job-id='{job_id}']").wait_for(timeout=30_000)
    assert (lab["storage"] / "cloudbutton" / "jobs" / job_id / "cancel").exists()
    # The kernel's executor saw the marker: the cell ends long before 30 s x 50 items.
    _wait_kernel_idle(page, timeout=30)
    assert time.time() - t0 < 30
    # The panel says how the cancel ended, and keeps saying it across refreshes.
    action = panel.locator(".cb-action-message")
    action.locator(f"text=Job {job_id} cancelled").wait_for(timeout=10_000)
    page.wait_for_timeout(4500)  # two polls later, still there
    assert f"Job {job_id} cancelled: " in action.inner_text()
    # The cell says cancelled, never failed.
    out = _cell(page, 2).locator(".jp-OutputArea")
    out.locator(".cloudbutton-job .cb-state:has-text('cancelled')").wait_for(timeout=30_000)
    text = out.inner_text()
    assert "was cancelled: 2 of 50 done, 48 cancelled" in text and "tasks failed" not in text
    assert "0 failed" in text and " failed</" not in out.inner_html()
    page.wait_for_timeout(500)
    panel.screenshot(path=str(ARTIFACTS / "browser-panel-cancelled.png"))
    _cell(page, 2).screenshot(path=str(ARTIFACTS / "browser-widget-cancelled.png"))


def test_run_cell_over_a_storage_path(page, lab):
    """"Run cell over…" takes a storage path: the cell runs once per object, each run
    getting its chunk as ``obj`` (no element name typed)."""
    data = lab["tmp"] / "corpus"
    data.mkdir(exist_ok=True)
    for i in range(3):
        (data / f"part-{i}.txt").write_bytes(b"word\n" * (i + 1))
    panel = _open_panel(page)
    panel.locator(".cb-iterable").fill(f"{data}/")
    panel.locator(".cb-as").fill("")
    _select_cell(page, 6)
    panel.locator(".cb-run").click()
    out = _cell(page, 6).locator(".jp-OutputArea")
    out.locator(".cloudbutton-header:has-text('3 done')").wait_for(timeout=90_000)
    assert "0 failed" in out.locator(".cloudbutton-header").first.inner_text()
    _wait_kernel_idle(page)


def test_syntax_error_names_the_users_own_line(page, lab):
    """The panel adds the %%cloud line the user's cell does not have: the error still
    names the line as the user sees it, with a caret under the culprit."""
    panel = _open_panel(page)
    panel.locator(".cb-iterable").fill("xs")
    panel.locator(".cb-as").fill("x")
    _select_cell(page, 3)
    panel.locator(".cb-run").click()
    out = _cell(page, 3).locator(".jp-OutputArea")
    out.locator("text=syntax error in the cell").wait_for(timeout=30_000)
    text = out.inner_text()
    assert "syntax error in the cell, line 2: invalid syntax" in text, text
    lines = text.splitlines()
    k = next(i for i, line in enumerate(lines) if line.strip() == "z = (x +* 1)")
    assert lines[k + 1].index("^") == lines[k].index("*")
    _wait_kernel_idle(page)


def test_widget_and_panel_show_the_same_cost_and_time(page, lab):
    """One job, one truth: the cell and the panel compute elapsed time and cost with the
    same code (accounting) from the same statuses, and write money the same way."""
    import re

    _select_cell(page, 4)
    page.keyboard.press("Shift+Enter")
    out = _cell(page, 4).locator(".jp-OutputArea")
    header = out.locator(".cloudbutton-job .cloudbutton-header").first
    # A running job's output shows its header too (refreshed while it runs): read the
    # figures once nothing runs or waits any more.
    end = time.time() + 60
    while True:
        header.wait_for(timeout=60_000)
        text = header.inner_text()
        if re.search(r"(?<!\d)0 running · 0 queued", text) or time.time() > end:
            break
        page.wait_for_timeout(200)
    widget_cost = re.search(r"(< )?\$[0-9.,]+(?= on Lambda)", text).group(0)
    widget_time = re.search(r"elapsed ([0-9.]+) s", text).group(1)
    assert widget_cost.startswith("$0.000")  # about 6 x 0.3 s x 10 GB: a few hundredths of a cent
    job_id = re.search(r"job (\d{8}-\d{6}(?:\d{3})?-[0-9a-f]{6})", text).group(1)
    panel = _open_panel(page)
    # Compared once the panel has seen the job end (a poll may show it running, costing less).
    row = panel.locator(f".cb-job.cb-state-done[data-job-id='{job_id}']")
    row.wait_for(timeout=30_000)
    assert row.locator(".cb-job-cost").inner_text() == widget_cost
    assert row.locator(".cb-job-duration").inner_text() == f"{widget_time} s"
    _wait_kernel_idle(page)


def test_saved_notebook_and_its_html_show_the_jobs_offline(page, lab, browser, tmp_path):
    """What stays: the saved .ipynb carries the static rendering (HTML + PNG plots, no
    widget view), and nbconvert's HTML shows it with the network cut."""
    import base64
    import re

    import nbformat
    from nbconvert import HTMLExporter

    page.keyboard.press("Control+s")
    page.wait_for_timeout(1500)
    nb = nbformat.read(lab["tmp"] / "root" / "demo.ipynb", as_version=4)
    outputs = [o for o in nb.cells[1].outputs if "text/html" in o.get("data", {})]
    (out,) = [o for o in outputs if "cloudbutton-job" in o["data"]["text/html"]]
    assert "application/vnd.jupyter.widget-view+json" not in out["data"]
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", out["data"]["text/html"])
    assert len(pngs) == 2 and all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pngs)
    size = (lab["tmp"] / "root" / "demo.ipynb").stat().st_size
    assert size < 400_000, size

    # Reopened elsewhere (untrusted: its signature does not match), with a new kernel, the
    # lab still shows the plots: they are images in sanitised HTML, not widgets.
    nb.metadata["reopened"] = True
    nbformat.write(nb, lab["tmp"] / "root" / "reopened.ipynb")
    pg = page.context.new_page()
    try:
        pg.goto(f"{lab['base']}/lab/tree/reopened.ipynb?token={lab['token']}")
        imgs = pg.locator(".jp-NotebookPanel:visible .jp-Cell").nth(1).locator(
            ".jp-OutputArea-output img")
        imgs.first.wait_for(timeout=60_000)
        assert imgs.count() == 2
        for i in range(2):
            assert imgs.nth(i).evaluate("img => img.complete && img.naturalWidth > 300")
        pg.locator(".jp-NotebookPanel:visible .jp-Cell").nth(1).screenshot(
            path=str(ARTIFACTS / "reopened-untrusted.png"))
    finally:
        pg.close()

    body, _ = HTMLExporter().from_notebook_node(nb)
    html_path = tmp_path / "demo.html"
    html_path.write_text(body, encoding="utf-8")
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    blocked = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
        ("file:", "data:")) else (blocked.append(route.request.url), route.abort()))
    context.set_offline(True)
    try:
        pg = context.new_page()
        pg.goto(html_path.as_uri())
        plots = pg.locator("img.cloudbutton-plot")
        assert plots.count() >= 2  # the 20-item job; the cancelled one ran nothing to plot
        for i in range(plots.count()):
            assert plots.nth(i).evaluate("img => img.complete && img.naturalWidth > 300")
        assert "20 done · 0 failed" in pg.locator(".cloudbutton-job").first.inner_text()
        pg.locator(".cloudbutton-job").first.screenshot(path=str(ARTIFACTS / "nbconvert-offline.png"))
    finally:
        context.close()


def test_a_lost_job_is_finished_from_the_panel(page, lab, tmp_path, monkeypatch):
    """A job whose kernel died (its host killed mid-job) shows as lost; "Finish" runs
    `%cloud attach` in the current notebook's kernel, which finishes it."""
    from cloudbutton_executor import integrity, protocol
    from cloudbutton_executor.storage import LocalStorage
    from test_resume import run_host

    # The lab's kernel seals and verifies with the lab's host key: so does this job's host.
    monkeypatch.setenv("CLOUDBUTTON_KEY_FILE", str(lab["key_file"]))
    env = dict(os.environ, CLOUDBUTTON_STORAGE_DIR=str(lab["storage"]))
    job_id = run_host(tmp_path, n=12, workers=1, sleep=0.2, die_after=2, env=env)
    # Age its dispatch record (sealed again with the job's key, as its host would have):
    # the panel calls a job lost once its host stopped writing it, 30 s later.
    storage = LocalStorage(str(lab["storage"]))
    rkey = protocol.dispatch_key("cloudbutton", job_id)
    key = integrity.job_key(job_id)
    record = integrity.open_sealed(key, protocol.object_name("cloudbutton", rkey), storage.get(rkey))
    record.update(updated=time.time() - 600, deadline=time.time() - 600)
    storage.put(rkey, integrity.seal(key, protocol.object_name("cloudbutton", rkey), record))

    panel = _open_panel(page)
    panel.locator(".cb-all-jobs").check()
    row = panel.locator(f".cb-job.cb-state-lost[data-job-id='{job_id}']")
    row.wait_for(timeout=30_000)
    _select_cell(page, 4)
    row.locator(".cb-job-finish").click()
    panel.locator(f".cb-job.cb-state-done[data-job-id='{job_id}']").wait_for(timeout=60_000)
    cell = _cell(page, 5)  # inserted below the selected cell
    assert f"%cloud attach {job_id}" in cell.locator(".jp-InputArea").inner_text()
    cell.locator(".cloudbutton-job:has-text('12 done')").wait_for(timeout=30_000)
    assert "already loaded" not in cell.inner_text()  # the magics were loaded silently
    _wait_kernel_idle(page)
    panel.locator(".cb-all-jobs").uncheck()


def _run_cell_with(page, text):
    cell = page.locator(f".jp-NotebookPanel:visible .jp-Cell:has-text({text!r})").first
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")
    _wait_kernel_idle(page)
    return cell


def test_a_click_on_a_bar_shows_its_task_and_failed_items_are_rerun(page, lab):
    """The panel's job detail: a click on a task's bar (or its row) shows what it did;
    "Re-run 2 failed" runs `%cloud rerun` in the notebook's kernel, which computes only the
    failed items again into the results."""
    _cell(page, 0).wait_for()
    _wait_kernel_idle(page)
    _run_cell_with(page, "rerun-fixed")
    flaky = _run_cell_with(page, "-o flaky")
    flaky.locator(".cloudbutton-job:has-text('2 failed')").first.wait_for(timeout=60_000)
    panel = _open_panel(page)
    row = panel.locator(".cb-job.cb-state-failed:has-text('3/5 done')").first
    row.wait_for(timeout=30_000)
    job_id = row.get_attribute("data-job-id")
    row.click()
    detail = panel.locator(".cb-detail")
    bar = detail.locator(".cb-tl-bar[data-task='000000-000001']").first
    bar.wait_for()
    assert " spent at Lambda prices" in detail.locator(".cb-detail-cost").inner_text()
    assert "compute" in detail.locator(".cb-phases").inner_text()  # where the time went
    assert detail.locator(".cb-task-detail").inner_text() == ""
    bar.click()
    box = detail.locator(".cb-task-detail")
    box.locator(".cb-task-facts").wait_for()
    text = box.inner_text()
    assert "task 000000-000001" in text and "items 0" in text and "1 attempt" in text
    assert "warm start" in text or "cold start" in text
    assert "compute:" in text and "queue/invoke:" in text
    assert "ZeroDivisionError" in text and "1 // 0" in text  # its item's remote traceback
    page.wait_for_timeout(2500)  # the panel refreshes: the task shown stays shown
    assert "task 000000-000001" in box.inner_text()
    panel.screenshot(path=str(ARTIFACTS / "browser-panel-task-detail.png"))
    detail.locator(".cb-tasks tbody tr[data-task='000002-000003']").click()
    assert "task 000002-000003" in box.inner_text() and "ZeroDivisionError" not in box.inner_text()
    # A task that succeeded shows its input and what it printed too.
    assert box.locator(".cb-task-input").inner_text() == "item 2 input: 2"
    assert box.locator(".cb-task-stdout").inner_text().strip() == "ran 2"

    (lab["tmp"] / "root" / "rerun-fixed").write_text("")  # the cause is fixed
    flaky.locator(".jp-InputPrompt").click()  # %cloud rerun goes in a new cell below
    detail.locator(".cb-rerun-failed:has-text('Re-run 2 failed')").click()
    rerun = page.locator(f".jp-NotebookPanel:visible .jp-Cell:has-text('%cloud rerun {job_id}')")
    rerun.locator(f"text=job {job_id}: 5 of 5 done, 0 failed after re-running 2 items").wait_for(
        timeout=60_000)
    _wait_kernel_idle(page)
    rerun.screenshot(path=str(ARTIFACTS / "browser-rerun-failed.png"))
    # The original job links to its re-run and what it came to, in the detail and the list.
    detail.locator(".cb-detail-rerun:has-text('all succeeded')").wait_for(timeout=30_000)
    assert detail.locator(".cb-detail-rerun").inner_text().startswith("failed → re-run as ")
    detail.locator(".cb-detail-back").click()
    link = panel.locator(f".cb-job[data-job-id='{job_id}'] .cb-job-rerun")
    link.wait_for()
    again = link.inner_text().split("re-run as ")[1].split(":")[0]
    assert link.inner_text() == f"failed → re-run as {again}: all succeeded"
    assert panel.locator(f".cb-job[data-job-id='{again}'] .cb-job-rerun-of").inner_text() == \
        f"re-run of {job_id}"
    panel.screenshot(path=str(ARTIFACTS / "browser-panel-rerun-link.png"))


def _bar_under_the_mouse(page, canvas):
    """Move the mouse over ``canvas`` until the timeline's hover tool names a task; returns
    that point (a real bar, found the way a user finds one)."""
    box = canvas.bounding_box()
    tip = page.locator(".bk-tooltip-content:has-text('task')")
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
        for fx in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.9):
            x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
            page.mouse.move(x, y)
            page.wait_for_timeout(60)
            if tip.count() and tip.first.is_visible():
                return x, y, tip.first.inner_text()
    raise AssertionError("no timeline bar under the mouse anywhere on the plot")


def test_a_click_on_a_bar_of_the_widget_shows_its_task_after_the_job(page, lab):
    """The cell's own widget: once the job has ended (the kernel idle, the cell done), a
    click on a bar of its bokeh timeline shows that task's input, stdout and timings."""
    import re

    _cell(page, 0).wait_for()
    _wait_kernel_idle(page)
    _run_cell_with(page, "rerun-fixed")  # %load_ext cloudbutton_jupyter
    cell = _run_cell_with(page, "-o doubled")
    out = cell.locator(".jp-OutputArea")
    live = out.locator(".cb-job-output-live .cloudbutton-job-widget")
    live.locator(".cloudbutton-header:has-text('finished')").wait_for(timeout=60_000)
    _wait_kernel_idle(page)  # the cell has ended: a click reaches the kernel at once
    # The ended job's output: its widget, not only the images.
    assert "3 done · 0 failed" in live.locator(".cloudbutton-header").inner_text()
    canvas = live.locator("canvas").first
    canvas.wait_for()
    x, y, tip = _bar_under_the_mouse(page, canvas)
    item = int(re.search(r"items\s*:?\s*(\d+)", tip).group(1))
    page.mouse.click(x, y)
    detail = live.locator(".cloudbutton-task")
    detail.wait_for(timeout=15_000)
    text = detail.inner_text()
    assert f"item {item} · state done" in text
    assert f"input: {item}" in text and f"tapped {item}" in text
    assert "compute" in text and ("warm start" in text or "cold start" in text)
    cell.screenshot(path=str(ARTIFACTS / "browser-widget-bar-click.png"))


def test_a_job_stopped_by_its_budget_says_so_in_the_panel(page, lab):
    """The panel's list and detail show the budget's stop line (what was projected against
    the budget) and the money: spent and the budget."""
    import re

    _cell(page, 0).wait_for()
    _wait_kernel_idle(page)
    _run_cell_with(page, "rerun-fixed")  # %load_ext cloudbutton_jupyter
    cell = _run_cell_with(page, "-o capped")
    header = cell.locator(".cloudbutton-header")
    header.locator(".cb-budget-stop").wait_for(timeout=60_000)
    job_id = re.search(r"job (\d{8}-\d{6}(?:\d{3})?-[0-9a-f]{6})", header.inner_text()).group(1)
    panel = _open_panel(page)
    row = panel.locator(f".cb-job[data-job-id='{job_id}']")
    stop = row.locator(".cb-job-stopped")
    stop.wait_for(timeout=30_000)
    line = stop.inner_text()
    assert line.startswith("stopped by its budget: its projected total of $"), line
    assert "would pass its budget of $0.0002" in line and "of 60 items have results" in line
    projected = float(re.search(r"projected total of \$([0-9.]+)", line).group(1))
    assert projected > 0.0002
    assert "cb-state-cancelled" in row.get_attribute("class")  # stopped, never "failed"
    cost = row.locator(".cb-job-cost")
    assert re.fullmatch(r"(< )?\$[0-9.]+", cost.inner_text())
    assert cost.get_attribute("title").endswith("spent · budget $0.0002 (" + line + ")")
    row.click()
    detail = panel.locator(".cb-detail")
    detail.locator(".cb-detail-stopped").wait_for()
    assert detail.locator(".cb-detail-stopped").inner_text() == line
    spent = detail.locator(".cb-detail-cost").inner_text()
    assert re.search(r"\$[0-9.]+ spent · budget \$0\.0002 at Lambda prices", spent), spent
    panel.screenshot(path=str(ARTIFACTS / "browser-panel-budget-stop.png"))
    detail.locator(".cb-detail-back").click()


def test_missing_server_extension_is_reported(browser, tmp_path):
    """Without the server extension the panel says what to do instead of failing silently."""
    with running_lab(tmp_path, server_extension=False) as lab:
        pg = open_notebook(browser, lab)
        try:
            pg.locator(".jp-SideBar [data-id='cloudbutton-panel']").click()
            panel = pg.locator("#cloudbutton-panel")
            panel.locator(".cb-jobs-message.cb-error:has-text('is the server extension enabled?')") \
                .wait_for()
            assert "is the server extension enabled?" in panel.locator(".cb-backend-section").inner_text()
            panel.screenshot(path=str(ARTIFACTS / "browser-panel-no-server-extension.png"))
        finally:
            pg.context.close()
