"""Run a notebook cell's code as a task: the worker side of ``%%cloud``.

Plain Python (no IPython): the host has already turned IPython syntax into
Python and decided which names the cell needs. A ``CellTask`` is pickled by
reference to this module plus its code and captured namespace, so workers
need only ``cloudbutton_executor``.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import linecache
import types
from typing import Any

# Warm workers compile each cell once: its statements, and its last expression if any.
_compiled: dict[tuple[str, str | None], tuple[types.CodeType, types.CodeType | None]] = {}


def _compile(code: str, label: str | None = None) -> tuple[types.CodeType, types.CodeType | None]:
    hit = _compiled.get((code, label))
    if hit is None:
        # A named pseudo-file in linecache lets remote tracebacks show the cell's lines;
        # the label (e.g. "In[5]") says which cell, the hash keeps the name unique.
        digest = hashlib.sha1(code.encode()).hexdigest()[:8]
        filename = f"<cloud-cell {label} {digest}>" if label else f"<cloud-cell-{digest}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename, "exec")
        last = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr) and not code.rstrip().endswith(";"):
            tree.body.pop()
            last = compile(ast.Expression(tail.value), filename, "eval")
        hit = _compiled[(code, label)] = (compile(tree, filename, "exec"), last)
    return hit


class _NotShipped:
    """Stands for an assigned value that could not travel back."""

    def __init__(self, type_name: str, reason: str):
        self.type_name = type_name
        self.reason = reason

    def __repr__(self) -> str:
        return f"<not returned: {self.type_name} ({self.reason})>"


class CellTask:
    """Callable that runs ``code`` in a fresh copy of ``namespace``.

    ``mode="last"``: the value of the cell's last expression (or None), with
    the task's element bound to ``name``. ``mode="assigned"``: a dict of the
    names in ``assigned`` that the cell bound (or the last expression's value
    when it binds none).
    """

    def __init__(self, code: str, namespace: dict[str, Any], name: str | None = None,
                 mode: str = "last", assigned: tuple[str, ...] = (), label: str | None = None):
        if mode not in ("last", "assigned"):
            raise ValueError(f"mode must be 'last' or 'assigned', got {mode!r}")
        _compile(code, label)  # a syntax error surfaces here, on the host, before anything is sent
        self.label = label  # which cell, for tracebacks ("In[5]")
        self.code = code
        self.namespace = namespace
        self.name = name
        self.mode = mode
        self.assigned = tuple(assigned)

    def __call__(self, *element: Any) -> Any:
        from . import largevalues

        ns = dict(largevalues.resolve(self.namespace))  # large values: loaded once per process
        ns["__builtins__"] = builtins
        ns.setdefault("__name__", "__main__")
        if self.name is not None:
            if len(element) != 1:
                raise TypeError(f"a cell task takes one element, got {len(element)}")
            ns[self.name] = element[0]
        body, last = _compile(self.code, getattr(self, "label", None))  # None: pickled by an older host
        exec(body, ns)
        value = eval(last, ns) if last is not None else None
        if self.mode == "last":
            return value
        out = {k: ns[k] for k in self.assigned if k in ns}
        if not out:
            return {"__value__": value}
        import cloudpickle

        for k, v in out.items():
            try:
                cloudpickle.dumps(v)
            except Exception as exc:
                out[k] = _NotShipped(type(v).__qualname__, str(exc)[:200])
        return out
