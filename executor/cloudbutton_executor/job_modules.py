"""Which installed modules a job needs on the worker.

A job's function is pickled once; the pickler here notes, while it pickles,
every module the pickle refers to by reference (classes and functions of
installed packages, module objects such as ``np``), and every ``import`` in
the code that travels by value (notebook functions, a cell's own code).
Unpickling or running the job imports exactly those, so they are what the
worker must have. The standard library, our own packages, cloudpickle and the
user's local modules (shipped by value) are left out.
"""
from __future__ import annotations

import ast
import dis
import io
import pickle
import sys
import types
from collections.abc import Iterable
from typing import Any

from . import integrity, largevalues, screening, serialize

_OWN = {"cloudbutton_executor", "cloudbutton_magic", "cloudbutton_jupyter", "cloudpickle", "__main__",
        "builtins", "__mp_main__"}


def _code_imports(code: types.CodeType, out: set[str]) -> None:
    stack = [code]
    while stack:
        c = stack.pop()
        level = 0
        for ins in dis.get_instructions(c):
            if ins.opname == "LOAD_CONST" and isinstance(ins.argval, int):
                level = ins.argval
            elif ins.opname == "IMPORT_NAME":
                if level == 0 and ins.argval:
                    out.add(ins.argval.partition(".")[0])
                level = 0
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))


def source_imports(code: str) -> set[str]:
    """Top-level names of the absolute imports in ``code`` (a cell)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            out.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.partition(".")[0])
    return out


class _RecordingPickler(serialize._GuardedPickler):
    def __init__(self, *args: Any, large: dict[str, bytes] | None = None,
                 budget: screening.Budget | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.modules: set[str] = set()
        self.large = large    # sha256 -> pickle of each large value stored apart
        self.budget = budget

    def reducer_override(self, obj: Any) -> Any:
        if self.large is not None and largevalues.is_large(obj):
            # A large global: the blob names it by its pickle's sha256; it is stored once
            # on its own and each warm worker loads it once (largevalues).
            # Plain pickle (bytes and arrays hold no code; serialize.dumps would re-enter
            # the by-value registration this pickler holds), screened like the blob.
            blob = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
            screening.scan([blob], obj, f"a large {type(obj).__name__}", self.budget)
            digest = integrity.sha256(blob)
            self.large[digest] = blob
            return largevalues.load_digest, (digest,)
        if isinstance(obj, types.ModuleType):
            self.modules.add(obj.__name__.partition(".")[0])
            return super().reducer_override(obj)
        code = getattr(obj, "code", None)
        if type(obj).__module__ == "cloudbutton_executor.cell" and isinstance(code, str):
            self.modules |= source_imports(code)  # a cell task imports what its cell imports
        out = super().reducer_override(obj)
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            if out is NotImplemented:  # pickled by reference: its module is imported on load
                mod = getattr(obj, "__module__", None)
                if mod:
                    self.modules.add(mod.partition(".")[0])
            elif isinstance(obj, types.FunctionType):  # by value: its imports run on the worker
                _code_imports(obj.__code__, self.modules)
        return out


def dumps_with_modules(obj: Any, label: str = "object",
                       budget: screening.Budget | None = None,
                       large: dict[str, bytes] | None = None) -> tuple[bytes, set[str]]:
    """``serialize.dumps(obj)`` and the installed modules the pickle needs on the worker.
    With ``large`` (a dict), large values inside are left out and put there (sha256 ->
    pickle) for the caller to store (largevalues)."""
    with serialize._local_modules_by_value():
        buf = io.BytesIO()
        pickler = _RecordingPickler(buf, protocol=pickle.HIGHEST_PROTOCOL, large=large, budget=budget)
        try:
            pickler.dump(obj)
        except serialize.SecretError as err:
            raise serialize.SecretError(screening.refusal(label, str(err))) from None
        except Exception as err:
            raise serialize.SerializationError(
                f"cannot ship {serialize.find_culprit(obj, label)}: {err}") from err
    blob = buf.getvalue()
    screening.scan([blob], obj, label, budget)
    return blob, installed_only(pickler.modules)


def installed_only(modules: Iterable[str]) -> set[str]:
    """Leave out the standard library, our own packages and the user's local modules."""
    out: set[str] = set()
    for name in modules:
        if not name or name in _OWN or name in sys.stdlib_module_names or name in sys.builtin_module_names:
            continue
        mod = sys.modules.get(name)
        if mod is not None and serialize.is_local_module(mod):
            continue  # travels by value
        out.add(name)
    return out
