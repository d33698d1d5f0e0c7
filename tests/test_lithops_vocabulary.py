"""Code written for PyWren or Lithops runs unchanged, and options we do not know are refused."""
import pytest
from IPython.core.error import UsageError

from cloudbutton_executor import Executor


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def test_get_result_and_wait_without_futures(ex):
    ex.call_async(inc, 1)
    assert ex.get_result() == 2  # a lone call_async: its value (Lithops)
    ex.call_async(inc, 1)
    ex.call_async(inc, 2)
    assert ex.get_result() == [2, 3]
    ex.map(inc, [1, 2, 3])
    done, not_done = ex.wait()
    assert len(done) == 3 and not not_done
    ex.map(inc, [10])
    assert ex.get_result() == [2, 3, 4, 11]  # everything not yet collected, in submission order
    with pytest.raises(ValueError, match="none: call map"):
        ex.get_result()
    with pytest.raises(ValueError, match="none: call map"):
        ex.wait()
    job = ex.map(inc, [5])
    assert ex.get_result(job) == [6]  # collected explicitly: not collected again
    fut = ex.map_reduce(inc, [1, 2], sum)
    assert ex.get_result() == 5 and fut.done()  # the reduce's value, not the map's results


def test_map_reduce_takes_lithops_options(ex, storage):
    fut = ex.map_reduce(add, [1, 2, 3], sum, extra_args=(10,), chunksize=2, timeout=30,
                        map_runtime_memory=256, reduce_runtime_memory=512)
    assert fut.result(timeout=60) == 36
    manifests = {m["job_id"]: m for m in ex.jobs()}
    assert manifests[fut.map_job.job_id]["memory_mb"] == 256
    assert manifests[fut.map_job.job_id]["chunksize"] == 2
    reduce = [m for m in manifests.values() if m["job_id"] != fut.map_job.job_id]
    assert [m["memory_mb"] for m in reduce] == [512]
    with pytest.raises(TypeError, match=r"spawn_reducer \(the reduce starts once every map task"):
        ex.map_reduce(inc, [1], sum, spawn_reducer=20)
    with pytest.raises(TypeError, match="does not take colour"):
        ex.map_reduce(inc, [1], sum, colour="blue")


def test_lithops_executor_and_map_options(storage):
    with Executor("localhost", runtime_memory=256, max_workers=2, storage=storage) as ex:
        assert (ex.backend_name, ex.memory_mb, ex.concurrency) == ("local", 256, 2)
        job = ex.map(inc, [1, 2], runtime_memory=512, chunksize=None)
        assert job.result(timeout=30) == [2, 3] and job.memory_mb == 512 and job.chunksize == 1
        with pytest.raises(TypeError, match="extra_env"):
            ex.map(inc, [1], extra_env={"A": "1"})
    with pytest.raises(TypeError, match="runtime_memory, not both"):
        Executor(memory_mb=128, runtime_memory=256)


@pytest.mark.parametrize("options, culprit", [
    ({"runtime_mem": 256}, "runtime_mem"),
    ({"colour": "blue", "log_level": "INFO"}, "colour, log_level"),
    ({"storage": "aws_s3"}, "storage must be a Storage object"),
])
def test_unknown_executor_options_are_named(options, culprit):
    with pytest.raises(TypeError, match=culprit):
        Executor(**options)


@pytest.mark.parametrize("line", ["map xs --runtime-memory 256", "map xs --memroy 256",
                                  "map xs as x --extra-env A=1"])
def test_unknown_magic_options_are_named(line):
    from IPython.core.interactiveshell import InteractiveShell

    from cloudbutton_magic.magics import CloudMagics

    shell = InteractiveShell.instance()
    shell.register_magics(CloudMagics(shell))
    shell.user_ns["xs"] = [1]
    option = line.split("--")[1].split()[0]
    with pytest.raises(UsageError, match=f"unrecognized arguments: --{option}"):
        shell.run_cell_magic("cloud", line, "item")

