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
                  code("import time\ntime.sleep(30)\nx"),
                  code("print('squares:', results)")],
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
    env = hermetic.environ(tmp,  # the lab's own config, cache and (no) AWS account
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
        yield {"base": base, "token": token, "tmp": tmp, "storage": tmp / "storage"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def lab(tmp_path):
    """A lab of its own per test: no test sees another's jobs, whatever the order."""
    with running_lab(tmp_path) as info:
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


@pytest.fixture
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
    panel.locator(".cb-jobs-message:has-text('No jobs yet')").wait_for()  # after the first poll

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
    widget = out.locator(".cloudbutton-job-widget")
    widget.wait_for(timeout=60_000)
    out.locator(".cloudbutton-header:has-text('20 done')").wait_for(timeout=90_000)
    # The cell's source is not rewritten.
    assert "%%cloud" not in _cell(page, 1).locator(".jp-InputArea").inner_text()
    assert _cell(page, 1).locator(".jp-InputArea").inner_text().strip().endswith("x * x")

    row = panel.locator(".cb-job.cb-state-done").first
    row.wait_for(timeout=30_000)
    assert "20/20 done" in row.inner_text()
    assert "demo.ipynb" in row.inner_text() and "local" in row.inner_text()

    # The job's detail view: one row per task and a timeline.
    row.click()
    panel.locator(".cb-detail .cb-tasks tbody tr").first.wait_for()
    assert panel.locator(".cb-detail .cb-timeline rect").count() > 0
    _wait_kernel_idle(page)
    page.wait_for_timeout(500)  # let the widget's plot settle for the screenshot
    _cell(page, 1).screenshot(path=str(ARTIFACTS / "browser-widget.png"))
    panel.screenshot(path=str(ARTIFACTS / "browser-panel.png"))
    page.screenshot(path=str(ARTIFACTS / "browser-lab.png"))
    row.click()  # close the detail view

    jobs = json.loads(urllib.request.urlopen(
        f"{lab['base']}/cloudbutton/jobs?token={lab['token']}").read())
    assert jobs[0]["state"] == "done" and jobs[0]["n_items"] == 20

    # The results are in the notebook's namespace: a cell run after the job prints them.
    _select_cell(page, 3)
    page.keyboard.press("Shift+Enter")
    printed = _cell(page, 3).locator(".jp-OutputArea-output:has-text('squares:')")
    printed.wait_for(timeout=30_000)
    assert printed.inner_text().strip() == f"squares: {[x * x for x in range(20)]}"


def test_cancel_long_job_while_kernel_is_busy(page, lab):
    _cell(page, 0).wait_for()
    _wait_kernel_idle(page)
    panel = _open_panel(page)
    panel.locator(".cb-iterable").fill("range(50)")
    panel.locator(".cb-as").fill("x")
    # This time through the keyboard shortcut on the selected cell.
    _select_cell(page, 2)
    page.keyboard.press("Alt+Shift+Enter")

    running = panel.locator(".cb-job.cb-state-running")
    running.wait_for(timeout=60_000)
    _cell(page, 2).locator(".cloudbutton-job-widget").wait_for(timeout=30_000)
    # The kernel is busy with the cell: a comm-based cancel could not get through.
    # (The status bar may read "Idle" meanwhile: the panel's own silent requests end with an
    # idle status; the cell's [*] prompt is what says the kernel is still running it.)
    assert _cell(page, 2).locator(".jp-InputPrompt").inner_text().strip() == "[*]:"
    job_id = running.first.get_attribute("data-job-id")
    t0 = time.time()
    running.first.locator(".cb-job-cancel").click()

    panel.locator(f".cb-job.cb-state-cancelled[data-job-id='{job_id}']").wait_for(timeout=30_000)
    assert (lab["storage"] / "cloudbutton" / "jobs" / job_id / "cancel").exists()
    # The kernel's executor saw the marker: the cell ends long before 30 s x 50 items.
    _wait_kernel_idle(page, timeout=30)
    assert time.time() - t0 < 30
    page.wait_for_timeout(500)
    panel.screenshot(path=str(ARTIFACTS / "browser-panel-cancelled.png"))
    _cell(page, 2).screenshot(path=str(ARTIFACTS / "browser-widget-cancelled.png"))


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
