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
from cloudbutton_executor import (Executor, MissingPackageError, TaskTimeoutError, WorkerSetupError,
                                  config, protocol)
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
    # Cold starts report the container's INIT time, for the cost model.
    colds = [f.stats for f in job if f.stats.get("cold_start")]
    assert colds and all(job.outcomes.task_record(job.item_task(i))[0].get("init_s", -1) >= 0
                         for i in range(len(job)) if job[i].stats.get("cold_start"))


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


def test_task_code_never_sees_the_host_environment(lambda_ex, lambda_emulator):
    def inspect(_):
        import importlib
        import os
        import sys
        import tempfile

        seen = {"path": list(sys.path), "prefix": sys.prefix,
                "isolation": os.environ.get("CB_EMULATOR_ISOLATION"), "tmp": tempfile.gettempdir()}
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


def test_memory_other_than_deployed_is_refused(lambda_ex, deployed):
    with pytest.raises(ValueError, match=r"memory 2048 MB.*deployed with 512 MB.*cloudbutton deploy --memory 2048"):
        lambda_ex.map(abs, [1], memory_mb=2048)
    with pytest.raises(ValueError, match=r"timeout 60 s.*at 30 s.*cloudbutton deploy --timeout 60"):
        lambda_ex.map(abs, [1], timeout=60)
    job = lambda_ex.map(abs, [-1])  # the deployed memory, named in the job
    assert job.result(timeout=60) == [1] and job.memory_mb == 512


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


def test_account_concurrency_caps_inflight(deployed, lambda_config, lambda_emulator, capsys):
    with Executor(backend="lambda", config_path=lambda_config, workers=50) as ex:
        assert ex.backend.account_concurrency() == lambda_emulator.concurrency
        assert ex.map(abs, range(-20, 0)).result(timeout=60) == list(range(20, 0, -1))
        assert ex.backend.limits.max_inflight <= 2 * lambda_emulator.concurrency
    assert f"concurrency Lambda allows this function ({lambda_emulator.concurrency})" in capsys.readouterr().err


def test_async_config_bounds_event_age(deployed, moto_endpoint):
    cfg = lam_client(moto_endpoint).get_function_event_invoke_config(FunctionName="cb-worker")
    assert cfg["MaximumRetryAttempts"] == 0
    assert 60 <= cfg["MaximumEventAgeInSeconds"] <= 2 * 30 + 60  # from the 30 s timeout, not 6 h


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


def test_too_big_or_image_prints_the_commands(deployed, lambda_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker here (nor anywhere in these tests)
    with pytest.raises(ImageRequired) as info:
        deploy(config.load(lambda_config), modules=["numpy"], image=True)
    err = info.value
    text = str(err)
    assert "docker build --platform linux/amd64" in text and "docker push" in text
    assert "cloudbutton deploy --image-uri" in text
    docker = open(os.path.join(err.build_dir, "Dockerfile")).read()
    assert f"FROM --platform=linux/amd64 public.ecr.aws/lambda/python:{sys.version_info.major}.{sys.version_info.minor}" in docker
    reqs = open(os.path.join(err.build_dir, "requirements.txt")).read()
    assert reqs.startswith("numpy==")
    assert zipfile.ZipFile(os.path.join(err.build_dir, "function.zip")).getinfo("cloudbutton_executor/worker.py")


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
