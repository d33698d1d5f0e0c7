"""`cloudbutton deploy` against moto over HTTP: what it creates, idempotence, IAM scope,
layers, version checks."""
import base64
import hashlib
import io
import json
import os
import zipfile

import boto3
import pytest

from aws_fixtures import BUCKET, FUNCTION, PREFIX, REGION, config_dict, write_config
from cloudbutton_executor import Executor, VersionMismatchError, config
from cloudbutton_executor.backends import aws_lambda
from cloudbutton_executor.backends.aws_lambda import (NotDeployedError, build_function_zip, deploy,
                                                      host_versions)


def lam_client(moto_endpoint):
    return boto3.client("lambda", endpoint_url=moto_endpoint, region_name=REGION)


def test_first_deploy_creates_everything(deployed, moto_endpoint):
    verbs = {what: verb for verb, what, _ in deployed}
    assert verbs[f"s3://{BUCKET}"] == "created"
    assert verbs[f"IAM role {FUNCTION}-role"] == "created"
    assert verbs["IAM policy cloudbutton-access"] == "created"
    assert verbs[f"Lambda function {FUNCTION}"] == "created"
    assert verbs["async invoke config"] == "set"
    lam = lam_client(moto_endpoint)
    conf = lam.get_function_configuration(FunctionName=FUNCTION)
    assert conf["Handler"] == "cloudbutton_executor.supervisor.handler"
    assert conf["Runtime"] == f"python{host_versions()['python']}"
    assert (conf["MemorySize"], conf["Timeout"]) == (512, 30)
    env = conf["Environment"]["Variables"]
    assert aws_lambda.decode_versions(env["CLOUDBUTTON_VERSIONS"]) == host_versions()
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in env)
    assert lam.get_function_event_invoke_config(FunctionName=FUNCTION)["MaximumRetryAttempts"] == 0
    # The zip holds the executor and cloudpickle (boto3 comes with Lambda's runtime).
    names = zipfile.ZipFile(__import__("io").BytesIO(build_function_zip())).namelist()
    assert "cloudbutton_executor/worker.py" in names and "cloudpickle/__init__.py" in names
    assert not any(n.startswith(("boto3/", "IPython/", "tornado/")) or "__pycache__" in n for n in names)


def test_second_deploy_is_a_noop(deployed, lambda_config, moto_endpoint, capsys):
    lam = lam_client(moto_endpoint)
    for _ in range(3):
        zip_before = build_function_zip()
        deploy(config.load(lambda_config))  # absorbs source edits made since the session's deploy
        before = lam.get_function_configuration(FunctionName=FUNCTION)
        actions = deploy(config.load(lambda_config), out=__import__("sys").stdout)
        if build_function_zip() == zip_before:
            break  # else the executor's sources were edited meanwhile (shared tree): again
    assert {verb for verb, _, _ in actions} == {"unchanged"}, actions
    after = lam.get_function_configuration(FunctionName=FUNCTION)
    assert after["LastModified"] == before["LastModified"]
    assert after["CodeSha256"] == base64.b64encode(hashlib.sha256(build_function_zip()).digest()).decode()
    assert len(lam.list_function_event_invoke_configs(FunctionName=FUNCTION)["FunctionEventInvokeConfigs"]) == 1
    assert "unchanged" in capsys.readouterr().out


def test_iam_policy_grants_only_the_prefix(deployed, moto_endpoint):
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=REGION)
    role = iam.get_role(RoleName=f"{FUNCTION}-role")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert iam.list_attached_role_policies(RoleName=f"{FUNCTION}-role")["AttachedPolicies"] == []
    assert iam.list_role_policies(RoleName=f"{FUNCTION}-role")["PolicyNames"] == ["cloudbutton-access"]
    doc = iam.get_role_policy(RoleName=f"{FUNCTION}-role", PolicyName="cloudbutton-access")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        assert not any("*" in a for a in actions), st  # no wildcard actions
        assert "*" not in resources
        for a in actions:
            assert a.split(":")[0] in ("s3", "logs"), a
        if any(a.startswith("s3:") for a in actions):
            if actions == ["s3:ListBucket"]:
                assert resources == [f"arn:aws:s3:::{BUCKET}"]
                assert st["Condition"] == {"StringLike": {"s3:prefix": [f"{PREFIX}/*"]}}
            elif actions == ["s3:PutObject"]:  # workers write only their tasks' outputs
                assert resources == [f"arn:aws:s3:::{BUCKET}/{PREFIX}/jobs/*/tasks/*"]
            else:
                assert actions == ["s3:GetObject"], actions  # read anything; delete nothing
                assert resources == [f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"]
        else:
            assert all(f":log-group:/aws/lambda/{FUNCTION}:" in r for r in resources), resources


def test_version_mismatch_is_refused(deployed, lambda_config, moto_endpoint):
    lam = lam_client(moto_endpoint)
    conf = lam.get_function_configuration(FunctionName=FUNCTION)
    env = dict(conf["Environment"]["Variables"])
    wrong = dict(host_versions(), cloudpickle="0.0.1")
    lam.update_function_configuration(FunctionName=FUNCTION, Environment={"Variables": dict(
        env, CLOUDBUTTON_VERSIONS=aws_lambda.encode_versions(wrong))})
    try:
        with Executor(backend="lambda", config_path=lambda_config) as ex:
            with pytest.raises(VersionMismatchError) as info:
                ex.map(abs, [1, 2])
            assert "cloudbutton deploy" in str(info.value) and "cloudpickle" in str(info.value)
            st = ex.backend.status()
            assert st["versions_match"] is False and "cloudbutton deploy" in st["message"]
    finally:
        actions = deploy(config.load(lambda_config))
    assert ("updated", f"Lambda function {FUNCTION} configuration", "Description, Environment") in actions \
        or any(v == "updated" and "configuration" in w for v, w, _ in actions)
    with Executor(backend="lambda", config_path=lambda_config) as ex:
        ex.backend.check_ready()  # matches again


def test_not_deployed_function_names_the_fix(deployed, lambda_config):
    with Executor(backend="lambda", config_path=lambda_config, function_name="cb-missing") as ex:
        with pytest.raises(NotDeployedError, match="cb-missing.*cloudbutton deploy"):
            ex.map(abs, [1])
        assert ex.backend.status()["deployed"] is False


def _write_wheel(directory, name="cbtestdep", version="1.0"):
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b'=').decode()},{len(c)}\n"
        for p, c in files.items()) + f"{dist}/RECORD,,\n"
    path = os.path.join(directory, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as zf:
        for p, c in files.items():
            zf.writestr(p, c)
        zf.writestr(f"{dist}/RECORD", record)
    return path


def test_requirements_go_into_a_layer_that_the_worker_imports(
        deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _write_wheel(str(wheels))
    req = tmp_path / "requirements.txt"
    req.write_text("cbtestdep==1.0\n")
    # pip reads these itself: a local wheel dir instead of an index (no internet in tests).
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    path = write_config(tmp_path / "layered.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-layered"))
    actions = deploy(config.load(path), requirements=str(req))
    assert any(v == "created" and w.startswith("layer cb-layered-deps:") for v, w, _ in actions)
    conf = lam_client(moto_endpoint).get_function_configuration(FunctionName="cb-layered")
    assert len(conf["Layers"]) == 1
    again = deploy(config.load(path), requirements=str(req))
    assert {v for v, _, _ in again} == {"unchanged"}
    with Executor(backend="lambda", config_path=path, timeout=20) as ex:
        assert ex.map(lambda _: __import__("cbtestdep").VALUE, [0]).result(timeout=60) == [42]


def test_a_layer_over_the_direct_upload_limit_goes_through_s3(
        deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path, monkeypatch):
    """Lambda takes at most 50 MB in the API request; a bigger layer zip is put in the bucket
    and published from there. The limit is lowered here so a tiny layer crosses it (moto
    enforces no size); Lambda (moto) reads the layer from S3 and the worker imports it."""
    from cloudbutton_executor import packaging

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _write_wheel(str(wheels), version="2.0")
    req = tmp_path / "requirements.txt"
    req.write_text("cbtestdep==2.0\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setattr(packaging, "DIRECT_UPLOAD_BYTES", 100)
    path = write_config(tmp_path / "big.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-biglayer"))
    actions = deploy(config.load(path), requirements=str(req))
    created = [d for v, w, d in actions if v == "created" and w.startswith("layer cb-biglayer-deps:")]
    assert len(created) == 1 and f"through s3://{BUCKET}/{PREFIX}/deployments/layers/" in created[0], actions
    zkey = created[0].split(f"s3://{BUCKET}/")[1].split(",")[0]
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    with zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=zkey)["Body"].read())) as zf:
        assert "python/cbtestdep/__init__.py" in zf.namelist()
    with Executor(backend="lambda", config_path=path, timeout=20) as ex:
        assert ex.map(lambda _: __import__("cbtestdep").VALUE, [0]).result(timeout=60) == [42]


def test_bad_requirements_file_is_named(deployed, lambda_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        deploy(config.load(lambda_config), requirements=str(tmp_path / "nope.txt"))


def test_config_rejects_credentials_and_unknown_keys(tmp_path):
    p = write_config(tmp_path / "bad.yaml", {"aws_secret_access_key": "x", "bucket": "b-b-b"})
    with pytest.raises(config.ConfigError, match="aws_secret_access_key.*AWS chain"):
        config.load(p)
    p = write_config(tmp_path / "bad2.yaml", {"lambda": {"memroy": 512}})
    with pytest.raises(config.ConfigError, match="lambda.memroy"):
        config.load(p)
    p = write_config(tmp_path / "bad3.yaml", {"lambda": {"timeout": 2000}})
    with pytest.raises(config.ConfigError, match="bad3.yaml.*timeout"):
        config.load(p)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "missing.yaml"))
