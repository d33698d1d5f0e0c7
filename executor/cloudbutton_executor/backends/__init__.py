"""Backends invoke the worker handler; they never interpret results.

Every backend implements ``base.Backend`` (limits as data, explicit events for
the dispatcher). ``BACKENDS`` names the built-in ones; ``Executor`` takes a name
or any ``Backend`` instance.
"""
from __future__ import annotations

from typing import Any

from .base import Backend, BackendLimits, Event, InvocationListener, JobFit

BACKENDS = ("local", "lambda")

__all__ = ["BACKENDS", "Backend", "BackendLimits", "Event", "InvocationListener", "JobFit", "create"]


def create(name: str, **options: Any) -> Backend:
    """The built-in backend called ``name``, made with its ``options``."""
    if name == "local":
        from .local import get_local_backend

        return get_local_backend(**options)
    if name == "lambda":
        from .aws_lambda import LambdaBackend

        return LambdaBackend(**options)
    raise ValueError(f"unknown backend {name!r}: choose {' or '.join(map(repr, BACKENDS))}")
