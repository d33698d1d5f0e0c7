"""First code a Lambda emulator sandbox runs, under ``python -I -S`` (standard library only).

It shapes the process like a Lambda execution environment, then hands over to AWS's
runtime interface client (awslambdaric), which fetches events from the emulator's
Runtime API and calls the handler:

- a private mount namespace (when the OS allows it): a size-capped tmpfs as the
  scratch dir, and the function's code, its layers and the runtime read-only;
  otherwise the emulator's fallback (file modes, RLIMIT_FSIZE) applies;
- the memory limit as RLIMIT_AS, the vCPUs Lambda gives that memory as the CPU affinity;
- ``sys.path``: the task root, the layers (``/opt/python`` layout), the runtime dir
  (awslambdaric and the runtime's bundled boto3/botocore), then the standard library.
  Nothing of the host's environment.

Its settings come as JSON in the CB_EMULATOR_SANDBOX environment variable.
"""
import ctypes
import json
import os
import resource
import runpy
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18


def _isolate(cfg) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def mount(src, target, fstype, flags, data=None):
        enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
        if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target}: {os.strerror(err)}")

    if libc.unshare(CLONE_NEWNS) != 0:
        return "none"
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", cfg["tmp"], "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_mb']}m,mode=1777")
    for d in cfg["readonly"]:
        mount(d, d, None, MS_BIND | MS_REC)
        mount(None, d, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return "namespace"


def main():
    cfg = json.loads(os.environ.pop("CB_EMULATOR_SANDBOX"))
    mode = _isolate(cfg) if cfg.get("isolate") else "none"
    if mode == "none":
        # Without a private tmpfs, at least no single file may outgrow the scratch space.
        size = cfg["tmp_mb"] << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    os.environ["CB_EMULATOR_ISOLATION"] = mode
    if cfg.get("cpus"):
        os.sched_setaffinity(0, cfg["cpus"])
    limit = cfg["memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    layer_site = [os.path.join(d, "python", "lib", f"python{sys.version_info.major}.{sys.version_info.minor}",
                               "site-packages") for d in cfg["opt"]] + [os.path.join(d, "python") for d in cfg["opt"]]
    sys.path[:0] = [cfg["task_root"], *layer_site, cfg["runtime_dir"]]
    os.chdir(cfg["task_root"])
    sys.argv = ["awslambdaric", cfg["handler"]]
    runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)


main()
