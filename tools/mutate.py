"""Mutation testing (``make mutate``): mutmut over the named modules, scored per module.

mutmut 3 names a mutant after its file's path (``src.`` stripped) and puts ``src/`` first
on ``sys.path``; our packages live in ``executor/``, ``kernel_magic/`` and the root, so the
run happens in a staging tree, ``build/mutate/src/<package>/...`` plus a copy of
``tests/``. ``build/mutate/mutants/`` keeps mutmut's results between runs (only functions
that changed are tested again); ``--fresh`` starts over.

    python tools/mutate.py [--fresh] [--fail-under 80] --tests TEST... -- MODULE[:FUNC,...]...

MODULE is a path in the repository (``executor/cloudbutton_executor/storage.py``); the
optional FUNC list (``Class.method`` for methods) limits the run to those functions.
Score = (killed + timed out) / mutants, as mutmut's own badge counts it; a mutant that no
test reaches counts as surviving.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutate"
PACKAGES = {  # import name -> where it lives in the repository
    "cloudbutton_executor": ROOT / "executor" / "cloudbutton_executor",
    "cloudbutton_magic": ROOT / "kernel_magic" / "cloudbutton_magic",
    "cloudbutton_jupyter": ROOT / "cloudbutton_jupyter",
}
DETECTED = {"killed", "timeout", "caught by type check", "segfault"}
CLASS_SEP = "ǁ"  # how mutmut spells Class.method in a mutant's name


def module_of(path: str) -> tuple[str, Path]:
    """(dotted module name, path inside the staging tree) of a repository path."""
    real = (ROOT / path).resolve()
    for name, where in PACKAGES.items():
        if real.is_relative_to(where):
            rel = real.relative_to(where)
            dotted = ".".join([name, *rel.with_suffix("").parts])
            return dotted, Path("src") / name / rel
    raise SystemExit(f"mutate: {path} is not in one of {', '.join(PACKAGES)}")


def patterns_for(spec: str) -> tuple[str, Path, list[str]]:
    path, _, funcs = spec.partition(":")
    dotted, staged = module_of(path)
    if not funcs:
        return dotted, staged, [f"{dotted}.*"]
    out = []
    for f in funcs.split(","):
        cls, _, meth = f.strip().rpartition(".")
        out.append(f"{dotted}.x{CLASS_SEP}{cls}{CLASS_SEP}{meth}__mutmut_*" if cls
                   else f"{dotted}.x_{meth}__mutmut_*")
    return dotted, staged, out


def stage(tests: list[str], staged_files: list[Path], extra_pytest_args: list[str]) -> None:
    STAGE.mkdir(parents=True, exist_ok=True)
    for sub in ("src", "tests"):
        shutil.rmtree(STAGE / sub, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "labextension", "*.pyc")
    for name, where in PACKAGES.items():
        shutil.copytree(where, STAGE / "src" / name, ignore=ignore)  # keeps mtimes
    shutil.copytree(ROOT / "tests", STAGE / "tests", ignore=ignore)
    toml = [
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {[str(p) for p in staged_files]!r}".replace("'", '"'),
        f"pytest_add_cli_args_test_selection = {tests!r}".replace("'", '"'),
        f"pytest_add_cli_args = {['-q', '-p', 'no:randomly', *extra_pytest_args]!r}".replace("'", '"'),
        "",
        "[tool.pytest.ini_options]",
        'testpaths = ["tests"]',
        "timeout = 300",
    ]
    (STAGE / "pyproject.toml").write_text("\n".join(toml) + "\n")


def results() -> dict[str, str]:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=STAGE, check=True,
                         capture_output=True, text=True).stdout
    status = {}
    for line in out.splitlines():
        name, sep, st = line.strip().rpartition(": ")
        if sep:
            status[name] = st
    return status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tests", nargs="+", required=True, help="test files that exercise the modules")
    p.add_argument("--fail-under", type=float, default=80.0, help="minimum score in %% (default 80)")
    p.add_argument("--fresh", action="store_true", help="forget earlier results")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--pytest-arg", action="append", default=[], help="passed to every pytest run")
    p.add_argument("modules", nargs="+", metavar="MODULE[:FUNC,...]")
    args = p.parse_args(argv)

    specs = [patterns_for(m) for m in args.modules]
    if args.fresh:
        shutil.rmtree(STAGE / "mutants", ignore_errors=True)
    stage(args.tests, sorted({s for _, s, _ in specs}), args.pytest_arg)
    patterns = [pat for _, _, pats in specs for pat in pats]
    mutmut = Path(sys.executable).with_name("mutmut")
    t0 = time.time()
    run = subprocess.run([str(mutmut), "run", "--max-children", str(args.workers), *patterns], cwd=STAGE)
    took = time.time() - t0
    if run.returncode:
        print(f"mutate: mutmut run failed ({run.returncode}); see above", file=sys.stderr)
        return run.returncode

    import fnmatch

    status = results()
    rows, survivors = [], []
    total = collections.Counter()
    for spec, (dotted, _, pats) in zip(args.modules, specs):
        mine = {k: v for k, v in status.items() if any(fnmatch.fnmatchcase(k, pat) for pat in pats)}
        c = collections.Counter(mine.values())
        n = len(mine) - c["skipped"]
        detected = sum(c[s] for s in DETECTED)
        total.update(n=n, detected=detected)
        rows.append((spec, n, detected, c))
        survivors += sorted(k for k, v in mine.items() if v not in DETECTED | {"skipped"})
    lines = [f"{'module':<70} {'mutants':>7} {'killed':>7} {'score':>6}  other"]
    for spec, n, detected, c in rows:
        other = ", ".join(f"{v} {k}" for k, v in sorted(c.items()) if k not in DETECTED) or "-"
        lines.append(f"{spec[:70]:<70} {n:>7} {detected:>7} {100 * detected / max(n, 1):>5.1f}%  {other}")
    score = 100 * total["detected"] / max(total["n"], 1)
    lines.append(f"{'total':<70} {total['n']:>7} {total['detected']:>7} {score:>5.1f}%  "
                 f"({took / 60:.1f} min, {args.workers} workers)")
    report = "\n".join(lines)
    (STAGE / "survivors.txt").write_text("\n".join(survivors) + "\n")
    (STAGE / "report.txt").write_text(report + "\n")
    print(report)
    print(f"survivors: {STAGE / 'survivors.txt'} (see one with: cd {STAGE} && {mutmut} show NAME)")
    if score < args.fail_under:
        print(f"mutate: score {score:.1f}% is below {args.fail_under:g}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
