"""Mutation testing (``make mutate``): mutmut over the named modules, scored per module.

mutmut 3 names a mutant after its file's path (``src.`` stripped) and puts ``src/`` first
on ``sys.path``; our packages live in ``executor/``, ``kernel_magic/`` and the root, so the
run happens in a staging tree, ``build/mutate/<group>/src/<package>/...`` plus a copy of
``tests/``. ``build/mutate/<group>/mutants/`` keeps mutmut's results between runs (only
functions that changed are tested again); ``--fresh`` starts over.

    python tools/mutate.py [--fresh] [--fail-under 80] --plan tools/mutate.toml [--only GROUP...]
    python tools/mutate.py [--fresh] [--fail-under 80] --tests TEST... -- MODULE[:FUNC,...]...

A plan names groups, each a list of modules and the tests that exercise them (each group is
its own mutmut run: its stats run only runs its tests). Without a plan, one group of the
modules and tests given.

MODULE is a path in the repository (``executor/cloudbutton_executor/storage.py``); the
optional FUNC list (``Class.method`` for methods) limits the run to those functions.
Score = (killed + timed out) / mutants, as mutmut's own badge counts it; a mutant that no
test reaches counts as surviving.

Code that runs in local worker processes is measured too: the run names MUTANT_UNDER_TEST
in CLOUDBUTTON_WORKER_ENV, so the workers run the mutant under test, and
``tools/mutate_hits.py`` credits the stats run with what the workers call.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
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


def stage(where: Path, tests: list[str], staged_files: list[Path],
          extra_pytest_args: list[str]) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for sub in ("src", "tests"):
        shutil.rmtree(where / sub, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "labextension", "*.pyc")
    for name, package in PACKAGES.items():
        shutil.copytree(package, where / "src" / name, ignore=ignore)  # keeps mtimes
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    # Worker processes import sitecustomize from their PYTHONPATH (the staged packages'
    # parent); the test process loads the same file as a pytest plugin.
    hits = ROOT / "tools" / "mutate_hits.py"
    shutil.copy2(hits, where / "src" / "sitecustomize.py")
    shutil.copy2(hits, where / "src" / "mutate_hits.py")
    toml = [
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {[str(p) for p in staged_files]!r}".replace("'", '"'),
        f"pytest_add_cli_args_test_selection = {tests!r}".replace("'", '"'),
        f"pytest_add_cli_args = {['-q', '-p', 'no:randomly', '-p', 'mutate_hits', *extra_pytest_args]!r}"
        .replace("'", '"'),
        # A mutant that hangs (a dispatcher loop that never ends) is cut after
        # (its tests' time + 5 s) x 3 rather than mutmut's default x 15.
        "timeout_multiplier = 3.0",
        "timeout_constant = 5.0",
        "",
        "[tool.pytest.ini_options]",
        'testpaths = ["tests"]',
        "timeout = 120",
    ]
    (where / "pyproject.toml").write_text("\n".join(toml) + "\n")


def selection_hash(tests: list[str]) -> str:
    """mutmut's fingerprint of a test selection (``Config.config_fingerprint``)."""
    return hashlib.sha256(repr(tuple(tests)).encode()).hexdigest()[:12]


def keep_results_for_added_tests(where: Path, tests: list[str]) -> None:
    """mutmut forgets every result of a run whose test selection changed. A selection that
    only adds tests to the one the results were made with can only detect more: a mutant
    killed stays killed (its test is still there), so the results are kept, and mutmut
    runs the stats of the new tests only; the survivors meet them with --retest-survivors.
    The selections a group was run with are kept beside its results, by fingerprint."""
    known_file, stats_file = where / "selections.json", where / "mutants" / "mutmut-stats.json"
    known = json.loads(known_file.read_text()) if known_file.is_file() else {}
    known[selection_hash(tests)] = tests
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        fingerprint = stats.get("config_fingerprint") or {}
        old = known.get(fingerprint.get("test_selection"))
        if old is not None and old != tests and set(old) <= set(tests):
            print(f"mutate: {len(set(tests) - set(old))} test file(s) added to the group: "
                  "its results are kept", flush=True)
            fingerprint["test_selection"] = selection_hash(tests)
            stats_file.write_text(json.dumps(stats))
    known_file.write_text(json.dumps(known, indent=1))


def results(where: Path) -> dict[str, str]:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=where, check=True,
                         capture_output=True, text=True).stdout
    status = {}
    for line in out.splitlines():
        name, sep, st = line.strip().rpartition(": ")
        if sep:
            status[name] = st
    return status


# mutmut's own set-up check ("forced fail") runs the tests in its main process with every
# mutated function raising; a host-side function that raises where nothing expects it
# (worker.open_status in the job monitor) leaves that process waiting forever, with no
# timeout to end it. The check is replaced by ours: a group whose mutants are all
# "survived" has mutants that never switch on, and fails (see main()).
RUN_MUTMUT = """
import sys
import mutmut.__main__ as m
m.run_forced_fail_test = lambda runner: None
sys.argv[0] = "mutmut"
sys.exit(m.cli())
"""


def run_group(name: str, modules: list[str], tests: list[str], args: argparse.Namespace
              ) -> tuple[list[tuple[str, int, int, collections.Counter[str]]], list[str], float]:
    """One mutmut run: (rows of module, mutants, detected, statuses), survivors, seconds."""
    import fnmatch

    where = STAGE / name
    specs = [patterns_for(m) for m in modules]
    if args.fresh:
        shutil.rmtree(where / "mutants", ignore_errors=True)
    stage(where, tests, sorted({s for _, s, _ in specs}), args.pytest_arg)
    keep_results_for_added_tests(where, tests)
    hits = where / "hits"
    shutil.rmtree(hits, ignore_errors=True)
    hits.mkdir()
    env = dict(os.environ)
    # The local backend passes these to its workers: the mutant to switch on, and where
    # the stats run's workers record what they call (tools/mutate_hits.py).
    passed = {n for n in env.get("CLOUDBUTTON_WORKER_ENV", "").split(",") if n}
    passed |= {"MUTANT_UNDER_TEST", "MUTMUT_DEPENDENCY_DEPTH", "CLOUDBUTTON_MUTATE_HITS"}
    env.update(CLOUDBUTTON_WORKER_ENV=",".join(sorted(passed)), CLOUDBUTTON_MUTATE_HITS=str(hits))
    # Python processes the tests start themselves (a host killed and attached again) import
    # the mutated tree too, and report what they call like the workers.
    # (Made now: a directory missing when Python starts is never looked in again.)
    (where / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(where / "mutants" / "src"),
                                                      env.get("PYTHONPATH")]))
    patterns = [pat for _, _, pats in specs for pat in pats]
    if (args.retest_survivors or args.untried or args.retest_timeouts) and (where / "mutants").is_dir():
        # mutmut keeps a result until its function changes; new tests need this.
        # --untried continues a stopped run without testing its survivors again yet.
        wanted = ({"not checked"} if args.untried
                  else {"survived", "no tests", "not checked", "suspicious"}
                  if args.retest_survivors else set())
        if args.retest_timeouts:  # a run on a loaded machine may time out where nothing hangs
            wanted |= {"timeout", "not checked"}
        again = sorted(k for k, v in results(where).items()
                       if v in wanted
                       and any(fnmatch.fnmatchcase(k, pat) for pat in patterns))
        if not again:
            print(f"mutate: group {name}: no survivor to test again")
        patterns = again or patterns
    print(f"mutate: group {name}: {' '.join(modules)} against {' '.join(tests)}", flush=True)
    t0 = time.time()
    run = subprocess.Popen([sys.executable, "-c", RUN_MUTMUT, "run", "--max-children", str(args.workers),
                            *patterns], cwd=where, env=env,
                           start_new_session=True)  # its own group: mutmut forks a worker per mutant
    try:
        returncode = run.wait()
    finally:  # interrupted or terminated: nothing of mutmut's left running
        if run.poll() is None:
            stop_group(run)
    took = time.time() - t0
    if returncode:
        raise SystemExit(f"mutate: mutmut run of group {name} failed ({returncode}); see above")
    status = results(where)
    if status and not DETECTED & set(status.values()):
        raise SystemExit(f"mutate: no mutant of group {name} was detected: are they switched on?")
    rows, survivors = [], []
    for spec, (_, _, pats) in zip(modules, specs):
        mine = {k: v for k, v in status.items() if any(fnmatch.fnmatchcase(k, pat) for pat in pats)}
        c = collections.Counter(mine.values())
        n = len(mine) - c["skipped"]
        rows.append((spec, n, sum(c[s] for s in DETECTED), c))
        survivors += sorted(k for k, v in mine.items() if v not in DETECTED | {"skipped"})
    return rows, survivors, took


def stop_group(run: subprocess.Popen) -> None:
    """Ends mutmut and every process it forked (a worker per mutant and its pytest run):
    ending mutmut alone leaves those running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGTERM)  # mutmut first, so it can stop its children
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(10)
        os.killpg(run.pid, signal.SIGKILL)  # whatever of the group is left
    run.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", type=Path, help="a TOML file of groups (modules and their tests)")
    p.add_argument("--only", nargs="+", default=[], metavar="GROUP", help="run only these groups")
    p.add_argument("--tests", nargs="+", help="test files that exercise the modules (no plan)")
    p.add_argument("--fail-under", type=float, default=80.0,
                   help="minimum score of each module in %% (default 80)")
    p.add_argument("--fresh", action="store_true", help="forget earlier results")
    p.add_argument("--retest-survivors", action="store_true",
                   help="test again the mutants that survived, were suspicious or were not tried "
                   "(after adding tests)")
    p.add_argument("--retest-timeouts", action="store_true",
                   help="test again the mutants that timed out (and those not tried), on a "
                   "machine less loaded than the run that timed them out")
    p.add_argument("--untried", action="store_true",
                   help="test only the mutants not tried yet (a stopped run continued)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--pytest-arg", action="append", default=[], help="passed to every pytest run")
    p.add_argument("modules", nargs="*", metavar="MODULE[:FUNC,...]")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally above runs

    if args.plan:
        plan = tomllib.loads(args.plan.read_text())
        unknown = set(args.only) - set(plan)
        if unknown:
            p.error(f"no group {', '.join(sorted(unknown))} in {args.plan} (it has {', '.join(plan)})")
        groups = {g: (v["modules"], v["tests"]) for g, v in plan.items()
                  if not args.only or g in args.only}
    elif args.tests and args.modules:
        groups = {"adhoc": (args.modules, args.tests)}
    else:
        p.error("give --plan, or --tests and modules")

    rows, survivors, timings = [], [], []
    for name, (modules, tests) in groups.items():
        r, s, took = run_group(name, modules, tests, args)
        rows += [(*row, took if i == 0 else None) for i, row in enumerate(r)]
        survivors += s
        timings.append((name, took))
    total = collections.Counter()
    lines = [f"{'module':<70} {'mutants':>7} {'killed':>7} {'score':>6} {'min':>5}  other"]
    low = []
    for spec, n, detected, c, took in rows:
        total.update(n=n, detected=detected)
        score = 100 * detected / max(n, 1)
        if score < args.fail_under:
            low.append(f"{spec} ({score:.1f}%)")
        other = ", ".join(f"{v} {k}" for k, v in sorted(c.items()) if k not in DETECTED) or "-"
        minutes = f"{took / 60:5.1f}" if took is not None else "    ,"
        lines.append(f"{spec[:70]:<70} {n:>7} {detected:>7} {score:>5.1f}% {minutes}  {other}")
    spent = sum(t for _, t in timings)
    lines.append(f"{'total':<70} {total['n']:>7} {total['detected']:>7} "
                 f"{100 * total['detected'] / max(total['n'], 1):>5.1f}% {spent / 60:5.1f}  "
                 f"({args.workers} workers; a group's minutes are on its first module)")
    report = "\n".join(lines)
    STAGE.mkdir(parents=True, exist_ok=True)
    (STAGE / "survivors.txt").write_text("\n".join(survivors) + "\n")
    (STAGE / "report.txt").write_text(report + "\n")
    print(report)
    print(f"survivors: {STAGE / 'survivors.txt'} (see one with: cd {STAGE}/GROUP && "
          f"{Path(sys.executable).with_name('mutmut')} show NAME)")
    if low:
        print(f"mutate: below {args.fail_under:g}%: {'; '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
