"""Re-running a job's failed items into its own results (the widget's and the panel's
"re-run failed")."""
import pytest
from IPython.core.error import UsageError


def flaky(x, fixed):
    import os

    if x % 3 == 0 and not os.path.exists(fixed):
        raise ValueError(f"bad {x}")
    print(f"ran {x}")
    return x * 10


def test_rerun_failed_runs_only_the_failed_items_into_the_same_results(ex, tmp_path):
    fixed = tmp_path / "fixed"  # workers see only their event: the path travels as an argument
    job = ex.map(flaky, range(8), extra_args=(str(fixed),))
    job.wait(30)
    assert [job.item_state(i) for i in range(8)].count("failed") == 3  # 0, 3, 6
    old_future = job[3]
    assert isinstance(old_future.exception(), ValueError)
    fixed.write_text("")  # the cause is fixed: the re-run succeeds
    again = job.rerun_failed()
    assert again is not None and len(again) == 3 and again.job_id != job.job_id
    assert again.dispatcher.spec.rerun_of == job.job_id
    assert job.result(timeout=30) == [x * 10 for x in range(8)]
    assert job.counts()["failed"] == 0 and job.counts()["done"] == 8
    assert job[3].stdout == "ran 3\n" and job[3].stats["compute_done"] >= again.created
    assert job[1].stats["compute_done"] < again.created  # untouched items keep theirs
    assert isinstance(old_future.exception(), ValueError)  # an ended future never changes
    assert job.rerun_failed() is None  # nothing failed any more


def test_an_item_that_fails_again_stays_failed_with_its_new_error(ex, tmp_path):
    job = ex.map(flaky, [2, 3], extra_args=(str(tmp_path / "never"),))
    job.wait(30)
    again = job.rerun_failed()
    again.wait(30)
    job.wait(30)
    assert job.item_state(1) == "failed" and job.item_state(0) == "done"
    assert job.item_error_info(1)["message"] == "bad 3"
    assert job.item_stats(1)["compute_done"] >= again.created


def test_rerun_failed_refuses_a_running_job(ex):
    def slow(x):
        import time

        time.sleep(2)
        return x

    job = ex.map(slow, [1])
    with pytest.raises(RuntimeError, match="still running"):
        job.rerun_failed()
    job.cancel()


def test_an_attached_job_reruns_from_its_stored_inputs(ex, tmp_path):
    fixed = tmp_path / "fixed"
    job = ex.map(flaky, range(4), extra_args=(str(fixed),))
    job.wait(30)
    fixed.write_text("")
    attached = ex.attach(job.job_id)
    attached.wait(30)
    assert attached.counts()["failed"] == 2
    again = attached.rerun_failed()
    assert len(again) == 2
    assert attached.result(timeout=30) == [0, 10, 20, 30]


def test_the_magic_reruns_failed_items_into_results(tmp_path, monkeypatch, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from cloudbutton_magic.magics import CloudMagics

    monkeypatch.setenv("CLOUDBUTTON_STORAGE_DIR", str(tmp_path / "storage"))
    shell = InteractiveShell.instance()
    magics = CloudMagics(shell)
    shell.register_magics(magics)
    fixed = tmp_path / "fixed"
    shell.user_ns.update(flaky=flaky, fixed=str(fixed))
    shell.run_cell_magic("cloud", "map range(4) as x", "flaky(x, fixed)")
    results = shell.user_ns["results"]
    assert [type(r).__name__ for r in results] == ["ValueError", "int", "int", "ValueError"]
    (job_id,) = magics.runner.jobs
    fixed.write_text("")
    capsys.readouterr()
    shell.run_line_magic("cloud", f"rerun {job_id}")
    assert shell.user_ns["results"] == [0, 10, 20, 30]
    assert f"job {job_id}: 4 of 4 done, 0 failed after re-running 2 items" in capsys.readouterr().out

    # Another kernel (a runner that never saw the job) attaches it first.
    fixed.unlink()
    shell.run_cell_magic("cloud", "map range(4) as x", "flaky(x, fixed)")
    (other,) = [j for j in magics.runner.jobs if j != job_id and j in magics.runner.jobs][-1:]
    fresh = CloudMagics(shell)
    shell.register_magics(fresh)
    fixed.write_text("")
    shell.run_line_magic("cloud", f"rerun {other}")
    assert shell.user_ns["results"] == [0, 10, 20, 30]
    with pytest.raises(UsageError, match="must be a job id"):
        shell.run_line_magic("cloud", "rerun ../etc")


def test_the_panel_links_a_failed_job_to_its_rerun_and_what_it_came_to(ex, storage, tmp_path):
    from cloudbutton_jupyter.manager import CloudManager

    fixed = tmp_path / "fixed"
    job = ex.map(flaky, range(4), extra_args=(str(fixed),))
    job.wait(30)
    manager = CloudManager(storage=storage)
    (listed,) = manager.list_jobs()
    assert listed["state"] == "failed" and "rerun_by" not in listed  # nothing re-ran it yet
    fixed.write_text("")
    again = job.rerun_failed()
    again.wait(30)
    job.wait(30)
    rows = {j["job_id"]: j for j in manager.list_jobs()}
    original, rerun = rows[job.job_id], rows[again.job_id]
    # The original's own records still say failed; the link says what became of it.
    assert original["state"] == "failed" and rerun["state"] == "done"
    assert rerun["rerun_of"] == job.job_id and "rerun_by" not in rerun
    assert original["rerun_by"] == {
        "job_id": again.job_id, "state": "done", "outcome": "all succeeded",
        "text": f"failed → re-run as {again.job_id}: all succeeded"}
    assert manager.job_detail(job.job_id)["rerun_by"] == original["rerun_by"]
    assert manager.job_detail(again.job_id)["rerun_of"] == job.job_id


def test_a_rerun_that_fails_again_is_shown_as_such(ex, storage, tmp_path):
    from cloudbutton_jupyter.manager import CloudManager

    job = ex.map(flaky, range(7), extra_args=(str(tmp_path / "never"),))
    job.wait(30)
    first = job.rerun_failed()
    first.wait(30)
    job.wait(30)
    (tmp_path / "never").write_text("")
    second = job.rerun_failed()  # the newest re-run is the one the link names
    second.wait(30)
    job.wait(30)
    manager = CloudManager(storage=storage)
    rows = {j["job_id"]: j for j in manager.list_jobs()}
    assert rows[first.job_id]["state"] == "failed"
    assert rows[job.job_id]["rerun_by"]["job_id"] == second.job_id
    assert rows[job.job_id]["rerun_by"]["text"].endswith(": all succeeded")
    # A re-run still failing says how many.
    link = manager.job_detail(job.job_id)["rerun_by"]
    assert link["job_id"] == second.job_id
    from cloudbutton_executor import accounting

    (linked, _) = accounting.link_reruns([rows[job.job_id] | {"rerun_by": None},
                                          rows[first.job_id] | {"rerun_of": job.job_id}])
    assert linked["rerun_by"]["text"] == f"failed → re-run as {first.job_id}: 3 still failed"
