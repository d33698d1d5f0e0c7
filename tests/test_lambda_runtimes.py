"""The runtime calendar: AWS blocks creating, then updating, zip functions on a deprecated
Python runtime. The deploy refuses first (before anything is created or changed), saying
when and the two ways out; status and the pre-flight check say the same. Tested against
packaging.RUNTIMES' dates with an injected "today" (the emulator itself waives the
calendar: see lambda_emulator)."""
import datetime
import sys

import boto3
import pytest

from aws_fixtures import FUNCTION, REGION, config_dict, write_config
from cloudbutton_executor import VersionMismatchError, config, packaging
from cloudbutton_executor.backends.aws_lambda import LambdaBackend, deploy, encode_versions, host_versions
from cloudbutton_executor.packaging import RUNTIMES, RuntimeBlockedError, calendar_check, runtime_phase

HOST = packaging.runtime_for_host()
DAY = datetime.timedelta(days=1)


def test_the_table_holds_every_python_runtime_with_its_dates_and_source():
    assert set(RUNTIMES) == {"python3.10", "python3.11", "python3.12", "python3.13", "python3.14"}
    for name, r in RUNTIMES.items():
        assert r.name == name and r.deprecated < r.block_create < r.block_update, r
        assert r.base_image == f"public.ecr.aws/lambda/python:{name.removeprefix('python')}"
    # The developer guide's table, as read on RUNTIME_DATES_READ.
    assert (RUNTIMES["python3.11"].os, str(RUNTIMES["python3.11"].deprecated)) == ("Amazon Linux 2", "2027-06-30")
    assert str(RUNTIMES["python3.10"].block_create) == "2026-11-30"
    assert RUNTIMES["python3.12"].os == "Amazon Linux 2023" and str(RUNTIMES["python3.12"].block_update) == "2029-01-10"
    assert "lambda-python" in packaging.RUNTIME_DATES_SOURCE and packaging.RUNTIME_DATES_READ


def test_the_phases_and_what_each_allows():
    r = RUNTIMES["python3.11"]
    assert runtime_phase("python3.11", r.deprecated - DAY) == "supported"
    assert calendar_check("python3.11", r.deprecated - DAY) == ("ok", "")
    level, why = calendar_check("python3.11", r.deprecated)
    assert level == "warn" and "deprecated on AWS Lambda since 2027-06-30" in why
    # Creating is blocked: a new function is refused, an existing one may still be updated.
    assert calendar_check("python3.11", r.block_create, exists=False)[0] == "refuse"
    level, why = calendar_check("python3.11", r.block_create, exists=True)
    assert level == "warn" and "can be updated until 2027-08-31" in why
    level, why = calendar_check("python3.11", r.block_update, exists=True)
    assert level == "refuse" and "refuses to create or update python3.11 zip functions since 2027-08-31" in why
    # Images are never blocked: their base image only stops getting patches.
    level, why = calendar_check("python3.11", r.block_update + 365 * DAY, image=True)
    assert level == "warn" and "public.ecr.aws/lambda/python:3.11 gets no more security patches" in why
    # The ways out name the newer runtimes still supported that day.
    assert "python3.12, python3.13, python3.14" in calendar_check("python3.11", r.block_update)[1]
    late = RUNTIMES["python3.12"].deprecated  # python3.12 is deprecated too by then: not offered
    assert "(supported now: python3.13, python3.14)" in calendar_check("python3.11", late)[1]


def _counting_config(tmp_path, moto_endpoint, lambda_emulator, **lam):
    """A config whose every endpoint is a counting proxy: what the deploy asked of AWS."""
    from lambda_emulator import ForwardingProxy

    proxies = {"s3": ForwardingProxy(moto_endpoint), "lambda": ForwardingProxy(lambda_emulator.url),
               "iam": ForwardingProxy(moto_endpoint), "sts": ForwardingProxy(moto_endpoint)}
    data = config_dict(moto_endpoint, proxies["s3"].url, proxies["lambda"].url, **lam)
    data["endpoints"].update(iam=proxies["iam"].url, sts=proxies["sts"].url)
    data["lambda"]["runtime_calendar"] = "enforce"  # AWS's calendar, whatever the emulator waives
    return write_config(tmp_path / "calendar.yaml", data), proxies


def test_deploy_refuses_a_blocked_zip_runtime_before_changing_anything(
        deployed, moto_endpoint, lambda_emulator, tmp_path):
    """The refusal costs one read-only call (is the function an image? those are never
    blocked): no STS, IAM or S3 request, nothing created or changed."""
    r = RUNTIMES[HOST]
    path, proxies = _counting_config(tmp_path, moto_endpoint, lambda_emulator)
    try:
        with pytest.raises(RuntimeBlockedError) as info:
            deploy(config.load(path), today=r.block_update)
        assert proxies["lambda"].methods == {"GET": 1}
        assert sum(p.requests for k, p in proxies.items() if k != "lambda") == 0
    finally:
        for p in proxies.values():
            p.close()
    text = str(info.value)
    for date in (r.deprecated, r.block_create, r.block_update):
        assert str(date) in text
    assert f"refuses to create or update {HOST} zip functions" in text
    assert "`cloudbutton deploy --image`" in text and r.base_image in text  # way out 1
    assert "Python 3.12 or newer" in text                                    # way out 2
    assert packaging.RUNTIME_DATES_SOURCE in text and "runtime_calendar: waive" in text


def test_creating_is_blocked_but_an_existing_function_may_still_be_updated(
        deployed, moto_endpoint, lambda_emulator, tmp_path):
    r = RUNTIMES[HOST]
    path, proxies = _counting_config(tmp_path, moto_endpoint, lambda_emulator, function_name="cb-new-fn")
    try:
        with pytest.raises(RuntimeBlockedError, match=f"refuses to create {HOST} zip functions since {r.block_create}"):
            deploy(config.load(path), today=r.block_create)
        # One read (does the function exist?), nothing created or changed.
        assert proxies["lambda"].methods == {"GET": 1}
        assert sum(p.requests for k, p in proxies.items() if k != "lambda") == 0
    finally:
        for p in proxies.values():
            p.close()
    path, proxies = _counting_config(tmp_path, moto_endpoint, lambda_emulator)  # cb-worker exists
    try:
        actions = deploy(config.load(path), today=r.block_create)
    finally:
        for p in proxies.values():
            p.close()
    warning = [d for v, w, d in actions if v == "warning" and w == f"runtime {HOST}"]
    assert warning and f"can be updated until {r.block_update}" in warning[0]
    assert any(w == f"Lambda function {FUNCTION}" for _, w, _ in actions)


def test_a_deprecated_runtime_deploys_with_a_warning_and_waive_lets_a_blocked_one_try(
        deployed, lambda_config, moto_endpoint, lambda_emulator, tmp_path, capsys):
    r = RUNTIMES[HOST]
    path, proxies = _counting_config(tmp_path, moto_endpoint, lambda_emulator)
    try:
        actions = deploy(config.load(path), today=r.deprecated, out=sys.stdout)
    finally:
        for p in proxies.values():
            p.close()
    assert any(v == "warning" and f"deprecated on AWS Lambda since {r.deprecated}" in d for v, _, d in actions)
    assert "warning  runtime" in capsys.readouterr().out
    # The emulator's config waives the calendar: the deploy says so and goes on.
    actions = deploy(config.load(lambda_config), today=r.block_update)
    waived = [d for v, w, d in actions if v == "waived"]
    assert waived and "lambda.runtime_calendar: waive" in waived[0] and str(r.block_update) in waived[0]


def test_status_and_the_pre_flight_check_say_the_same(deployed, lambda_config, moto_endpoint, capsys):
    r = RUNTIMES[HOST]
    be = LambdaBackend(config=config.load(lambda_config), today=r.block_update)
    try:
        st = be.status()
        assert st["ok"] and st["runtime"] == HOST
        assert st["runtime_dates"] == {"deprecated": str(r.deprecated), "block_create": str(r.block_create),
                                       "block_update": str(r.block_update), "phase": "update blocked"}
        assert st["message"].startswith("ready; jobs still run on cb-worker, but AWS Lambda refuses")
        assert "--image" in st["runtime_notice"]
        be.check_ready()
        be._ready_at = 0.0
        be.check_ready()  # said once per backend
        err = capsys.readouterr().err
        assert err.count("jobs still run on cb-worker") == 1 and str(r.block_update) in err
    finally:
        be.shutdown()
    be = LambdaBackend(config=config.load(lambda_config), today=r.deprecated - DAY)
    try:
        st = be.status()
        assert st["message"] == "ready" and st["runtime_notice"] == "" and st["runtime_dates"]["phase"] == "supported"
    finally:
        be.shutdown()


def test_a_stale_function_that_cannot_be_updated_says_how_to_get_out(deployed, lambda_config, moto_endpoint):
    lam = boto3.client("lambda", endpoint_url=moto_endpoint, region_name=REGION)
    env = dict(lam.get_function_configuration(FunctionName=FUNCTION)["Environment"]["Variables"])
    wrong = dict(host_versions(), executor="0.0.0")
    lam.update_function_configuration(FunctionName=FUNCTION, Environment={"Variables": dict(
        env, CLOUDBUTTON_VERSIONS=encode_versions(wrong))})
    r = RUNTIMES[HOST]
    try:
        for today, expect in ((r.deprecated - DAY, "run `cloudbutton deploy` to update it"),
                              (r.block_update, "`cloudbutton deploy` cannot update it: AWS Lambda refuses")):
            be = LambdaBackend(config=config.load(lambda_config), today=today)
            try:
                with pytest.raises(VersionMismatchError) as info:
                    be.check_ready()
            finally:
                be.shutdown()
            assert expect in str(info.value) and "executor: host" in str(info.value)
    finally:
        lam.update_function_configuration(FunctionName=FUNCTION, Environment={"Variables": env})
