"""Every %cloud magic and option, driven through a real IPython shell and real workers."""
import os
import sys
import textwrap
import threading
import time

import pytest
from IPython.core.error import UsageError

from cloudbutton_executor import protocol
from cloudbutton_magic.magics import CloudMagics, split_expression


def cell(ip, line, body):
    return ip.run_cell_magic("cloud", line, textwrap.dedent(body))


def n_jobs(ip):
    ex = ip.runner.executor(ip.runner.settings())
    return len(ex.jobs(1000))


def test_split_expression():
    assert split_expression("xs[:3] as x -o out") == ("xs[:3]", "as x -o out")
    assert split_expression("range(n - 1) --chunksize auto") == ("range(n - 1)", "--chunksize auto")
    assert split_expression("[a, b] ") == ("[a, b]", "")
    assert split_expression("{'as': 1}.keys() as k") == ("{'as': 1}.keys()", "as k")


def test_map_binds_element_and_collects_last_expression_in_order(ip):
    ip.user_ns["xs"] = [3, 1, 2]
    assert cell(ip, "map xs as x", "y = x * 10\ny + 1") is None
    assert ip.user_ns["results"] == [31, 11, 21]
    cell(ip, "map range(3) -o squares", "item ** 2")
    assert ip.user_ns["squares"] == [0, 1, 4]
    cell(ip, "map [1, 2] -o nothing", "z = item")  # no last expression: None
    assert ip.user_ns["nothing"] == [None, None]
    cell(ip, "map [1] -o quiet", "item;")
    assert ip.user_ns["quiet"] == [None]


def test_options_reach_the_job(ip):
    cell(ip, "map range(40) as i --chunksize auto --timeout 30 --memory 512 --retries 1 --workers 2",
         "i")
    job = list(ip.runner.jobs.values())[-1]
    assert ip.user_ns["results"] == list(range(40))
    assert (job.chunksize, job.timeout, job.memory_mb, job.retries) == ("auto", 30, 512, 1)
    cell(ip, "map range(4) --chunksize 2", "item")
    job = list(ip.runner.jobs.values())[-1]
    assert job.stats["invocations"] == 2


def test_namespace_capture_cases(ip, tmp_path, monkeypatch):
    moddir = tmp_path / "mods"
    moddir.mkdir()
    (moddir / "nb_helpers.py").write_text("OFFSET = 100\ndef shift(v):\n    return v + OFFSET\n")
    monkeypatch.syspath_prepend(str(moddir))
    ip.run_cell(textwrap.dedent("""
        import numpy as np
        import nb_helpers as h
        def inner(v):
            return v * 2
        def outer(v):
            return inner(v) + 1
        square = lambda v: v * v
        def make_scaler(k):
            def scale(v):
                return v * k
            return scale
        triple = make_scaler(3)
        conn_made_inside = None
    """))
    try:
        cell(ip, "map [1, 4]", """
            import sys
            (float(np.sqrt(item)), outer(item), square(item), triple(item), h.shift(item),
             any('mods' in p for p in sys.path))
        """)
    finally:
        sys.modules.pop("nb_helpers", None)
    assert ip.user_ns["results"] == [(1.0, 3, 1, 3, 101, False), (2.0, 9, 16, 12, 104, False)]


def test_only_free_names_are_shipped(ip):
    import sqlite3

    ip.user_ns["conn"] = sqlite3.connect(":memory:")  # unpicklable, but the cell makes its own
    ip.user_ns["unused"] = threading.Lock()
    cell(ip, "map [1, 2]", """
        import sqlite3
        conn = sqlite3.connect(":memory:")
        conn.execute("select ?", (item,)).fetchone()[0]
    """)
    assert ip.user_ns["results"] == [1, 2]


def test_unpicklable_global_is_named_and_nothing_is_submitted(ip):
    import sqlite3

    ip.user_ns["conn"] = sqlite3.connect(":memory:")
    before = n_jobs(ip)
    with pytest.raises(UsageError, match=r"'conn' \(type sqlite3.Connection\).*inside the cell"):
        cell(ip, "map [1]", "conn.execute('select 1')")
    assert n_jobs(ip) == before


@pytest.mark.parametrize("value, why", [
    ("AKIA" + "Q" * 16, "access key id"),
    ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "secret access key"),
    ("ENV", "os.environ|AWS credentials"),
    ("SESSION", "carries AWS credentials"),
])
def test_secret_bearing_globals_are_refused(ip, value, why):
    import boto3

    if value == "ENV":
        value = dict(os.environ)
        value.setdefault("PATH", "/bin")
        why = "(copy of os.environ|AWS credentials)"
    elif value == "SESSION":
        value = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y",
                                      region_name="us-east-1")
    ip.user_ns["leaky"] = value
    with pytest.raises(UsageError, match=f"'leaky'.*{why}"):
        cell(ip, "map [1]", "leaky")
    assert n_jobs(ip) == 0


def test_rebound_name_ships_new_value(ip):
    ip.user_ns["k"] = 1
    cell(ip, "map [0]", "item + k")
    ip.user_ns["k"] = 5
    cell(ip, "map [0]", "item + k")
    assert ip.user_ns["results"] == [5]


@pytest.mark.parametrize("line, body, message", [
    ("map xs --bogus 1", "item", "unrecognized arguments: --bogus"),
    ("map undefined_name", "item", "'undefined_name' is not defined"),
    ("map 42", "item", "int, which is not iterable"),
    ("map 'abc'", "item", "is a str"),
    ("map [1]", "x = (\n", "syntax error in the cell, line 2"),
    ("map [1]", "!ls", "IPython syntax"),
    ("map [1] --chunksize 0", "item", "positive integer"),
    ("map [1] as 3x", "item", "variable name"),
    ("map [1]", "item + not_defined_anywhere", "'not_defined_anywhere'.*not defined"),
    ("frobnicate", "item", "unknown %cloud sub-command"),
    ("map (1 // (2 - k) for k in range(5))", "item",
     "raised ZeroDivisionError: integer division or modulo by zero after 2 elements"),
])
def test_bad_input_is_reported_and_nothing_is_submitted(ip, line, body, message):
    with pytest.raises(UsageError, match=message):
        cell(ip, line, body)
    assert n_jobs(ip) == 0


def test_syntax_error_names_the_cells_own_line_with_a_caret(ip):
    # The cell's line 1 is the %%cloud line: the user's third line is the culprit.
    with pytest.raises(UsageError) as info:
        cell(ip, "map [1]", "y = 1\nx = 1 +* 2\nx")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("syntax error in the cell, line 3: ")
    assert lines[1].strip() == "x = 1 +* 2"
    caret = lines[2].index("^")
    assert lines[1][caret] == "*"  # under the culprit


def test_unpicklable_global_is_said_once(ip):
    ip.user_ns["lk"] = threading.Lock()
    with pytest.raises(UsageError) as info:
        cell(ip, "map [1]", "with lk:\n    item")
    message = str(info.value)
    assert "'lk'" in message and "_thread.lock" in message and "inside the cell" in message
    assert message.count("cannot ship") == 1 and message.count("cannot pickle") == 1
    assert message.count("_thread.lock") <= 2  # the type, and pickle's own words once


def test_live_resources_are_warned_about_in_the_capture_report(ip, tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("line one\nline two\n")
    fh = open(data)
    ip.user_ns["fh"] = fh
    try:
        cell(ip, "map [1] --dry-run", "fh.readline() * item")
        out = capsys.readouterr().out
        assert "warning: 'fh' is an open file handle" in out and "data.txt" in out
        assert "copy" in out and "open it inside the cell" in out
        cell(ip, "map [2]", "fh.readline() * item")  # it runs: a warning, not an error
        # A copy of the handle as it was (a warm worker may hand the same copy to its next task).
        assert ip.user_ns["results"] == ["line one\nline one\n"]
    finally:
        fh.close()
    from cloudbutton_magic.capture import live_resource

    assert live_resource(fh) == "is a closed file handle (" + str(data) + ", mode 'r')"
    import io

    assert live_resource(io.StringIO("plain data")) is None and live_resource([1, 2]) is None


def test_a_job_cancelled_from_outside_is_not_reported_as_failed(ip, capsys):
    """The panel cancels by writing the job's cancel marker while the cell waits."""
    def cancel_soon():
        deadline = time.time() + 30
        while not ip.runner.jobs and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)
        job = list(ip.runner.jobs.values())[-1]
        storage = ip.runner.executor(ip.runner.settings()).storage
        storage.put(protocol.cancel_key(job.prefix, job.job_id),
                    protocol.cancel_marker(by="test", at=time.time()))

    threading.Thread(target=cancel_soon, daemon=True).start()
    cell(ip, "map range(12) -o r", "import time\ntime.sleep(0.3 if item < 2 else 5)\nitem")
    out = capsys.readouterr().out
    assert "tasks failed" not in out and "0 failed, 10 cancelled" in out
    assert "was cancelled: 2 of 12 done, 10 cancelled (CancelledError in 'r')" in out


def test_failures_are_kept_in_results_unless_all_fail_or_raise(ip, capsys):
    cell(ip, "map [1, 0, 2]", "10 // item")
    out = ip.user_ns["results"]
    assert out[0] == 10 and out[2] == 5 and isinstance(out[1], ZeroDivisionError)
    assert "1 of 3 tasks failed" in capsys.readouterr().out
    with pytest.raises(ZeroDivisionError) as info:
        cell(ip, "map [1, 0] --raise", "10 // item")
    assert "10 // item" in info.value.__cause__.tb  # the remote traceback is attached
    with pytest.raises(ZeroDivisionError):
        cell(ip, "map [0, 0]", "1 // item")


def test_cloud_run_brings_assigned_names_back(ip):
    ip.user_ns["base"] = 4
    assert cell(ip, "run", "import math\nroot = math.sqrt(base)\nfour = base") is None
    assert ip.user_ns["root"] == 2.0 and ip.user_ns["four"] == 4
    assert "math" in ip.user_ns
    assert cell(ip, "run -o last", "base * 10") == 40
    assert ip.user_ns["last"] == 40
    with pytest.raises(UsageError, match="needs a cell body"):
        ip.run_line_magic("cloud", "run")


def test_line_form_maps_a_defined_function(ip):
    ip.run_cell("def add(a, b=1):\n    return a + b")
    ip.run_line_magic("cloud", "map add [1, (2, 3)] -o sums")
    assert ip.user_ns["sums"] == [2, 5]
    with pytest.raises(UsageError, match="not a function"):
        ip.run_line_magic("cloud", "map 3 [1]")


def test_noblock_returns_the_job(ip):
    cell(ip, "map range(5) --noblock -o job", "item * 2")
    job = ip.user_ns["job"]
    assert job.result(timeout=30) == [0, 2, 4, 6, 8]


def test_dry_run_reports_capture_and_submits_nothing(ip, capsys):
    ip.user_ns["data"] = list(range(1000))
    cell(ip, "map [1] --dry-run", "sum(data) + item")
    out = capsys.readouterr().out
    assert "would run 1 tasks" in out and "data" in out and "list" in out and "total" in out
    assert n_jobs(ip) == 0


def test_jobs_attach_cancel_config(ip, capsys):
    cell(ip, "map range(3) -o first", "item + 1")
    job_id = list(ip.runner.jobs)[-1]
    ip.run_line_magic("cloud", "jobs")
    out = capsys.readouterr().out
    assert job_id in out and "local" in out
    fresh = CloudMagics(ip)  # a new kernel session: nothing in memory
    ip.register_magics(fresh)
    ip.run_line_magic("cloud", f"attach {job_id} -o again")
    assert ip.user_ns["again"] == [1, 2, 3]
    with pytest.raises(UsageError, match="no job"):
        ip.run_line_magic("cloud", "attach 20000101-000000-000000")
    with pytest.raises(UsageError, match="must be a job id"):
        ip.run_line_magic("cloud", "cancel nonsense")
    ip.run_line_magic("cloud", f"cancel {job_id}")
    ex = fresh.runner.executor(fresh.runner.settings())
    assert ex.storage.exists(protocol.cancel_key(ex.prefix, job_id))
    ip.run_line_magic("cloud", "config chunksize=auto backend=local")
    assert "chunksize  = auto" in capsys.readouterr().out
    with pytest.raises(UsageError, match="key=value"):
        ip.run_line_magic("cloud", "config colour=blue")
    with pytest.raises(UsageError, match="backend must be"):
        ip.run_line_magic("cloud", "config backend=k8s")


def test_text_progress_outside_a_notebook(ip, capsys):
    cell(ip, "map range(4)", "print('hello from', item)\nitem")
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "4 done" in text or "4/4" in text
    assert "hello from 2" in text


def test_defaults_saved_by_the_panel_apply_to_the_next_run(ip, tmp_path, monkeypatch, capsys):
    from cloudbutton_executor import config
    from cloudbutton_jupyter.manager import CloudManager

    path = tmp_path / "config.yaml"
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(path))
    saved = CloudManager(config_file=str(path)).put_config(
        {"backend": "local", "chunksize": "auto", "retries": 1, "region": "eu-west-1"})
    assert "warning" not in saved  # the Lambda side reads the same file
    assert config.load().region == "eu-west-1"
    ip.runner.overrides.pop("workers", None)
    cell(ip, "map range(30)", "item")
    job = list(ip.runner.jobs.values())[-1]
    assert (job.chunksize, job.retries) == ("auto", 1)
    cell(ip, "map range(3) --chunksize 1", "item")  # an option beats the file
    assert list(ip.runner.jobs.values())[-1].chunksize == 1
    path.write_text("chunksize: 0\n")
    with pytest.raises(config.ConfigError, match="chunksize"):
        config.load()
    cell(ip, "map range(2)", "item")  # a broken file is reported, and the run goes on
    assert "ignoring the config file" in capsys.readouterr().out


def test_cache_option_and_cache_subcommand(ip, capsys):
    ip.user_ns["xs"] = [1, 2, 3]
    cell(ip, "map xs as x --cache", "x * 7")
    first = list(ip.runner.jobs.values())[-1]
    assert ip.user_ns["results"] == [7, 14, 21] and first.counts()["cached"] == 0
    ip.user_ns["xs"] = [1, 2, 3, 4]
    cell(ip, "map xs as x --cache", "x * 7")  # a re-run: only the new item is computed
    second = list(ip.runner.jobs.values())[-1]
    assert ip.user_ns["results"] == [7, 14, 21, 28]
    assert second.counts()["cached"] == 3 and second.counts()["done"] == 1
    cell(ip, "map xs as x --cache false", "x * 7")  # the flag's explicit no
    assert list(ip.runner.jobs.values())[-1].counts()["cached"] == 0
    cell(ip, "map xs as x", "x * 7")  # off by default
    assert list(ip.runner.jobs.values())[-1].counts()["cached"] == 0
    capsys.readouterr()
    ip.run_line_magic("cloud", "cache list")
    out = capsys.readouterr().out
    assert "FUNCTION IDENTITY" in out and first.dispatcher.spec.identity in out
    with pytest.raises(UsageError, match="not a cache identity"):
        ip.runner.cache("clear", "../jobs")
    ip.run_line_magic("cloud", "cache clear")
    assert "cleared the result cache: 2 objects" in capsys.readouterr().out
    ip.run_line_magic("cloud", "cache list")
    assert "the result cache is empty" in capsys.readouterr().out
    cell(ip, "map xs as x --cache", "x * 7")
    assert list(ip.runner.jobs.values())[-1].counts()["cached"] == 0


def test_budget_and_backups_options_reach_the_job(ip):
    cell(ip, "map range(3) --budget 0.5 --backups false", "item")
    job = list(ip.runner.jobs.values())[-1]
    assert job.dispatcher.spec.budget_usd == 0.5 and job.dispatcher.spec.backups is False
