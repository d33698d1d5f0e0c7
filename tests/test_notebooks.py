"""CI runs every example notebook (nbclient) and checks what it shows, not only that it ran.

Each notebook prints one ``CLOUDBUTTON_SUMMARY {json}`` line with its numbers;
the widgets are checked in the saved widget state (what a reopened notebook
shows): the job header's counts and the rows of the bokeh ColumnDataSources.
Sizes are the small ones (``CLOUDBUTTON_DEMO_SCALE=small``); jobs go to a
temporary storage dir. The quickstart and the benchmark are checked through
``python -m cloudbutton_jupyter.demo`` (what ``make demo`` runs), so they run once.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hermetic

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = {"quickstart", "gflops_benchmark", "monte_carlo", "hyperparameter_search",
             "batched_scraping", "lambda_setup", "word_count"}
VIEW = "application/vnd.jupyter.widget-view+json"
MARK = "CLOUDBUTTON_SUMMARY "


# --- helpers -------------------------------------------------------------------------
def run_notebook(name: str, tmp_path: Path, timeout: float = 240):
    from nbclient import NotebookClient

    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    env = {"CLOUDBUTTON_STORAGE_DIR": str(tmp_path / "storage"), "CLOUDBUTTON_DEMO_SCALE": "small"}
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this environment
        for k, v in env.items():
            mp.setenv(k, v)
        NotebookClient(nb, kernel_name="python3", timeout=timeout,
                       resources={"metadata": {"path": str(NB_DIR)}}).execute()
    return nb


def summary(nb) -> dict:
    lines = [line[len(MARK):] for c in nb.cells for o in c.get("outputs", [])
             if o.get("output_type") == "stream" for line in o.get("text", "").splitlines()
             if line.startswith(MARK)]
    assert len(lines) == 1, f"expected one summary line, got {len(lines)}"
    return json.loads(lines[0])


def job_widgets(nb) -> list[dict]:
    """Per job shown, in order: what its output keeps once the job has ended (the static
    rendering: header HTML, the PNG plots and how many rows and points they drew)."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            page = data.get("text/html", "")
            if "class='cloudbutton-job'" not in page:
                continue
            assert VIEW not in data  # the live widget is gone: the rendering needs no kernel
            plots = {kind: (int(points), alt) for kind, alt, points, png in re.findall(
                r"cloudbutton-(timeline|rates)' alt='([^']*)' data-points='(\d+)'.*?"
                r"src='data:image/png;base64,([A-Za-z0-9+/=]{100,})'", page)}
            out.append({"header": page, "timeline_rows": plots.get("timeline", (0, ""))[0],
                        "series_rows": plots.get("rates", (0, ""))[0],
                        "doc": " ".join(alt for _, alt in plots.values()),
                        "cell": cell.source})
    return out


def assert_done(widget, n: int):
    assert f"{n} done · 0 failed · 0 running · 0 queued" in widget["header"], widget["header"]
    assert widget["timeline_rows"] > 0 and widget["series_rows"] > 0


# --- the committed notebooks ----------------------------------------------------------
def test_committed_notebooks_are_generated_and_clean():
    assert {p.stem for p in NB_DIR.glob("*.ipynb")} == NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert "widgets" not in nb.metadata, name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (name, cell.source[:40])
    # The .ipynb files are what _build.py writes (edits go to the generator).
    check = subprocess.run([sys.executable, str(NB_DIR / "_build.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# --- make demo: quickstart + gflops_benchmark -------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out_dir = tmp / "build" / "demo"
    # Module-scoped, so set up before the per-test hermetic environment: make its own.
    env = hermetic.environ(tmp, CLOUDBUTTON_STORAGE_DIR=str(tmp / "storage"))
    env.pop("CLOUDBUTTON_DEMO_SCALE", None)  # --scale small must set it
    proc = subprocess.run([sys.executable, "-m", "cloudbutton_jupyter.demo", "--scale", "small",
                           "--out", str(out_dir)], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=280)
    return proc, out_dir


def test_make_demo_writes_notebooks_html_and_summary(demo):
    proc, out_dir = demo
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("quickstart", "gflops_benchmark"):
        nb_path, html_path = out_dir / f"{name}.ipynb", out_dir / f"{name}.html"
        assert nb_path.stat().st_size > 0 and html_path.stat().st_size > 0
        html = html_path.read_text(encoding="utf-8")
        assert "<html" in html and MARK.strip() in html  # outputs made it into the export
    # The jobs show in the HTML as images (their static rendering), without widgets.
    page = (out_dir / "quickstart.html").read_text(encoding="utf-8")
    plots = re.findall(r"""class=["']cloudbutton-plot [^>]*src=["']data:image/png;base64,""", page)
    assert len(plots) == 4  # two %%cloud jobs, two plots each
    saved = nbformat.read(out_dir / "quickstart.ipynb", as_version=4)
    assert "widgets" not in saved.metadata
    assert (out_dir / "quickstart.ipynb").stat().st_size < 200_000
    # What ran is the committed notebook, not the working file.
    committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:notebooks/quickstart.ipynb"],
                               capture_output=True, check=True).stdout
    assert (out_dir / "src" / "notebooks" / "quickstart.ipynb").read_bytes() == committed
    para = proc.stdout.strip().splitlines()[-1]
    assert "GFLOPS effective" in para and "peak in flight" in para, para
    assert "results correct" in para and str(out_dir) in para, para
    gf = summary(nbformat.read(out_dir / "gflops_benchmark.ipynb", as_version=4))
    assert f"{gf['effective_gflops']:.2f} GFLOPS effective" in para


def test_quickstart_results_and_widgets(demo):
    _, out_dir = demo
    nb = nbformat.read(out_dir / "quickstart.ipynb", as_version=4)
    s = summary(nb)
    assert s["magic_results"] == list(range(1, 11))  # PyWren's add-one, via %%cloud map
    assert s["api_results"] == list(range(1, 11))    # ... and via Executor().map
    assert s["described"] == 20
    results_cell = next(c for c in nb.cells if c.source == "results")
    assert "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in results_cell.outputs[0]["data"]["text/plain"]
    widgets = job_widgets(nb)
    assert [w["cell"].splitlines()[0] for w in widgets] == [
        "%%cloud map xlist as x", "%%cloud map words as word -o described"]
    assert_done(widgets[0], 10)
    assert_done(widgets[1], 20)
    assert widgets[0]["timeline_rows"] == 10 and widgets[1]["timeline_rows"] == 20
    assert "working on pywren" in widgets[1]["header"]  # the tasks' stdout


def test_gflops_benchmark_flops_and_plots(demo):
    _, out_dir = demo
    nb = nbformat.read(out_dir / "gflops_benchmark.ipynb", as_version=4)
    s = summary(nb)
    assert (s["n"], s["loopcnt"], s["tasks"]) == (256, 3, 8)  # the small scale
    assert s["finite_results"] == s["tasks"]
    assert s["reported_flops"] == s["expected_flops"] == 8 * 3 * 2 * 256 ** 3
    assert s["total_gflop"] == pytest.approx(s["expected_flops"] / 1e9, rel=1e-3)
    assert 0 < s["effective_gflops"] <= s["peak_inflight_gflops"]
    assert s["effective_gflops"] == pytest.approx(s["total_gflop"] / s["wall_s"], rel=0.01)
    (w,) = job_widgets(nb)
    assert_done(w, 8)
    assert w["timeline_rows"] == 8
    assert "Effective GFLOPS" in w["doc"]  # the rate plot switched to FLOPs mode
    assert "GFLOPS" in w["header"]
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "queue + invoke" in text and "GFLOPS peak in flight" in text


# --- the other notebooks ---------------------------------------------------------------
def test_monte_carlo_pi_and_black_scholes(tmp_path):
    nb = run_notebook("monte_carlo", tmp_path)
    s = summary(nb)
    assert abs(s["pi"] - math.pi) < 0.01
    assert s["points"] == 8 * 200_000
    assert s["bs_price"] == pytest.approx(8.0214, abs=1e-3)  # S0 100, K 105, r 5%, σ 20%, 1 y
    assert abs(s["mc_price"] - s["bs_price"]) < max(4 * s["mc_stderr"], 1e-9)
    assert 0 < s["mc_stderr"] < 0.05
    widgets = job_widgets(nb)
    assert len(widgets) == 2  # the two map jobs behind map_reduce
    for w in widgets:
        assert_done(w, 8)


def test_hyperparameter_search_finds_best_k(tmp_path):
    nb = run_notebook("hyperparameter_search", tmp_path)
    s = summary(nb)
    assert s["model_types"] == ["KNeighborsClassifier"]  # trained models came back
    assert s["model_ks"] == s["ks"]                       # in input order
    accs = dict(zip(s["ks"], s["accuracies"]))
    assert s["best_k"] == max(accs, key=accs.get)
    assert s["best_accuracy"] > 0.85 and s["best_accuracy"] > accs[1]
    (w,) = job_widgets(nb)
    assert_done(w, len(s["ks"]))
    assert w["timeline_rows"] == len(s["ks"])


def test_batched_scraping_batches_win(tmp_path):
    nb = run_notebook("batched_scraping", tmp_path)
    s = summary(nb)
    n = s["pages"]
    one, b20, auto = (s["modes"][k] for k in ("one page per task", "batches of 20", "auto"))
    assert s["titles_ok"] and s["ids"] == list(range(n))
    assert one["invocations"] == n and b20["invocations"] == math.ceil(n / 20)
    assert auto["invocations"] < n
    for m in (one, b20, auto):
        assert m["logins"] == m["invocations"]  # one session per invocation: the overhead
    assert b20["wall_s"] < one["wall_s"] and auto["wall_s"] < one["wall_s"]
    widgets = job_widgets(nb)
    assert len(widgets) == 3
    for w in widgets:
        assert_done(w, n)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_word_count_over_objects(where, tmp_path, monkeypatch, request):
    """The data-driven map notebook: generated text in a local directory, or in a moto
    bucket over HTTP (the config file's S3 endpoint); every word counted exactly once."""
    if where == "s3":
        import yaml

        endpoint, bucket = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("s3_bucket")
        cfg = tmp_path / "config.yaml"
        cfg.write_text(yaml.safe_dump({"endpoints": {"s3": endpoint}, "region": "us-east-1"}))
        monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(cfg))
        monkeypatch.setenv("WORDCOUNT_DATA", f"s3://{bucket}/corpus/")
    else:
        monkeypatch.delenv("WORDCOUNT_DATA", raising=False)
    nb = run_notebook("word_count", tmp_path)
    s = summary(nb)
    assert s["correct"] and s["words"] == s["expected_words"] > 0
    assert s["data"].startswith("s3://") == (where == "s3")
    assert s["bytes_read"] == s["bytes"]  # every byte read by exactly one task
    assert s["tasks"] > s["objects"] == 8  # objects were split into chunks
    assert s["median_task_mib_s"] > 0 and s["aggregate_mib_s"] > 0
    (w,) = job_widgets(nb)
    assert_done(w, s["tasks"])


def test_lambda_setup_against_the_emulator(tmp_path, deployed, lambda_config, lambda_emulator,
                                          s3_proxy):
    """The notebook deploys and runs against moto + the awslambdaric emulator ($CLOUDBUTTON_CONFIG).
    (After the session's first deploy, whatever the order: that one must create everything.)"""
    from lambda_emulator import Faults

    lambda_emulator.reset(Faults())
    s3_proxy.error_rate = 0.0
    before = lambda_emulator.counts["invocations_run"]
    nb = run_notebook("lambda_setup", tmp_path, timeout=200)
    s = summary(nb)
    assert s["backend"] == "lambda"
    assert s["magic_results"] == [x * x for x in range(20)]
    assert s["api_results"] == list(range(1, 11))
    assert s["invocations"] == 10 and s["cost_usd"] > 0
    assert lambda_emulator.counts["invocations_run"] - before >= 30  # really ran in the emulator
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "Deploying" in text and lambda_config in text
    (w,) = job_widgets(nb)
    assert_done(w, 20)
    assert "lambda" in w["header"]
