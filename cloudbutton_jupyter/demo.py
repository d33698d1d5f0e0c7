"""``make demo``: run the quickstart and the GFLOPS benchmark headlessly.

    python -m cloudbutton_jupyter.demo [--out build/demo] [--scale small] [NOTEBOOK ...]

Executes copies of the notebooks as committed (``git archive HEAD notebooks``,
never the working files, which JupyterLab autosaves as the user edits them) with
nbclient (the ``python3`` kernel of this environment), writes each with its
outputs plus a static HTML export under ``--out``, and prints a one-paragraph
summary read from the ``CLOUDBUTTON_SUMMARY {json}`` line each notebook prints at
its end. A finished job's output is its static rendering (HTML and PNG plots), so
the HTML shows the jobs without a kernel, widgets or network.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

DEFAULT_NOTEBOOKS = ("quickstart", "gflops_benchmark")
SUMMARY_MARK = "CLOUDBUTTON_SUMMARY "


def notebooks_dir() -> Path:
    """The repository's notebooks/ (the demo runs from a source checkout, as `make demo` does)."""
    here = Path(__file__).resolve().parent.parent / "notebooks"
    if not here.is_dir():
        raise FileNotFoundError(f"no notebooks directory at {here}: run the demo from a source checkout")
    return here


def committed_notebooks(dest: Path) -> Path:
    """``notebooks/`` as committed (git HEAD), extracted under ``dest``; its path.

    The notebooks' neighbours (local modules they import) come along; the working
    files are never read, so edits in progress cannot break (or be run by) the demo.
    """
    root = notebooks_dir().parent
    try:
        tar = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", "HEAD", "notebooks"],
                             check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        raise SystemExit(f"make demo runs the notebooks as committed in git, and `git archive` "
                         f"failed in {root}: {detail.decode(errors='replace').strip() or err}") from None
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    return dest / "notebooks"


def read_summary(nb) -> dict | None:
    """The JSON of the last ``CLOUDBUTTON_SUMMARY`` line in the notebook's stream outputs."""
    found = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") != "stream":
                continue
            for line in out.get("text", "").splitlines():
                if line.startswith(SUMMARY_MARK):
                    found = json.loads(line[len(SUMMARY_MARK):])
    return found


def execute(path: Path, out_dir: Path, timeout: float = 900) -> tuple[object, float, str | None]:
    """Run one notebook; write ``<name>.ipynb`` (with outputs) and ``<name>.html``.

    Returns (notebook, seconds, error). A failing cell still leaves both files,
    with the error in its outputs, so the user can see what happened.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    # No widget state: a finished job's output is its static rendering, and the state of
    # the closed widgets would only weigh the notebook down.
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout, store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # The kernel's own stdout/stderr (its warnings, the local workers' logs) go to a log
    # file: the terminal keeps only the progress lines and the summary.
    with open(out_dir / f"{path.stem}.kernel.log", "wb") as log:
        try:
            client.execute(stdout=log, stderr=log)
        except CellExecutionError as exc:
            error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    elapsed = time.time() - t0
    nbformat.write(nb, out_dir / path.name)
    body, _ = HTMLExporter().from_notebook_node(nb)
    (out_dir / f"{path.stem}.html").write_text(body, encoding="utf-8")
    return nb, elapsed, error


def paragraph(results: dict, out_dir: Path) -> str:
    """The one-paragraph summary of the run."""
    parts = []
    q = results.get("quickstart")
    if q and q["summary"]:
        s = q["summary"]
        ok = s["magic_results"] == list(range(1, 11)) == s["api_results"]
        parts.append(f"The quickstart ran {s['tasks']} tasks in three jobs (add-one with %%cloud map "
                     f"and with Executor().map: {'results correct' if ok else 'WRONG RESULTS'}) "
                     f"in {q['seconds']:.0f} s of notebook time.")
    g = results.get("gflops_benchmark")
    if g and g["summary"]:
        s = g["summary"]
        parts.append(f"The DGEMM benchmark ran {s['tasks']} tasks, each {s['loopcnt']} products of "
                     f"{s['n']}x{s['n']} matrices ({s['total_gflop']:.1f} GFLOP in all), in "
                     f"{s['wall_s']:.1f} s of wall time: {s['effective_gflops']:.2f} GFLOPS effective, "
                     f"{s['peak_inflight_gflops']:.2f} GFLOPS peak in flight.")
    for name, r in results.items():
        if name not in ("quickstart", "gflops_benchmark") and r["summary"]:
            parts.append(f"{name} finished in {r['seconds']:.0f} s.")
        if r["error"]:
            parts.append(f"{name} FAILED: {r['error']}.")
    parts.append(f"Executed notebooks and HTML exports are in {out_dir}/.")
    return " ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cloudbutton_jupyter.demo",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", default=list(DEFAULT_NOTEBOOKS),
                   help=f"notebook names in notebooks/ (default: {' '.join(DEFAULT_NOTEBOOKS)})")
    p.add_argument("--out", default="build/demo", help="output directory (default: build/demo)")
    p.add_argument("--scale", choices=("small", "full"),
                   help="small: the seconds-long sizes CI uses (sets CLOUDBUTTON_DEMO_SCALE)")
    args = p.parse_args(argv)
    if args.scale == "small":
        os.environ["CLOUDBUTTON_DEMO_SCALE"] = "small"  # inherited by the kernels
    elif args.scale == "full":
        os.environ.pop("CLOUDBUTTON_DEMO_SCALE", None)
    out_dir = Path(args.out)
    src = committed_notebooks(out_dir / "src")
    results = {}
    for name in args.notebooks:
        path = src / f"{name.removesuffix('.ipynb')}.ipynb"
        if not path.exists():
            raise SystemExit(f"no notebook {path.name} in notebooks/ at git HEAD")
        print(f"running {path.name} ...", flush=True)
        nb, seconds, error = execute(path, out_dir)
        size = (out_dir / path.name).stat().st_size
        print(f"  {path.name}: {seconds:.0f} s, saved with outputs: {size / 1024:.0f} KB", flush=True)
        results[path.stem] = {"seconds": seconds, "error": error, "summary": read_summary(nb),
                              "bytes": size}
        if error is None and results[path.stem]["summary"] is None:
            results[path.stem]["error"] = "the notebook printed no CLOUDBUTTON_SUMMARY line"
    print()
    print(paragraph(results, out_dir))
    return 1 if any(r["error"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
