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

from . import integrity, largevalues, protocol, screening, serialize

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


# Values whose pickle is small whatever they hold, or that travel by reference or by value
# as code (a function's own large globals are found when that function is pickled).
_NEVER_LARGE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType,
                types.MethodType, types.CodeType, int, float, complex, bool, type(None))


class _StoredApart:
    """Stands in a by-value function's pickled state for a large value stored apart."""

    __slots__ = ("digest",)

    def __init__(self, digest: str):
        self.digest = digest


class _RecordingPickler(serialize._GuardedPickler):
    def __init__(self, *args: Any, large: dict[str, tuple[str, bytes]] | None = None,
                 budget: screening.Budget | None = None, apart: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.modules: set[str] = set()
        self.large = large    # sha256 -> (what it is, its pickle) of each value stored apart
        self.budget = budget
        # Whether the globals, defaults and closure values of by-value functions are
        # measured (pickled on their own) and stored apart when large, whatever their type.
        self.apart = apart and large is not None
        self._measured: dict[int, tuple[Any, Any]] = {}  # id -> (value, itself or stand-in)

    def _apart(self, value: Any, label: str) -> Any:
        """``value``, or a ``_StoredApart`` for it if its pickle is over the threshold (then
        that pickle, screened, is in ``self.large``). Each value is measured once."""
        limit = protocol.LARGE_VALUE_BYTES
        if (isinstance(value, _NEVER_LARGE)
                or (type(value) in (str, bytes, bytearray) and len(value) * 4 <= limit)):
            return value
        seen = self._measured.get(id(value))
        if seen is not None:
            return seen[1]
        if largevalues.is_large(value):  # bytes, arrays: plain pickle (they hold no code)
            blob = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        else:
            buf = io.BytesIO()
            # Whole: a value stored apart never names another (`cloudbutton clean` finds
            # the values a job needs in its function blob only).
            inner = _RecordingPickler(buf, protocol=pickle.HIGHEST_PROTOCOL, budget=self.budget)
            inner.dump(value)
            self.modules |= inner.modules
            blob = buf.getvalue()
        out = value
        if len(blob) > limit:
            screening.scan([blob], value, label, self.budget)
            digest = integrity.sha256(blob)
            self.large[digest] = (label, blob)  # type: ignore[index]  # apart implies large
            out = _StoredApart(digest)
        self._measured[id(value)] = (value, out)
        return out

    def _function_state_apart(self, fn: types.FunctionType, out: Any) -> Any:
        """cloudpickle's reduction of a by-value ``fn`` with its large globals and default
        values replaced by stand-ins (cloudpickle puts them in the state's second half)."""
        try:
            state, slots = out[2]
        except (TypeError, ValueError, IndexError):
            return out
        if not isinstance(slots, dict):
            return out
        slots = dict(slots)
        where = fn.__qualname__
        if isinstance(slots.get("__globals__"), dict):
            slots["__globals__"] = {k: self._apart(v, f"global {k} read by {where}()")
                                    for k, v in slots["__globals__"].items()}
        if isinstance(slots.get("__defaults__"), tuple):
            slots["__defaults__"] = tuple(self._apart(v, f"a default of {where}()")
                                          for v in slots["__defaults__"])
        if isinstance(slots.get("__kwdefaults__"), dict):
            slots["__kwdefaults__"] = {k: self._apart(v, f"default {k} of {where}()")
                                       for k, v in slots["__kwdefaults__"].items()}
        return (*out[:2], (state, slots), *out[3:])

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _StoredApart:
            return largevalues.load_digest, (obj.digest,)
        if self.apart and type(obj) is types.CellType:  # a closure's value
            try:
                contents = obj.cell_contents
            except ValueError:  # an empty cell
                contents = None
            stand_in = self._apart(contents, "a value a closure captured")
            if type(stand_in) is _StoredApart:
                return largevalues.cell_of, (stand_in.digest,)
        if self.large is not None and largevalues.is_large(obj):
            # A large global: the blob names it by its pickle's sha256; it is stored once
            # on its own and each warm worker loads it once (largevalues).
            # Plain pickle (bytes and arrays hold no code; serialize.dumps would re-enter
            # the by-value registration this pickler holds), screened like the blob.
            blob = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
            what = f"a large {type(obj).__name__}"
            screening.scan([blob], obj, what, self.budget)
            digest = integrity.sha256(blob)
            self.large[digest] = (what, blob)
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
                if self.apart:
                    out = self._function_state_apart(obj, out)
        return out


def dumps_with_modules(obj: Any, label: str = "object",
                       budget: screening.Budget | None = None,
                       large: dict[str, tuple[str, bytes]] | None = None) -> tuple[bytes, set[str]]:
    """``serialize.dumps(obj)`` and the installed modules the pickle needs on the worker.
    With ``large`` (a dict), large values inside are left out and put there (sha256 ->
    (what it is, its pickle)) for the caller to store (largevalues): numpy arrays, and the
    globals, defaults and closure values of by-value functions whose pickle is over
    ``protocol.LARGE_VALUE_BYTES``, whatever their type."""
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
