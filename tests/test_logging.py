"""The `cloudbutton` logger: errors met while following a job are logged, kept on the job
and shown by the progress views; importing the library configures no handler."""
from __future__ import annotations

import io
import logging
import time


def sleepy(s):
    time.sleep(s)
    return s


def test_importing_configures_no_handler():
    import cloudbutton_executor  # noqa: F401
    import cloudbutton_magic.widget  # noqa: F401

    assert logging.getLogger("cloudbutton").handlers == []
    assert logging.getLogger("cloudbutton.dispatch").handlers == []


def test_a_listener_error_is_logged_kept_and_shown(ex, caplog):
    from cloudbutton_magic.widget import JobWidget, TextProgress

    job = ex.map(sleepy, [0.3, 0.3])

    def broken(_job):
        raise RuntimeError("listener bug")

    job.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="cloudbutton"):
        assert job.result(timeout=30) == [0.3, 0.3]
    assert any(r.name == "cloudbutton.job" and "a listener of job" in r.getMessage()
               and r.exc_info[1].args == ("listener bug",) for r in caplog.records)
    assert isinstance(job.monitor_error, RuntimeError)
    out = io.StringIO()
    text = TextProgress(job, file=io.StringIO(), out=out)
    text.display()
    text.finish()
    assert "met an error: RuntimeError: listener bug" in out.getvalue()
    widget = JobWidget(job)
    widget.finish()
    assert "error: RuntimeError: listener bug" in widget.header.value
