"""What importing the executor costs: a local worker imports only the modules it runs,
and ``import cloudbutton_executor`` loads no AWS SDK and starts nothing (cold start)."""
import json
import subprocess
import sys

HOST_ONLY = ["cloudbutton_executor.executor", "cloudbutton_executor.dispatch",
             "cloudbutton_executor.cache", "cloudbutton_executor.backends", "boto3", "botocore"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-s", "-c", code + "\nimport sys, json, threading\n"
                          "print(json.dumps([sorted(sys.modules), threading.active_count()]))"],
                         capture_output=True, text=True, check=True).stdout
    modules, threads = json.loads(out.splitlines()[-1])
    assert threads == 1, "an import started a thread"
    return set(modules)


def test_a_worker_imports_only_what_it_runs():
    loaded = _modules_after("from cloudbutton_executor.local_runtime import main\n"
                            "from cloudbutton_executor.worker import handler")
    assert not [m for m in HOST_ONLY if m in loaded or any(k.startswith(m + ".") for k in loaded)]


def test_the_package_loads_its_names_on_first_use():
    loaded = _modules_after("import cloudbutton_executor")
    assert "boto3" not in loaded and "cloudbutton_executor.executor" not in loaded
    loaded = _modules_after("import cloudbutton_executor as cb\n"
                            "assert cb.Executor.__module__ == 'cloudbutton_executor.executor'\n"
                            "from cloudbutton_executor import wait, NotFound, protocol\n"
                            "assert protocol.__name__ == 'cloudbutton_executor.protocol'\n"
                            "from cloudbutton_executor import *\n"
                            "assert CloudPoolExecutor and JobCancelled and report_flops\n"
                            "try:\n    cb.no_such_name\nexcept AttributeError:\n    pass\n"
                            "else:\n    raise SystemExit('no AttributeError')")
    assert "cloudbutton_executor.executor" in loaded and "boto3" not in loaded
