"""The local runtime's own rules: why a worker process ended, in words; the remaining time
Lambda's context reports; which scratch dirs are fresh enough to hand on."""
import os
import signal
import time

import pytest

from cloudbutton_executor.local_runtime import CANCELLED_EXIT_CODE, Context, _is_empty_dir, describe_exit


@pytest.mark.parametrize("code, peak, limit, text", [
    (CANCELLED_EXIT_CODE, 0, None, "worker process stopped: its job was cancelled"),
    (3, 0, None, "worker process exited with code 3 before finishing the task"),
    (0, 0, None, "worker process exited with code 0 before finishing the task"),  # os._exit(0)
    (-signal.SIGSEGV, 0, None, "worker process was killed by SIGSEGV"),
    (-200, 0, None, "worker process was killed by signal 200"),
    # Memory is named only for a SIGKILL after the process came within 90 % of its limit.
    (-signal.SIGKILL, 900.0, 1000, "worker process was killed by SIGKILL, most likely out of "
                                   "memory (it used 900 MB of its 1000 MB)"),
    (-signal.SIGKILL, 899.0, 1000, "worker process was killed by SIGKILL"),
    (-signal.SIGKILL, 2000.0, None, "worker process was killed by SIGKILL"),
    (-signal.SIGKILL, 0.0, 1000, "worker process was killed by SIGKILL"),
    (-signal.SIGTERM, 999.0, 1000, "worker process was killed by SIGTERM"),
])
def test_why_a_worker_process_ended(code, peak, limit, text):
    assert describe_exit(code, peak, limit) == text


def test_the_context_counts_down_to_zero_from_the_timeout():
    ctx = Context(2.0, 512)
    left = ctx.get_remaining_time_in_millis()
    assert 1000 < left <= 2000 and isinstance(left, int)
    assert ctx.memory_limit_in_mb == 512
    time.sleep(0.3)
    assert ctx.get_remaining_time_in_millis() <= left - 250
    assert Context(-5.0, None).get_remaining_time_in_millis() == 0  # never negative


def test_only_an_empty_real_directory_is_handed_to_the_next_invocation(tmp_path):
    empty, used = tmp_path / "empty", tmp_path / "used"
    empty.mkdir()
    used.mkdir()
    (used / "left-behind").write_text("x")
    os.symlink(empty, tmp_path / "link")
    assert _is_empty_dir(str(empty))
    assert not _is_empty_dir(str(used))
    assert not _is_empty_dir(str(tmp_path / "link"))  # a task may have swapped it for a link
    assert not _is_empty_dir(str(tmp_path / "gone"))
