"""A ``Job`` shows itself in a notebook: the live widget when it is a cell's last
expression or passed to ``display()``, the static rendering once it has ended.

The executor knows nothing of Jupyter (it runs inside Lambda with only cloudpickle),
so the display is registered from here, on IPython's formatter for the Job type, when
the extension loads in a kernel. In terminal IPython nothing is registered and the
Job's own repr (its counts, as text) is what shows.
"""
from __future__ import annotations


def show_job(job) -> None:
    """Display ``job``: a finished one as static HTML, a running one as the live widget
    that follows it from a background thread (the cell does not block)."""
    from .widget import JobView, make_progress

    if job.done():
        view = JobView(job)
        view.finish()  # takes everything in; no display yet, so nothing to update
        view.display()
        return
    view = make_progress(job)
    view.display()
    view.start_background()


def register(ip) -> bool:
    """Register ``show_job`` for ``Job`` on ``ip``'s display formatter; True if it did
    (only in a kernel, where a widget or HTML can show)."""
    if getattr(ip, "kernel", None) is None:
        return False
    from cloudbutton_executor import Job

    from .widget import flush_followed

    ip.display_formatter.ipython_display_formatter.for_type(Job, show_job)
    if flush_followed not in ip.events.callbacks["post_run_cell"]:
        ip.events.register("post_run_cell", flush_followed)
    return True
