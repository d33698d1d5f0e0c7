"""Credit mutmut's stats run with the functions that worker processes call.

mutmut runs a function's mutants only against the tests that called it, and learns which
those are in a stats run, by recording calls in the test process. Code that runs in local
worker processes (``worker.py``, ``local_runtime.py``...) is called in another process, so
mutmut would never run its mutants. ``tools/mutate.py`` copies this module into the
staging tree twice:

- as ``sitecustomize.py`` next to the packages: Python imports it at the start of every
  process with the staged tree on ``PYTHONPATH`` (the local workers: the backend puts the
  package's parent there). During the stats run it appends each function a process calls
  to a file of its own in ``$CLOUDBUTTON_MUTATE_HITS``;
- as the pytest plugin ``mutate_hits`` of the test process: after each test it adds what
  the workers recorded to the test's calls, as if the test had made them itself; and
  before the tests it compiles the staged modules (a worker process that compiled a
  mutated module itself would spend its task's timeout on it).

The variables reach the workers through ``CLOUDBUTTON_WORKER_ENV`` (see the README).
"""
from __future__ import annotations

import os
import sys

HITS = "CLOUDBUTTON_MUTATE_HITS"


def _install_in_worker() -> None:
    directory = os.environ.get(HITS)
    if not directory or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    try:
        from mutmut.mutation import trampoline
    except ImportError:
        return
    path = os.path.join(directory, f"{os.getpid()}.hits")
    seen: set[str] = set()

    def record(name: str, caller: str | None = None) -> None:
        if name in seen and os.path.exists(path):
            return
        if not os.path.exists(path):
            seen.clear()  # the test process took the file: start a new one
        seen.add(name)
        # Opened by name each time, so a taken (renamed) file gets no late lines.
        with open(path, "a") as f:
            f.write(name + "\n")

    trampoline.record_trampoline_hit = record


def _take_worker_hits() -> None:
    directory = os.environ.get(HITS)
    if not directory or not os.path.isdir(directory):
        return
    from mutmut.mutation.trampoline import get_mutant_under_test
    from mutmut.state import state

    if get_mutant_under_test() != "stats":
        return
    for entry in os.listdir(directory):
        if not entry.endswith(".hits"):
            continue
        taken = os.path.join(directory, entry + ".taken")
        try:
            os.rename(os.path.join(directory, entry), taken)
        except FileNotFoundError:
            continue
        with open(taken) as f:
            state()._stats.update(line.strip() for line in f if line.strip())
        os.unlink(taken)


if __name__ == "sitecustomize":
    _install_in_worker()
else:
    import pytest

    def pytest_sessionstart(session):
        # Mutated modules are large (every mutant is a function in them): compiled once
        # here, not by each fresh worker process inside its task's timeout.
        import compileall

        for entry in sys.path:
            if os.path.isfile(os.path.join(entry, "mutate_hits.py")):
                compileall.compile_dir(entry, quiet=1)

    # mutmut's own teardown hook reads the calls; this one must run before it.
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(item, nextitem):
        _take_worker_hits()
