"""Backends invoke the worker handler; they never interpret results.

A backend takes events and calls back a listener:
``on_start(event)`` when a worker picks the event up (if the backend can
know), ``on_done(event, response)`` when the handler returned, and
``on_failure(event, error)`` with an ``InfrastructureError`` when the
invocation died without one.
"""
from __future__ import annotations


def get_backend(name: str, **options):
    if name == "local":
        from .local import get_local_backend

        return get_local_backend(**options)
    if name == "lambda":
        from .aws_lambda import LambdaBackend

        return LambdaBackend(**options)
    raise ValueError(f"unknown backend {name!r}: choose 'local' or 'lambda'")
