"""What a running task can tell the host about itself."""
from __future__ import annotations

_flops: list[float] = [0]


def report_flops(n: float) -> None:
    """Add ``n`` floating-point operations to the current task's count.

    The count lands in the task's stats; the GFLOPS plot sums it.
    """
    if n < 0:
        raise ValueError(f"report_flops: a FLOP count cannot be negative (got {n!r})")
    _flops[0] += n

