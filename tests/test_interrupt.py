"""Ctrl-C cancels: in a plain script, in terminal IPython and in a notebook's kernel.

Each test interrupts a real child process (or kernel) once a task is known to run
(the task writes a marker file named after its item and its worker's pid), never
on a timer. Then: one line says what happened, no traceback into our code, the
running workers are gone and nothing else was invoked.
"""
import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

N = 40  # tasks of 60 s each on 2 workers: if Ctrl-C were ignored, nothing here would end in time


def _wait_for_marker(marks, proc=None, limit=120):
    end = time.time() + limit
    while time.time() < end:
        if os.listdir(marks):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the child ended before any task ran: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no task started")


def _threads_taking_sigint(pid: int) -> tuple[list[int], int]:
    """The threads of ``pid`` other than its main thread that do not block SIGINT, and how
    many threads it has. Linux delivers a process's SIGINT to any thread not blocking it,
    and only the main thread runs Python's handler: one taken elsewhere wakes no wait."""
    bit = 1 << (signal.SIGINT - 1)
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    taking = []
    for tid in tids:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
        if tid != pid and not blocked & bit:
            taking.append(tid)
    return taking, len(tids)


def _as_from_a_terminal() -> None:
    """In the child, before it runs Python: Ctrl-C at its default. A parent that ignores
    SIGINT (a shell's background job, mutmut's fork server) passes the ignore on to its
    children, and a Python started with SIGINT ignored never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _started(marks) -> list[tuple[int, int]]:
    return [tuple(map(int, name.split("-"))) for name in os.listdir(marks)]


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _assert_workers_stopped(marks):
    pids = {pid for _, pid in _started(marks)}
    end = time.time() + 10
    while any(map(_alive, pids)) and time.time() < end:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "running workers were not stopped"


def _assert_nothing_more_invoked(marks, workers=2):
    started = _started(marks)
    time.sleep(1.0)  # a queued invocation would start within this on a freed worker
    assert sorted(_started(marks)) == sorted(started)
    assert len(started) <= workers, started


TASK = """\
def work(x):
    import os, time
    open(os.path.join(MARKS, f"{x}-{os.getpid()}"), "w").close()
    time.sleep(60)
    return x
"""


MAIN = {
    "with-result": """
        with Executor(workers=2, storage=storage) as ex:
            print(ex.map(work, range({N})).result())
    """,
    "as-completed": """
        ex = Executor(workers=2, storage=storage)  # no with: the wait itself cancels
        for f in as_completed(ex.map(work, range({N}))):
            print(f.result())
    """,
}


@pytest.mark.parametrize("main", sorted(MAIN))
def test_ctrl_c_in_a_plain_script(tmp_path, main):
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "run.py"
    script.write_text(TASK + textwrap.dedent(f"""
        import faulthandler, signal, sys
        faulthandler.register(signal.SIGUSR2, all_threads=True)  # the test's view of a hang
        from cloudbutton_executor import Executor, as_completed
        from cloudbutton_executor.storage import LocalStorage
        MARKS = sys.argv[1]
        storage = LocalStorage({str(tmp_path / 's')!r})
        if __name__ == "__main__":
    """) + textwrap.indent(textwrap.dedent(MAIN[main].format(N=N)), "    ") + '    print("not reached")\n')
    proc = subprocess.Popen([sys.executable, str(script), str(marks)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                            preexec_fn=_as_from_a_terminal)
    try:
        _wait_for_marker(marks, proc)
        # Ctrl-C can reach only the main thread: the executor's monitor and the local
        # backend's slot threads (at least 3 here) block SIGINT.
        taking, n_threads = _threads_taking_sigint(proc.pid)
        assert taking == [] and n_threads >= 4, (taking, n_threads)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR2)
            time.sleep(1.0)
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"still running 30 s after Ctrl-C; stdout {out!r}; stderr and threads:\n{err}")
    finally:
        proc.kill()
    assert proc.returncode != 0 and "not reached" not in out
    assert "Traceback" not in err, err
    assert err.strip().splitlines() == [f"cancelled: 0 of {N} done, {N} cancelled"], err
    _assert_workers_stopped(marks)
    _assert_nothing_more_invoked(marks)


def test_ctrl_c_in_terminal_ipython(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    # A cell magic's cell ends at an empty line (the prompt's check_complete).
    lines = textwrap.dedent(f"""\
        %load_ext cloudbutton_jupyter
        %cloud config workers=2
        MARKS = {str(marks)!r}
        %%cloud map range({N}) as x
        import os, time
        open(os.path.join(MARKS, f"{{x}}-{{os.getpid()}}"), "w").close()
        time.sleep(60)
        x


        print("AFTER", len(results), sum(type(r).__name__ == "CancelledError" for r in results))
    """)
    env = dict(os.environ, CLOUDBUTTON_STORAGE_DIR=str(tmp_path / "s"),
               CLOUDBUTTON_CONFIG=str(tmp_path / "none.yaml"), IPYTHONDIR=str(tmp_path / "ipython"))
    proc = subprocess.Popen([sys.executable, "-m", "IPython", "--simple-prompt", "--no-banner",
                             "--no-confirm-exit", "--colors=nocolor"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(tmp_path), env=env, preexec_fn=_as_from_a_terminal)
    try:
        proc.stdin.write(lines)
        proc.stdin.flush()
        _wait_for_marker(marks, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    text = out + err
    assert "Traceback" not in text, text
    assert f"cancelled: 0 of {N} done, {N} cancelled; finished results are in 'results'" in text, text
    assert f"AFTER {N} {N}" in out, text  # the shell went on; every task was cancelled
    _assert_workers_stopped(marks)
    _assert_nothing_more_invoked(marks)


def test_kernel_interrupt_in_a_notebook(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    marks = tmp_path / "marks"
    marks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"%load_ext cloudbutton_jupyter\n%cloud config workers=2\n"
                                  f"MARKS = {str(marks)!r}"),
        nbformat.v4.new_code_cell(f"%%cloud map range({N}) as x\n"
                                  "import os, time\n"
                                  "open(os.path.join(MARKS, f'{x}-{os.getpid()}'), 'w').close()\n"
                                  "time.sleep(60)\nx"),
        nbformat.v4.new_code_cell("from cloudbutton_executor import Executor\n"
                                  "with Executor(workers=2) as ex:\n"
                                  f"    ex.map(work, range({N})).result()"),
        nbformat.v4.new_code_cell("print('AFTER', len(results))"),
    ]
    nb.cells[2].source = TASK + nb.cells[2].source
    env = dict(os.environ, CLOUDBUTTON_STORAGE_DIR=str(tmp_path / "s"),
               CLOUDBUTTON_CONFIG=str(tmp_path / "none.yaml"))
    seen = []

    async def run():
        km = AsyncKernelManager(kernel_name="python3")
        client = NotebookClient(nb, km=km, allow_errors=True, timeout=120,
                                resources={"metadata": {"path": str(tmp_path)}})

        async def interrupt_each_running_cell():
            for _ in range(2):  # the %%cloud cell, then the plain executor cell
                while not os.listdir(marks):
                    await asyncio.sleep(0.05)
                seen.append(_started(marks))
                await km.interrupt_kernel()
                _assert_workers_stopped(marks)
                _assert_nothing_more_invoked(marks)
                for name in os.listdir(marks):
                    os.remove(marks / name)

        interrupter = asyncio.ensure_future(interrupt_each_running_cell())
        await client.async_execute(env=env)
        await asyncio.wait_for(interrupter, 30)

    asyncio.run(asyncio.wait_for(run(), 240))
    assert len(seen) == 2
    for k, note in ((1, "; finished results are in 'results'"), (2, "")):
        errors = [o for o in nb.cells[k].outputs if o.output_type == "error"]
        assert len(errors) == 1, nb.cells[k].outputs
        assert errors[0]["ename"] == "JobCancelled"
        tb = errors[0]["traceback"]
        assert len(tb) == 1 and tb[0].startswith(f"cancelled: 0 of {N} done, {N} cancelled{note}"), tb
    after = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    assert f"AFTER {N}" in after
