"""Your packages on Lambda, on the faithful emulator: `deploy --sync` builds a layer from the
package registry, a numpy job runs with it, the pre-flight check refuses jobs the deployed
runtime cannot run, and task code never sees the host's environment."""
import io
import json
import os
import sys
import time
import types
import zipfile

import boto3
import pytest

from aws_fixtures import BUCKET, PREFIX, REGION, aws_environment, config_dict, write_config
from cloudbutton_executor import (Executor, MissingPackageError, OutOfMemoryError, TaskTimeoutError,
                                  WorkerDiedError, WorkerSetupError, config, protocol)
from cloudbutton_executor.backends.aws_lambda import ImageRequired, deploy

NUMPY_FN = "cb-numpy"


def lam_client(moto_endpoint):
    return boto3.client("lambda", endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture(scope="module")
def numpy_config(deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path_factory):
    """A function with numpy synced into a layer (built from the registry, wheels cached)."""
    path = write_config(tmp_path_factory.mktemp("numpy") / "numpy.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name=NUMPY_FN, memory=1769,
        timeout=60))
    t0 = time.time()
    with aws_environment():  # module-scoped: set up before the test's own environment
        actions = deploy(config.load(path), modules=["numpy"], out=sys.stdout)
    print(f"deploy --sync numpy took {time.time() - t0:.1f} s")
    return path, actions


def dgemm(n):
    import numpy as np

    from cloudbutton_executor import report_flops

    a = np.random.default_rng(n).random((n, n))
    c = a @ a
    report_flops(2 * n ** 3)
    return float(c[0, 0]), np.__version__, np.__file__


def test_numpy_dgemm_runs_with_the_synced_layer(numpy_config, lambda_emulator, moto_endpoint):
    path, actions = numpy_config
    created = [a for a in actions if a[0] == "created" and a[1].startswith(f"layer {NUMPY_FN}-deps:")]
    assert created, actions
    conf = lam_client(moto_endpoint).get_function_configuration(FunctionName=NUMPY_FN)
    assert len(conf["Layers"]) == 1
    with Executor(backend="lambda", config_path=path) as ex:
        job = ex.map(dgemm, [512] * 8)
        out = job.result(timeout=180)
        gflops = job.stats["gflops"]
        print(f"effective GFLOPS on the emulator: {gflops:.2f}")
        manifest = ex.backend.deployment()
    assert gflops > 0 and job.stats["flops"] == 8 * 2 * 512 ** 3
    version, where = out[0][1], out[0][2]
    # The layer's numpy (for the runtime's glibc), unpacked under the emulator's /opt.
    assert where.startswith(lambda_emulator.root) and "/opt/" in where and "/python/numpy/" in where
    assert manifest["modules"]["numpy"]["version"] == version
    assert manifest["runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert manifest["architecture"] == "x86_64" and manifest["memory"] == 1769
    import numpy

    if version != numpy.__version__:  # no wheel of the host's numpy for this runtime's glibc
        fb = manifest["fallbacks"]["numpy"]
        assert fb["host"] == numpy.__version__ and fb["deployed"] == version and "glibc" in fb["reason"]
    # Cold starts report the container's INIT time, for the cost model. (Random order may
    # leave the sandboxes warm, and a cold container's first invocation may be a backup
    # whose status lost the first write: a cold item need not be among the results.)
    assert all(job.outcomes.task_record(job.item_task(i))[0].get("init_s", -1) >= 0
                         for i in range(len(job)) if job[i].stats.get("cold_start"))


def test_public_testing_modules_survive_the_synced_layer(numpy_config, lambda_emulator, moto_endpoint):
    """numpy.testing (and pandas.testing, which pandas imports at import time) are API, not
    test suites: the layer keeps them, and drops numpy's test suites but the one that
    numpy.testing itself imports (numpy/testing/_private/utils.py: numpy._core.tests._natype)."""
    path, _ = numpy_config
    with Executor(backend="lambda", config_path=path) as ex:
        version, where, testing = ex.map(numpy_check, [16]).result(timeout=120)[0]
    assert "/opt/" in testing and testing.endswith("/python/numpy/testing/__init__.py")
    from moto.awslambda.models import lambda_backends

    conf = lam_client(moto_endpoint).get_function_configuration(FunctionName=NUMPY_FN)
    lv = lambda_backends["123456789012"][REGION].layers_versions_by_arn(conf["Layers"][0]["Arn"])
    names = zipfile.ZipFile(io.BytesIO(lv.code_bytes)).namelist()
    assert any(n.startswith("python/numpy/testing/_private/") for n in names)
    suites = {n.split("/tests/")[0] for n in names if n.startswith("python/numpy/") and "/tests/" in n}
    assert suites == {"python/numpy/_core"}, suites
    assert "python/numpy/_core/tests/_natype.py" in names


# Published prices (us-east-1, https://aws.amazon.com/lambda/pricing/ and
# https://aws.amazon.com/s3/pricing/), written here independently of accounting.py.
GB_SECOND_X86 = 0.0000166667
PER_INVOKE = 0.20 / 1e6
S3_PER_REQUEST = {"PUT": 0.005 / 1000, "LIST": 0.005 / 1000, "GET": 0.0004 / 1000, "HEAD": 0.0004 / 1000,
                  "DELETE": 0.0}


def test_widget_panel_and_cli_price_a_lambda_job_as_deployed(numpy_config, moto_endpoint, tmp_path):
    """One job on the emulator, priced from its stored statuses with the deployed memory
    (1769 MB) and architecture and the INIT time of its cold starts, by hand here; the
    widget, the panel and `cloudbutton jobs --cost` say the same."""
    from cloudbutton_executor import cli
    from cloudbutton_jupyter.manager import CloudManager
    from cloudbutton_magic.widget_state import JobTracker

    path, _ = numpy_config
    lam = lam_client(moto_endpoint)
    env = lam.get_function_configuration(FunctionName=NUMPY_FN)["Environment"]["Variables"]
    # A configuration change: every container starts cold (INIT time billed).
    lam.update_function_configuration(FunctionName=NUMPY_FN, Environment={"Variables": dict(env, COLD="1")})
    try:
        with Executor(backend="lambda", config_path=path) as ex:
            job = ex.map(dgemm, [128] * 4)
            job.result(timeout=180)
            tracker = JobTracker(job)
            tracker.poll()
            widget = tracker.header_stats(now=job.finished_at)["cost_usd"]
            storage = ex.backend.storage
            (panel,) = [j for j in CloudManager(storage=storage, prefix=PREFIX).list_jobs()
                        if j["job_id"] == job.job_id]
    finally:
        lam.update_function_configuration(FunctionName=NUMPY_FN, Environment={"Variables": env})
    out = io.StringIO()
    assert cli.main(["--config", path, "jobs", "--cost", "--json", "--limit", "50"], out=out) == 0
    (row,) = [r for r in json.loads(out.getvalue()) if r["job_id"] == job.job_id]
    # By hand, from the raw statuses in S3.
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/jobs/{job.job_id}/tasks/")["Contents"]
            if o["Key"].endswith("/status.json")]
    assert len(keys) == 4
    expected, inits = 0.0, []
    for key in keys:
        st = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        stats = st["stats"]
        billed = max(0.001, stats["result_stored"] - stats["worker_start"]) + stats.get("init_s", 0.0)
        inits.append((stats.get("init_s", 0.0), stats.get("cold_start")))
        expected += billed * 1769 / 1024 * GB_SECOND_X86 + (st.get("attempt", 0) + 1) * PER_INVOKE
        expected += sum(n * S3_PER_REQUEST[kind] for kind, n in stats["requests"].items())
    assert any(i > 0 for i, cold in inits), inits  # cold starts: INIT time is in the bill
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/jobs/{job.job_id}/manifest.json")["Body"].read())
    assert (manifest["memory_mb"], manifest["architecture"]) == (1769, "x86_64")
    assert expected > 0
    for name, got in (("widget", widget), ("panel", panel["cost_usd"]), ("cli", row["cost_usd"])):
        assert got == pytest.approx(expected, rel=1e-9), name


def test_unchanged_environment_deploys_nothing(numpy_config):
    path, _ = numpy_config
    t0 = time.time()
    actions = deploy(config.load(path), modules=["numpy"])
    assert {verb for verb, _, _ in actions} == {"unchanged"}, actions
    assert time.time() - t0 < 20  # no pip run: the layer is found by its pin set
    # A plain deploy keeps the synced layer.
    assert {verb for verb, _, _ in deploy(config.load(path))} == {"unchanged"}


def test_job_without_the_layer_is_refused_before_anything_is_uploaded(lambda_ex, moto_endpoint):
    import numpy

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)

    def keys():
        return {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{PREFIX}/") for o in page.get("Contents", [])}

    before = keys()
    with pytest.raises(MissingPackageError) as info:
        lambda_ex.map(dgemm, [64, 64])
    text = str(info.value)
    assert "module numpy" in text and numpy.__version__ in text and "not deployed" in text
    assert "cloudbutton deploy --sync" in text
    assert keys() == before  # no function blob, no manifest, no data: nothing uploaded
    from cloudbutton_executor.packaging import recorded_modules

    assert "numpy" in recorded_modules()  # what `deploy --sync` will now deploy


def test_a_module_the_runtime_lacks_ends_the_job_in_seconds(lambda_ex):
    """The pre-flight check cannot know this module (no distribution provides it): the
    worker's setup error ends every task at once, naming it."""
    mod = types.ModuleType("cb_host_only_mod")
    exec("def f(x):\n    return x + 1\n", mod.__dict__)
    sys.modules["cb_host_only_mod"] = mod
    t0 = time.time()
    outcomes = lambda_ex.map(mod.f, [1, 2, 3]).results(timeout=60)
    took = time.time() - t0
    assert took < 10, took  # not at the timeout (20 s) + grace
    for err in outcomes:
        assert isinstance(err, WorkerSetupError), err
        assert err.missing_module == "cb_host_only_mod"
        assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in str(err)


def test_a_refused_status_write_ends_the_task_in_seconds_with_the_reason(lambda_ex, s3_proxy):
    """When the worker cannot store its status (the bucket refuses the write), its
    supervisor's crash report says why, at once: not a timeout 23 s later."""
    from lambda_emulator import ROLE_ENV

    s3_proxy.deny_puts, s3_proxy.deny_for = ("/status.json",), ROLE_ENV["AWS_ACCESS_KEY_ID"]
    t0 = time.time()
    (out,) = lambda_ex.map(abs, [-1]).results(timeout=60)
    took = time.time() - t0
    assert isinstance(out, WorkerDiedError), repr(out)
    assert "worker handler failed" in str(out) and "AccessDenied" in str(out), str(out)
    assert took < 10, took


def test_task_code_never_sees_the_host_environment(lambda_ex, lambda_emulator):
    def inspect(_):
        import importlib
        import os
        import sys
        import tempfile

        import boto3
        import botocore

        seen = {"path": list(sys.path), "prefix": sys.prefix,
                "isolation": os.environ.get("CB_EMULATOR_ISOLATION"), "tmp": tempfile.gettempdir(),
                "sdk": {"boto3": boto3.__version__, "botocore": botocore.__version__}}
        for name in ("IPython", "numpy", "pytest", "moto"):  # on the host, not on Lambda
            try:
                importlib.import_module(name)
                seen[name] = "importable"
            except ImportError:
                seen[name] = "missing"
        try:
            with open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "x"), "w"):
                pass
            seen["task_root"] = "writable"
        except OSError:
            seen["task_root"] = "read-only"
        with open(os.path.join(tempfile.gettempdir(), "ok"), "w") as f:
            f.write("scratch")
        try:  # more than the 512 MB /tmp holds
            with open(os.path.join(tempfile.gettempdir(), "big"), "wb") as f:
                for _ in range(600):
                    f.write(b"\0" * (1 << 20))
            seen["tmp_cap"] = "none"
        except OSError as exc:
            seen["tmp_cap"] = type(exc).__name__
        finally:
            try:
                os.unlink(os.path.join(tempfile.gettempdir(), "big"))
            except OSError:
                pass
        return seen

    seen = lambda_ex.map(inspect, [0]).result(timeout=60)[0]
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    assert not any(p.startswith(venv) or "site-packages" in p and lambda_emulator.root not in p
                   for p in seen["path"] if "/runtimes/" not in p), seen["path"]
    assert {seen[n] for n in ("IPython", "numpy", "pytest", "moto")} == {"missing"}, seen
    assert seen["task_root"] == "read-only" and seen["tmp_cap"] in ("OSError", "IOError")
    if lambda_emulator.isolate:
        assert seen["isolation"] == "namespace"
    # The worker runs on the oldest SDK we expect a runtime to bundle (packaging.RUNTIMES' floor).
    from cloudbutton_executor.packaging import RUNTIMES, runtime_for_host

    assert seen["sdk"] == RUNTIMES[runtime_for_host()].sdk


def test_memory_other_than_deployed_is_refused(lambda_ex, deployed):
    with pytest.raises(ValueError, match=r"memory 2048 MB.*deployed with 512 MB.*cloudbutton deploy --memory 2048"):
        lambda_ex.map(abs, [1], memory_mb=2048)
    with pytest.raises(ValueError, match=r"timeout 60 s.*at 30 s.*cloudbutton deploy --timeout 60"):
        lambda_ex.map(abs, [1], timeout=60)
    job = lambda_ex.map(abs, [-1])  # the deployed memory, named in the job
    assert job.result(timeout=60) == [1] and job.memory_mb == 512


def _hog(mb):
    return len(bytearray(mb * 2 ** 20))


def test_a_task_over_the_deployed_memory_ends_as_out_of_memory_in_seconds(lambda_ex):
    """The deployed MemorySize (512 MB in the tests) bounds a task: 700 MB fails with the
    limit named, soon (not at the timeout); 64 MB in the same job succeeds."""
    t0 = time.time()
    big, small = lambda_ex.map(_hog, [700, 64]).results(timeout=60)
    took = time.time() - t0
    assert isinstance(big, OutOfMemoryError) and "memory limit of 512 MB" in str(big), repr(big)
    assert small == 64 * 2 ** 20 and took < 15, took


def test_a_job_timeout_shorter_than_the_function_stops_the_worker(lambda_ex):
    def slow(x):
        import time

        time.sleep(x)
        return x

    t0 = time.time()
    outcomes = lambda_ex.map(slow, [0, 8, 0], chunksize=3, timeout=1.5).results(timeout=60)
    took = time.time() - t0
    assert outcomes[0] == 0
    assert isinstance(outcomes[1], TaskTimeoutError) and isinstance(outcomes[2], TaskTimeoutError)
    assert "job's timeout" in str(outcomes[1])
    assert took < 7, took  # the worker stopped at 3 x 1.5 s, not at the function's 30 s


def test_account_concurrency_caps_inflight(deployed, moto_endpoint, s3_proxy, lambda_emulator,
                                           tmp_path, capsys):
    """GetAccountSettings grants 6 (the emulator's slots); workers=50 is capped to it: at most
    2 x 6 invocations are out at a time, so Lambda's queue never holds more than 12 of the 40
    (uncapped, 34 would wait there at once). Backups are other rules (an event silent for
    `lost_after` is sent again, a straggler gets a speculative backup, and cold starts on a
    loaded machine can draw both): this job waits 30 s before presuming an event lost and
    sends no speculative backups, so only the cap is measured."""
    path = write_config(tmp_path / "patient.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, lost_after=30))
    limit = lambda_emulator.concurrency
    lambda_emulator.counts["max_queued"] = 0
    sent = len(lambda_emulator.payloads)
    with Executor(backend="lambda", config_path=path, workers=50) as ex:
        assert ex.backend.account_concurrency() == limit
        # backups=False: a cold start is slower than 3x the median task, which draws a
        # speculative backup (another rule, tested in test_backups.py).
        assert ex.map(time.sleep, [0.3] * 40, backups=False).result(timeout=120) == [None] * 40
        assert ex.backend.limits.concurrency == limit and ex.backend.limits.max_inflight == 2 * limit
    assert len(lambda_emulator.payloads) - sent == 40  # no backups: each event sent once
    assert 0 < lambda_emulator.counts["max_queued"] <= 2 * limit
    err = capsys.readouterr().err
    assert f"workers=50 is over the concurrency Lambda allows this function ({limit})" in err


def test_async_config_sets_the_event_age_from_the_timeout(deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path):
    from cloudbutton_executor.backends.aws_lambda.function import max_event_age

    cfg = lam_client(moto_endpoint).get_function_event_invoke_config(FunctionName="cb-worker")
    assert cfg["MaximumRetryAttempts"] == 0
    assert cfg["MaximumEventAgeInSeconds"] == max_event_age(30) == 2 * 30 + 60  # not Lambda's 6 h
    path = write_config(tmp_path / "age.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-age", timeout=100))
    deploy(config.load(path))

    def age():
        return lam_client(moto_endpoint).get_function_event_invoke_config(
            FunctionName="cb-age")["MaximumEventAgeInSeconds"]

    assert age() == 260
    actions = deploy(config.load(path), timeout=900)  # a longer timeout: older events are still useful
    assert ("set", "async invoke config", "MaximumRetryAttempts=0, MaximumEventAgeInSeconds=1860") in actions
    assert age() == 1860 and max_event_age(20000) == 21600 and max_event_age(1) == 62


def test_arm64_deploy_gets_arm_wheels(deployed, moto_endpoint, s3_proxy, lambda_emulator, tmp_path):
    path = write_config(tmp_path / "arm.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-arm"))
    deploy(config.load(path), modules=["numpy"], arch="arm64")
    lam = lam_client(moto_endpoint)
    conf = lam.get_function_configuration(FunctionName="cb-arm")
    assert conf["Architectures"] == ["arm64"]
    from moto.awslambda.models import lambda_backends

    lv = lambda_backends["123456789012"][REGION].layers_versions_by_arn(conf["Layers"][0]["Arn"])
    assert lv.compatible_architectures == ["arm64"]
    names = zipfile.ZipFile(io.BytesIO(lv.code_bytes)).namelist()
    wheel = [n for n in names if n.startswith("python/numpy-") and n.endswith(".dist-info/WHEEL")]
    tags = zipfile.ZipFile(io.BytesIO(lv.code_bytes)).read(wheel[0]).decode()
    assert "aarch64" in tags and "x86_64" not in tags
    assert any(n.endswith(".so") for n in names)  # compiled code is kept
    with Executor(backend="lambda", config_path=path) as ex:  # this emulator runs x86_64 only
        with pytest.raises(Exception):
            ex.map(abs, [1]).result(timeout=30)


def _commands_for(build_dir, function, tag, config_path, memory, timeout):
    """The exact commands of the container-image path (the AWS guide's steps)."""
    reg = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    uri = f"{reg}/{function}:{tag}"
    return uri, [
        f"cd {build_dir}",
        f"aws ecr create-repository --repository-name {function} --region us-east-1 "
        "--image-scanning-configuration scanOnPush=true  # once (it fails if it exists)",
        f"aws ecr get-login-password --region us-east-1 | docker login --username AWS --password-stdin {reg}",
        f"docker build --platform linux/amd64 --provenance=false -t {function}:{tag} .",
        f"docker tag {function}:{tag} {uri}",
        f"docker push {uri}",
        f"cloudbutton --config {config_path} --region us-east-1 deploy --memory {memory} --timeout {timeout} "
        f"--arch x86_64 --image-uri {uri}",
    ]


def numpy_check(n):
    import numpy as np
    import numpy.testing  # public API, imported by pandas and scikit-learn at import time

    numpy.testing.assert_allclose(np.eye(n) @ np.ones(n), np.ones(n))
    return np.__version__, np.__file__, numpy.testing.__file__


def test_the_image_path_end_to_end_without_docker(deployed, moto_endpoint, s3_proxy, lambda_emulator,
                                                  tmp_path, monkeypatch, capsys):
    """The way out of a blocked zip runtime: `deploy --image` writes a build context (the
    same resolver's site-packages + the function code on AWS's base image) and prints the
    exact commands; the emulator "pushes" the context; the printed deploy command deploys
    the image; a numpy job runs in it."""
    import shlex

    from cloudbutton_executor import cli, packaging

    r = packaging.RUNTIMES[packaging.runtime_for_host()]
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker here (nor anywhere in these tests)
    data = config_dict(moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-img",
                       memory=1769, timeout=60)
    data["lambda"]["runtime_calendar"] = "enforce"
    path = write_config(tmp_path / "image.yaml", data)
    with pytest.raises(packaging.RuntimeBlockedError):
        deploy(config.load(path), modules=["numpy"], today=r.block_update)  # the zip path: refused
    with pytest.raises(ImageRequired) as info:
        deploy(config.load(path), modules=["numpy"], image=True, today=r.block_update, out=sys.stdout)
    assert "gets no more security patches" in capsys.readouterr().out  # images are never blocked
    err = info.value
    ctx = err.build_dir
    with open(os.path.join(ctx, "Dockerfile")) as f:
        docker = [ln.strip() for ln in f if not ln.startswith("#")]
    assert docker == [f"FROM {r.base_image}", "COPY function/ ${LAMBDA_TASK_ROOT}/",
                      "COPY site-packages/ ${LAMBDA_TASK_ROOT}/", 'CMD ["cloudbutton_executor.supervisor.handler"]']
    assert os.path.isfile(os.path.join(ctx, "function", "cloudbutton_executor", "worker.py"))
    assert os.path.isfile(os.path.join(ctx, "function", "cloudpickle", "__init__.py"))
    site = os.listdir(os.path.join(ctx, "site-packages"))
    assert "numpy" in site and not any(n.startswith("cloudpickle") for n in site)
    with open(os.path.join(ctx, "image.json")) as f:
        record = json.load(f)
    uri, expected = _commands_for(ctx, "cb-img", record["tag"], path, 1769, 60)
    assert err.commands == expected
    assert "\n  ".join(expected) in str(err)
    with pytest.raises(lam_client(moto_endpoint).exceptions.ResourceNotFoundException):
        lam_client(moto_endpoint).get_function(FunctionName="cb-img")  # nothing deployed yet
    # docker build + docker push, as far as the emulator can without docker:
    lambda_emulator.push_image(uri, ctx)
    out = io.StringIO()
    assert cli.main(shlex.split(expected[-1])[1:], out=out) == 0, out.getvalue()
    fn = lam_client(moto_endpoint).get_function(FunctionName="cb-img")
    assert fn["Configuration"]["PackageType"] == "Image" and fn["Code"]["ImageUri"] == uri
    with Executor(backend="lambda", config_path=path) as ex:
        job = ex.map(dgemm, [256] * 3)
        res = job.result(timeout=180)
        checked = ex.map(numpy_check, [8]).result(timeout=60)[0]
        manifest = ex.backend.deployment()
    assert job.stats["flops"] == 3 * 2 * 256 ** 3
    images = os.path.join(lambda_emulator.root, "images")
    assert res[0][2].startswith(images) and checked[1].startswith(images) and checked[2].startswith(images)
    assert manifest["image_uri"] == uri and manifest["package_type"] == "Image"
    assert manifest["modules"]["numpy"]["version"] == res[0][1] == record["modules"]["numpy"]["version"]
    # Unchanged: the same command changes nothing; a plain deploy keeps the image; so does
    # --sync with the same packages, and the calendar does not block an image function.
    assert {v for v, _, _ in deploy(config.load(path), image_uri=uri)} == {"unchanged"}
    assert {v for v, _, _ in deploy(config.load(path))} == {"unchanged"}
    for blocked in (deploy(config.load(path), today=r.block_update),
                    deploy(config.load(path), modules=["numpy"], today=r.block_update)):
        assert {v for v, _, _ in blocked} == {"unchanged", "warning"}, blocked
        assert lam_client(moto_endpoint).get_function(FunctionName="cb-img")["Code"]["ImageUri"] == uri
    # Lambda refuses an image that was never pushed (the emulator models it).
    with pytest.raises(Exception, match="Source image .*:nope does not exist"):
        deploy(config.load(path), image_uri=uri.rsplit(":", 1)[0] + ":nope")
    # And a function's package type cannot change: said before anything is built.
    zpath = write_config(tmp_path / "zip.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-worker"))
    for kwargs in ({"image_uri": uri}, {"image": True, "modules": ["numpy"]}):
        with pytest.raises(RuntimeError, match="cb-worker is a zip function .* delete it first"):
            deploy(config.load(zpath), **kwargs)
    assert not os.path.exists(os.path.join(os.path.dirname(ctx), "cb-worker"))


# A stand-in for the docker CLI with a daemon: it checks what `deploy --image` runs (login
# with ECR's token, a single-platform build of the context, tag, push to the logged-in
# registry) and pushes to the emulator's registry, which is what Lambda then runs.
_DOCKER = r'''#!{python}
import json, os, sys, urllib.request

state_path = os.environ["CB_DOCKER_STATE"]
state = json.load(open(state_path)) if os.path.exists(state_path) else \
    {{"calls": [], "logins": {{}}, "built": {{}}, "tags": {{}}}}
args = sys.argv[1:]
state["calls"].append(args[0])


def fail(msg):
    json.dump(state, open(state_path, "w"))
    sys.exit(msg)


if args[0] == "login":
    user, reg = args[args.index("--username") + 1], args[-1]
    if "--password-stdin" not in args or not sys.stdin.read():
        fail("no password on stdin")
    state["logins"][reg] = user
elif args[0] == "build":
    if args[args.index("--platform") + 1] != "linux/amd64" or "--provenance=false" not in args:
        fail(f"not a single-platform amd64 build: {{args}}")
    if not os.path.isfile(os.path.join(args[-1], "Dockerfile")):
        fail("no Dockerfile in the build context")
    state["built"][args[args.index("-t") + 1]] = os.path.abspath(args[-1])
elif args[0] == "tag":
    if args[1] not in state["built"]:
        fail(f"no such image: {{args[1]}}")
    state["tags"][args[2]] = state["built"][args[1]]
elif args[0] == "push":
    if args[1].split("/")[0] not in state["logins"]:
        fail("no basic auth credentials")
    req = urllib.request.Request(os.environ["CB_EMULATOR_URL"] + "{registry}", method="POST",
                                 data=json.dumps({{"uri": args[1], "context": state["tags"][args[1]]}}).encode())
    urllib.request.urlopen(req).read()
elif args[0] != "info":
    fail(f"unexpected docker {{args}}")
json.dump(state, open(state_path, "w"))
'''


def test_deploy_image_builds_and_pushes_when_docker_answers(deployed, moto_endpoint, s3_proxy,
                                                           lambda_emulator, tmp_path, monkeypatch):
    """With a docker daemon, `deploy --image` runs the printed steps itself: the ECR
    repository (boto3), docker login with ECR's token, build, tag, push; then deploys the
    image, and a numpy job runs in it. Unchanged packages build nothing the second time."""
    from lambda_emulator import REGISTRY_PATH

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(_DOCKER.format(python=sys.executable, registry=REGISTRY_PATH))
    (bin_dir / "docker").chmod(0o755)
    state = tmp_path / "docker.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CB_DOCKER_STATE", str(state))
    monkeypatch.setenv("CB_EMULATOR_URL", lambda_emulator.url)
    data = config_dict(moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-docker",
                       memory=1769, timeout=60)
    data["endpoints"]["ecr"] = moto_endpoint
    path = write_config(tmp_path / "docker.yaml", data)
    actions = deploy(config.load(path), modules=["numpy"], image=True)
    pushed = [w for v, w, _ in actions if v == "pushed"]
    reg = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert len(pushed) == 1 and pushed[0].startswith(f"image {reg}/cb-docker:"), actions
    uri = pushed[0].removeprefix("image ")
    calls = json.loads(state.read_text())
    assert calls["calls"] == ["info", "login", "build", "tag", "push"], calls
    assert calls["logins"] == {reg: "AWS"}
    ecr = boto3.client("ecr", endpoint_url=moto_endpoint, region_name=REGION)
    assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]] == ["cb-docker"]
    fn = lam_client(moto_endpoint).get_function(FunctionName="cb-docker")
    assert fn["Configuration"]["PackageType"] == "Image" and fn["Code"]["ImageUri"] == uri
    with Executor(backend="lambda", config_path=path) as ex:
        version, where, _ = ex.map(numpy_check, [8]).result(timeout=120)[0]
    assert where.startswith(os.path.join(lambda_emulator.root, "images"))
    assert ex.backend.deployment()["modules"]["numpy"]["version"] == version
    # The same packages again: the deployed image has their tag, docker is not asked.
    assert {v for v, _, _ in deploy(config.load(path), modules=["numpy"], image=True)} == {"unchanged"}
    assert json.loads(state.read_text())["calls"] == calls["calls"]


def test_packages_over_the_unzipped_limit_take_the_image_path(deployed, moto_endpoint, s3_proxy,
                                                              lambda_emulator, tmp_path, monkeypatch):
    from cloudbutton_executor import packaging

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(packaging, "UNZIPPED_LIMIT_BYTES", 20 * 2 ** 20)  # numpy's layer is bigger
    path = write_config(tmp_path / "big.yaml", config_dict(
        moto_endpoint, s3_proxy.url, lambda_emulator.url, function_name="cb-big"))
    out = io.StringIO()
    with pytest.raises(ImageRequired) as info:
        deploy(config.load(path), modules=["numpy"], out=out)
    text = out.getvalue()
    assert "too big" in text and "over Lambda's 21 MB" in text and "biggest: numpy" in text
    assert info.value.commands[-1].endswith(":" + json.load(open(os.path.join(info.value.build_dir, "image.json")))["tag"])
    assert not lam_client(moto_endpoint).list_layer_versions(LayerName="cb-big-deps")["LayerVersions"]


def test_emulator_refuses_payloads_over_the_async_limit(lambda_emulator, deployed):
    import http.client
    import urllib.parse

    from lambda_emulator import ASYNC_PAYLOAD_LIMIT

    assert ASYNC_PAYLOAD_LIMIT == 1024 * 1024
    u = urllib.parse.urlsplit(lambda_emulator.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/2015-03-31/functions/cb-worker/invocations", body=b"x" * (ASYNC_PAYLOAD_LIMIT + 1),
                 headers={"X-Amz-Invocation-Type": "Event"})
    resp = conn.getresponse()
    assert resp.status == 413 and resp.getheader("x-amzn-ErrorType") == "RequestEntityTooLargeException"
    resp.read()
    assert protocol.INLINE_EVENT_BYTES * 4 // 3 < ASYNC_PAYLOAD_LIMIT  # what the host inlines fits


def test_emulator_discards_events_older_than_their_maximum_age(lambda_emulator, deployed):
    from lambda_emulator import Invocation

    spec = lambda_emulator._spec("cb-worker")
    before = lambda_emulator.counts["expired"]
    stale = Invocation(spec, json.dumps({"never": "run"}).encode(), "stale-1",
                       enqueued_at=time.time() - spec.max_event_age - 1)
    lambda_emulator.enqueue(stale)
    deadline = time.time() + 10
    while lambda_emulator.counts["expired"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert lambda_emulator.counts["expired"] == before + 1
    assert not any(r[0] == "stale-1" for r in lambda_emulator.results)
