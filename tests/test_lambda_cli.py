"""The `cloudbutton` command: --help everywhere, deploy/status/jobs/clean against moto."""
import io
import json
import os
import subprocess
import sys

import pytest

from cloudbutton_executor import cli


def run(*argv):
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("cmd", [[], ["deploy"], ["status"], ["jobs"], ["clean"], ["cache"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(cmd + ["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: cloudbutton")
    if cmd == ["deploy"]:
        assert "--memory" in text and "--requirements" in text and "--image-uri" in text
    if cmd == ["clean"]:
        assert "--job" in text and "--older-than" in text


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "cloudbutton")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "cloudbutton_executor.cli"]
    proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "deploy" in proc.stdout and "status" in proc.stdout


def test_deploy_again_prints_nothing_to_do(deployed, lambda_config):
    from cloudbutton_executor.backends.aws_lambda import build_function_zip

    for _ in range(3):
        zip_before = build_function_zip()
        run("deploy")  # absorbs source edits made since the session's deploy
        code, out = run("deploy")
        if build_function_zip() == zip_before:
            break  # else the executor's sources were edited meanwhile (shared tree): again
    assert code == 0
    assert "Nothing to do" in out and "unchanged" in out and "cb-worker" in out


def test_status(deployed, lambda_config):
    code, out = run("status")
    assert code == 0, out
    assert "versions: match" in out and "deployed: yes" in out and "cb-lambda-tests" in out
    from cloudbutton_executor.packaging import RUNTIMES, runtime_for_host, runtime_phase, utc_today

    r = RUNTIMES[runtime_for_host()]
    assert (f"runtime: {r.name} (zip): {runtime_phase(r.name, utc_today())} (deprecated {r.deprecated}, "
            f"function create blocked {r.block_create}, update blocked {r.block_update})") in out
    code, out = run("status", "--json")
    assert code == 0 and json.loads(out)["versions_match"] is True
    code, out = run("--region", "eu-west-1", "status")  # nothing deployed there
    assert code == 1 and "cloudbutton deploy" in out


def test_jobs_and_clean(lambda_ex):
    job = lambda_ex.map(lambda x: -x, range(5), label="cli-test")
    job.result(timeout=60)
    code, out = run("jobs", "--limit", "50")
    assert code == 0 and job.job_id in out and "(cli-test)" in out
    row = [r for r in json.loads(run("jobs", "--json", "--limit", "50")[1]) if r["job_id"] == job.job_id][0]
    assert row["items"] == 5 and row["tasks_stored"] == 5
    code, out = run("clean", "--job", job.job_id, "--dry-run")
    assert code == 0 and "would delete" in out
    code, out = run("clean", "--job", job.job_id)
    assert code == 0 and f"deleted {job.job_id}" in out
    assert job.job_id not in run("jobs", "--limit", "50")[1]
    code, out = run("clean", "--job", job.job_id)
    assert code == 1 and "no job" in out
    other = lambda_ex.map(abs, [1]).job_id
    lambda_ex.jobs()  # still listed before the age-based clean
    code, out = run("clean", "--older-than", "0s")
    assert code == 0 and f"deleted {other}" in out
    assert run("jobs", "--json")[1].strip() == "[]"


def test_clean_bad_input_names_the_culprit(deployed, lambda_config, capsys):
    code, _ = run("clean", "--older-than", "soon")
    assert code == 2 and "--older-than 'soon'" in capsys.readouterr().err
    code, _ = run("clean", "--job", "../../etc")
    assert code == 2 and "--job: job_id must be a job id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: exactly one of --job/--older-than
        cli.main(["clean"])
    assert info.value.code == 2
    assert cli.parse_duration("12h") == 43200 and cli.parse_duration("2") == 2 * 86400


def test_config_errors_are_reported(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("lambda: {timeout: 5000}\n")
    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(bad))
    code, _ = run("status")
    err = capsys.readouterr().err
    assert code == 2 and "c.yaml" in err and "timeout" in err


def test_lambda_status_never_raises(tmp_path, deployed, lambda_config):
    from cloudbutton_executor.backends.aws_lambda import lambda_status

    assert lambda_status(lambda_config)["ok"] is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("bucket: NOT_A_BUCKET\n")
    st = lambda_status(str(bad))
    assert st["ok"] is False and "NOT_A_BUCKET" in st["message"]


def test_cache_list_and_clear_in_s3(lambda_ex, capsys):
    job = lambda_ex.map(lambda x: x * 3, range(3), cache=True)
    assert job.result(timeout=60) == [0, 3, 6]
    identity = job.dispatcher.spec.identity
    code, out = run("cache", "list")
    assert code == 0 and identity in out and "FUNCTION IDENTITY" in out
    code, _ = run("cache", "clear", "--function", "../jobs")
    assert code == 2 and "not a cache identity" in capsys.readouterr().err
    code, out = run("cache", "clear", "--function", identity)
    assert code == 0 and "object(s) of the result cache of " + identity in out
    assert identity not in run("cache", "list")[1]
    again = lambda_ex.map(lambda x: x * 3, range(3), cache=True)
    assert again.result(timeout=60) == [0, 3, 6] and again.counts()["cached"] == 0


def failing_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_jobs_shows_a_failed_job_re_run_and_its_outcome(lambda_ex):
    job = lambda_ex.map(failing_odd, range(4), label="rerun-cli")
    job.wait(60)
    again = job.rerun_failed()
    again.wait(60)
    code, out = run("jobs", "--cost", "--limit", "50")
    assert code == 0
    lines = out.splitlines()
    at = [k for k, line in enumerate(lines) if line.startswith(job.job_id)][0]
    assert " failed " in lines[at]
    assert lines[at + 1].strip() == f"failed → re-run as {again.job_id}: 2 still failed"
    rows = {r["job_id"]: r for r in json.loads(run("jobs", "--json", "--limit", "50")[1])}
    assert rows[again.job_id]["rerun_of"] == job.job_id
    assert rows[job.job_id]["rerun_by"]["job_id"] == again.job_id
