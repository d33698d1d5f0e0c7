"""Large inputs on the local backend travel out of band: numpy arrays, bytes and bytearrays
of 1 MB and more are mapped by the workers from the host's anonymous memory file instead
of being copied through the job's data.pickle; the file is freed when the job ends, and
nothing is left behind (in /dev/shm or anywhere) when the host process is SIGKILLed."""
import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cloudbutton_executor import protocol, sharedbuffers

pytestmark = pytest.mark.skipif(not sharedbuffers.available(), reason="needs memfd_create")


def memfd_holders(name_part: str) -> dict[int, str]:
    """Processes with an fd or a mapping of a memory file whose name contains ``name_part``."""
    found = {}
    for proc in glob.glob("/proc/[0-9]*"):
        pid = int(proc.rsplit("/", 1)[1])
        try:
            for fd in os.listdir(f"{proc}/fd"):
                try:
                    if name_part in os.readlink(f"{proc}/fd/{fd}"):
                        found[pid] = "fd"
                except OSError:
                    pass
            with open(f"{proc}/maps") as f:
                if name_part in f.read():
                    found[pid] = "map"
        except OSError:  # ended meanwhile, or not ours to read
            pass
    return found


def describe(x):
    import mmap

    if isinstance(x, np.ndarray):
        base = x.base
        while isinstance(base, np.ndarray):  # a reshaped view of the 1-D array unpickled
            base = base.base
        mapped = isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
        total = float(x.ravel()[:5].sum())
        x[0] = -1.0  # writable, as an unpickled copy is; the host's array does not change
        return "ndarray", mapped, x.flags.writeable, total, x.shape
    return type(x).__name__, len(x), bytes(x[:3])


def test_large_inputs_are_mapped_not_copied_and_freed_at_the_end(ex, storage):
    big = [np.arange(300_000, dtype=np.float64).reshape(1000, 300) + k for k in range(2)]
    items = big + [b"a" * (2 << 20), bytearray(b"b" * (1 << 20)), np.arange(5.0), b"small"]
    job = ex.map(describe, items)
    assert job.result() == [
        ("ndarray", True, True, 10.0, (1000, 300)), ("ndarray", True, True, 15.0, (1000, 300)),
        ("bytes", 2 << 20, b"aaa"), ("bytearray", 1 << 20, b"bbb"),
        ("ndarray", False, True, 10.0, (5,)), ("bytes", 5, b"sma")]
    assert big[0][0, 0] == 0.0 and big[1][0, 0] == 1.0  # the host's arrays as they were
    # Only the references went through storage: data.pickle is small.
    data = storage.get(protocol.data_key(ex.prefix, job.job_id))
    assert len(data) < 20_000
    shared = job._shared
    assert shared is not None and shared.count == 4 and shared.size == 2 * 2_400_000 + (3 << 20)
    # The job ended with no failure: the memory file is closed, no process holds it.
    assert shared.closed
    assert memfd_holders(shared.name) == {}


def fail_on_odd(a):
    if int(a[0]) % 2:
        raise ValueError(f"odd {int(a[0])}")
    return int(a.sum())


def test_a_failed_job_keeps_its_buffers_for_a_rerun(ex):
    arrays = [np.full(200_000, k, dtype=np.int64) for k in range(3)]
    job = ex.map(fail_on_odd, arrays)
    job.wait()
    assert [job.item_state(i) for i in range(3)] == ["done", "failed", "done"]
    shared = job._shared
    assert not shared.closed and memfd_holders(shared.name).get(os.getpid()) == "fd"
    arrays[1][0] = 2  # the re-run reads the inputs as they were shipped, not as they are now
    again = job.rerun_failed()
    again.wait()
    assert job.item_state(1) == "failed" and "odd 1" in str(job[1].exception())
    assert not shared.closed


def test_shared_buffers_are_freed_when_released():
    shared = sharedbuffers.HostBuffers()
    ref = shared.ref("bytes", memoryview(b"z" * 10))
    assert ref[4] == shared.name and memfd_holders(shared.name) == {os.getpid(): "fd"}
    del shared
    import gc

    gc.collect()
    assert memfd_holders(ref[4]) == {}


def test_a_reference_to_a_host_that_is_gone_is_a_clear_error(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(sharedbuffers.OutOfBandError, match=f"host process {dead.pid}"):
        sharedbuffers._load(("cloudbutton-oob", "buffer", dead.pid, 3, "cloudbutton-0", 0, 8))
    # An fd of a live process that is not the named memory file (a reused pid or fd
    # number) is refused, not read.
    (tmp_path / "other").write_bytes(b"not the input")
    fd = os.open(tmp_path / "other", os.O_RDONLY)
    try:
        with pytest.raises(sharedbuffers.OutOfBandError):
            sharedbuffers._load(("cloudbutton-oob", "bytes", os.getpid(), fd, "cloudbutton-0", 0, 3))
    finally:
        os.close(fd)


HOST = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from cloudbutton_executor import Executor
    from cloudbutton_executor.storage import LocalStorage

    def hold(a):
        with open(MARKER, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(120)

    ex = Executor(workers=2, storage=LocalStorage(sys.argv[1]), timeout=300)
    job = ex.map(hold, [np.ones(1 << 18) for _ in range(4)])
    print(job._shared.name, flush=True)
    job.wait()
""")


def test_a_killed_host_leaves_no_shared_memory(tmp_path):
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    marker = tmp_path / "running"
    code = HOST.replace("MARKER", repr(str(marker)))  # workers see no host environment
    host = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "storage")],
                            stdout=subprocess.PIPE, text=True)
    try:
        name = host.stdout.readline().strip()
        assert name.startswith("cloudbutton-")
        deadline = time.time() + 60
        while time.time() < deadline and len(marker.read_text().split() if marker.exists() else []) < 2:
            time.sleep(0.05)
        workers = [int(p) for p in marker.read_text().split()]
        holders = memfd_holders(name)
        assert holders.get(host.pid) == "fd" and all(holders.get(w) == "map" for w in workers)
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
    deadline = time.time() + 20
    while time.time() < deadline and memfd_holders(name):
        time.sleep(0.1)
    assert memfd_holders(name) == {}  # the memory is gone with its last holder
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not [n for n in after - before if "cloudbutton" in n]
