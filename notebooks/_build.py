"""Writes the example notebooks (without outputs) from their sources in ``src/``.

    python notebooks/_build.py          # rewrite every notebook (`make notebooks`)
    python notebooks/_build.py --check  # exit 1 if a committed notebook differs

The sources are jupytext "percent" files: real Python that the linter reads,
magics commented out (``# %%cloud map ...``), one ``# %%`` marker per cell with
the cell's stable id (``# %% id="pi"``). Edit them, not the .ipynb files; the
.ipynb are generated tidy: no outputs, no widget state, the ids of the sources.

Every notebook ends with one line ``CLOUDBUTTON_SUMMARY {json}``: the numbers
`make demo` and the CI tests read (results, wall time, GFLOPS...), so the
checks read what the notebook computed instead of re-deriving it.
"""
from __future__ import annotations

import os
import sys

import jupytext
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "src")
METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def build(path: str) -> nbformat.NotebookNode:
    """The notebook of one source file; every cell must carry a unique id."""
    nb = jupytext.read(path, fmt="py:percent")
    out = nbformat.v4.new_notebook(metadata=dict(METADATA))
    seen = set()
    for cell in nb.cells:
        cell_id = cell.metadata.pop("id", None)
        if not cell_id or cell_id in seen:
            raise SystemExit(f"{path}: every cell needs its own id (# %% id=\"...\"); "
                             f"{'missing' if not cell_id else f'{cell_id!r} repeated'} in:\n"
                             f"{cell.source[:200]}")
        seen.add(cell_id)
        make = nbformat.v4.new_markdown_cell if cell.cell_type == "markdown" else nbformat.v4.new_code_cell
        new = make(cell.source)
        new.id = cell_id
        out.cells.append(new)
    nbformat.validate(out)
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in sorted(os.listdir(SRC)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(HERE, name[:-3] + ".ipynb")
        text = nbformat.writes(build(os.path.join(SRC, name))) + "\n"
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        stale.append(path)
            except FileNotFoundError:
                stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        print("out of date (run `make notebooks`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
