"""cloudpickle with three rules: user code by value, installed code by reference,
and never a credential.

- Functions and classes defined in ``__main__`` travel by value (cloudpickle's
  default); so do the user's own local modules (files that are not installed),
  so workers need not have them.
- Installed modules (stdlib, site-packages) travel by reference.
- AWS credentials are refused wherever they hide: credential objects as the
  pickler reaches them, key-shaped strings in the finished pickle (``screening``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import pickle
import site
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeAlias, cast

import cloudpickle

from . import screening, sharedbuffers
from .sources import code_source, restore_code, shipped_name

# Our own packages are installed wherever the user put them (often an editable
# checkout); they must never be shipped by value.
_OWN_PACKAGES = {"cloudbutton_executor", "cloudbutton_magic", "cloudbutton_jupyter"}

class SerializationError(TypeError):
    """An object cannot be shipped to the workers; the message names it."""


class SecretError(SerializationError):
    """An object would carry credentials to the workers."""


class _CodeAsIs:
    """A code object to reduce with cloudpickle's own code reducer."""

    __slots__ = ("code",)

    def __init__(self, code: types.CodeType):
        self.code = code


class _GuardedPickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no types
    """cloudpickle that refuses credential objects wherever they hide, and the globals of
    by-value functions whose names say they hold secrets (see ``screening``)."""

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.CodeType:
            # By-value code (only that reaches a code object's reducer) travels with its
            # file name and source lines: see sources.py.
            first, lines = code_source(obj)
            return restore_code, (_CodeAsIs(obj), shipped_name(obj.co_filename), first, lines)
        if t is _CodeAsIs:
            return self.dispatch_table[types.CodeType](obj.code)
        why = screening.check_object(obj)
        if why:
            raise SecretError(why)
        out = super().reducer_override(obj)
        if out is not NotImplemented and isinstance(obj, types.FunctionType):
            # Travels by value, with the module-level variables its code reads.
            why = screening.check_names(screening.code_globals(obj), f"read by {obj.__qualname__}()")
            if why:
                raise SecretError(why)
        return out


def _type_name(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# Local-module detection ----------------------------------------------------
def _installed_roots() -> tuple[str, ...]:
    roots: set[str] = set()
    getters: list[Callable[[], list[str]]] = [site.getsitepackages,
                                               lambda: [site.getusersitepackages()]]
    for getter in getters:
        try:
            roots.update(getter())
        except Exception:  # pragma: no cover - some embedded pythons lack site paths
            pass
    paths = sysconfig.get_paths()
    roots.update(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)
    roots.update({sys.prefix, sys.base_prefix, sys.exec_prefix})
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


_ROOTS: tuple[str, ...] | None = None
_local_cache: dict[str, bool] = {}
_register_lock = threading.Lock()


def is_local_module(module: types.ModuleType) -> bool:
    """True for the user's own modules: files on disk that are not installed."""
    global _ROOTS
    name = getattr(module, "__name__", "")
    if name in _local_cache:
        return _local_cache[name]
    top = name.partition(".")[0]
    path = getattr(module, "__file__", None)
    result = False
    if path and top not in _OWN_PACKAGES and name != "__main__" and not top.startswith("_"):
        if _ROOTS is None:
            _ROOTS = _installed_roots()
        real = os.path.realpath(path)
        result = not real.startswith(_ROOTS)
    _local_cache[name] = result
    return result


def local_module_names() -> list[str]:
    """Top-level names of the loaded local modules."""
    tops = set()
    for name, mod in list(sys.modules.items()):
        if mod is not None and is_local_module(mod):
            tops.add(name.partition(".")[0])
    return sorted(t for t in tops if t in sys.modules)


@contextlib.contextmanager
def _local_modules_by_value() -> Iterator[None]:
    """Register the loaded local modules with cloudpickle for the duration."""
    with _register_lock:
        registered = []
        for name in local_module_names():
            try:
                cloudpickle.register_pickle_by_value(sys.modules[name])
                registered.append(name)
            except (ValueError, KeyError):
                pass
        try:
            yield
        finally:
            for name in registered:
                try:
                    cloudpickle.unregister_pickle_by_value(sys.modules[name])
                except (ValueError, KeyError):
                    pass


class _OutOfBandPickler(_GuardedPickler):
    """Large buffers go to the job's shared memory (local backend): see sharedbuffers."""

    def persistent_id(self, obj: Any) -> Any:
        return sharedbuffers.persistent_id(obj)


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    pickler = _GuardedPickler if sharedbuffers.active() is None else _OutOfBandPickler
    pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _out_of_band(big: bool) -> bool:
    """Big bytes are sent out of band (a job of the local backend is being pickled)."""
    return big and sharedbuffers.active() is not None


# Plain data: these exact types pickle the same with the standard pickler as with
# cloudpickle, can hold no code and no credentials, and the C pickler is
# several times cheaper than building a cloudpickle Pickler per item.
_SCALARS = frozenset({int, float, complex, bool, str, bytes, type(None)})
_CONTAINERS = frozenset({tuple, list, dict})


def _is_plain(obj: Any, depth: int = 0) -> bool:
    t = type(obj)
    if t in _SCALARS:
        return True
    if t not in _CONTAINERS or depth > 4 or len(obj) > 64:
        return False
    if t is dict:
        return all(type(k) in _SCALARS and _is_plain(v, depth + 1) for k, v in obj.items())
    return all(_is_plain(x, depth + 1) for x in obj)


_BIG = 1 << 16  # the pickler hands bytes this big to write() as they are


def _has_big_bytes(obj: Any, depth: int = 0, limit: int = _BIG) -> bool:
    t = type(obj)
    if t is bytes:
        return len(obj) >= limit
    if t is dict:
        return depth < 5 and any(_has_big_bytes(v, depth + 1, limit) for v in obj.values())
    if t is tuple or t is list:
        return depth < 5 and any(_has_big_bytes(x, depth + 1, limit) for x in obj)
    return False


class Pieces:
    """One pickle as the pieces the pickler wrote: large ``bytes`` inputs are
    referenced, not copied (a copy of 100 MB of inputs costs more than the
    rest of the submission). ``len()`` is the pickle's size in bytes."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, parts: list[bytes | memoryview]):
        self.parts = parts
        self.nbytes = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


Payload: TypeAlias = "bytes | Pieces"  # one pickled input, whole or in pieces


def _dump_plain_pieces(obj: Any, proto: int) -> Payload:
    parts: list[bytes | memoryview] = []
    sink = types.SimpleNamespace(write=parts.append)
    pickle.Pickler(sink, proto).dump(obj)
    return cast(bytes, parts[0]) if len(parts) == 1 else Pieces(parts)


def flatten(payloads: Iterable[Payload]) -> Iterator[bytes | memoryview]:
    """The bytes of ``payloads`` (bytes or Pieces), in order, without joining them."""
    for p in payloads:
        if isinstance(p, Pieces):
            yield from p.parts
        else:
            yield p


def join(payloads: Iterable[Payload]) -> bytes:
    if isinstance(payloads, list):
        try:
            return b"".join(payloads)  # all bytes (the usual case): one C loop
        except TypeError:  # Pieces among them
            pass
    return b"".join(flatten(payloads))


def joined_runs(payloads: Sequence[Payload], run: int = 4096,
                small: int = 4 << 20) -> Iterator[bytes | memoryview]:
    """The bytes of ``payloads`` in order, as ``flatten`` gives them, but with runs of
    ``run`` payloads that are all ``bytes`` and at most ``small`` bytes in all joined into
    one piece (a map's many small pickles written at C speed; big inputs never copied)."""
    for i in range(0, len(payloads), run):
        chunk = payloads[i:i + run]
        if set(map(type, chunk)) == {bytes} and sum(map(len, chunk)) <= small:
            yield b"".join(cast("Sequence[bytes]", chunk))  # all bytes, checked
        else:
            yield from flatten(chunk)


def dumps(obj: Any, label: str = "object", budget: screening.Budget | None = None) -> bytes:
    """Pickle ``obj`` for the workers, naming the culprit if that fails; refuse it if it
    carries credentials (see ``screening``)."""
    if _is_plain(obj) and not (sharedbuffers.active() is not None
                               and _has_big_bytes(obj, limit=sharedbuffers.THRESHOLD)):
        blob = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    else:
        with _local_modules_by_value():
            try:
                blob = _dump(obj)
            except SecretError as err:
                raise SecretError(screening.refusal(label, str(err))) from None
            except Exception as err:
                culprit = find_culprit(obj, label)
                raise SerializationError(f"cannot ship {culprit}: {err}") from err
    screening.scan([blob], obj, label, budget)
    return blob


_NO_TEXT = frozenset({int, float, complex, bool, type(None)})  # scalars that hold no string


def dumps_scalar_calls(items: list[Any], budget: screening.Budget | None = None
                       ) -> list[Payload] | None:
    """The payloads ``((x,), {})`` of a map over small scalars, or None if ``items`` holds
    anything else. The common case of big maps, without building the calls first."""
    kinds = set(map(type, items))  # one pass in C (a million items: tens of ms)
    if not kinds <= _SCALARS:
        return None
    if bytes in kinds and any(type(x) is bytes and len(x) >= _BIG for x in items):
        return None  # big bytes go through dumps_each, which does not copy them
    no_kwargs: dict[str, Any] = {}
    # ((x,), {}) for every x, pickled, without a Python-level loop.
    out: list[Payload] = list(map(pickle.dumps, zip(zip(items), itertools.repeat(no_kwargs)),
                                  itertools.repeat(pickle.HIGHEST_PROTOCOL)))
    if not kinds <= _NO_TEXT:
        screening.scan(flatten(out), items, "iterdata", budget)
    return out


def dumps_array_rows(arr: Any) -> list[Payload] | None:
    """The payloads ``((row,), {})`` of a map over a numpy array's rows (``arr[i]``), or None
    for anything else. One row is pickled; every payload is that pickle with the row's
    bytes swapped for its own row's: a slice of the array's buffer, neither pickled
    again nor copied. Numbers only (text would need screening), C order, 2-D and up (the
    elements of a 1-D array are numpy scalars: the usual path)."""
    np = sys.modules.get("numpy")
    if (np is None or type(arr) is not np.ndarray or arr.ndim < 2 or not len(arr)
            or not arr.flags.c_contiguous or arr.dtype.kind not in "biufc"
            or arr.dtype.fields is not None or not arr[0].nbytes):
        return None
    template = pickle.dumps(((arr[0],), {}), 5)
    row0 = arr[0].tobytes()
    at = template.find(row0)
    if at < 0 or template.find(row0, at + 1) >= 0:
        return None  # the row's bytes are not one clear run in its pickle
    prefix, suffix = template[:at], template[at + len(row0):]
    n = len(row0)
    raw = memoryview(arr).cast("B")
    return [Pieces([prefix, raw[i * n:(i + 1) * n], suffix]) for i in range(len(arr))]


def dumps_each(objs: Iterable[Any], budget: screening.Budget | None = None) -> list[Payload]:
    """Pickle many objects in one by-value registration (raises SerializationError), and
    screen them for credentials."""
    objs = objs if isinstance(objs, (list, tuple)) else list(objs)
    out: list[Any] = []
    dumps, proto = pickle.dumps, pickle.HIGHEST_PROTOCOL
    rest: list[int] = []
    scalars = _SCALARS
    for i, o in enumerate(objs):
        # The usual shape first: map() over scalars gives ((x,), {}).
        if (type(o) is tuple and len(o) == 2 and type(o[0]) is tuple and len(o[0]) == 1
                and type(o[1]) is dict and not o[1] and type(o[0][0]) in scalars):
            x = o[0][0]
            if type(x) is bytes and len(x) >= _BIG:
                out.append(_dump(o) if _out_of_band(len(x) >= sharedbuffers.THRESHOLD)
                           else _dump_plain_pieces(o, proto))
            else:
                out.append(dumps(o, proto))
        elif _is_plain(o):
            if _has_big_bytes(o):
                out.append(_dump(o) if _out_of_band(_has_big_bytes(o, limit=sharedbuffers.THRESHOLD))
                           else _dump_plain_pieces(o, proto))
            else:
                out.append(dumps(o, proto))
        else:
            out.append(None)
            rest.append(i)
    if rest:
        with _local_modules_by_value():
            try:
                for i in rest:
                    out[i] = _dump(objs[i])
            except SecretError:
                raise
            except Exception as err:
                raise SerializationError(str(err)) from err
    # Big bytes inputs are written as they are (their own parts): data, not searched.
    screening.scan(flatten(out), objs, "iterdata", budget, raw_from=_BIG)
    return out


def _picklable(obj: Any) -> bool:
    try:
        _GuardedPickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return True
    except Exception:
        return False


def find_culprit(obj: Any, label: str, _depth: int = 0) -> str:
    """Describe the innermost unpicklable part of ``obj`` ("global 'conn' (sqlite3.Connection)")."""
    if _depth > 6:
        return f"{label} ({_type_name(obj)})"
    children: list[tuple[str, object]] = []
    if isinstance(obj, types.FunctionType):
        code_names: set[str] = set()
        stack = [obj.__code__]
        while stack:  # names read by nested functions, lambdas and comprehensions too
            code = stack.pop()
            code_names.update(code.co_names)
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in sorted(code_names):
            if name in obj.__globals__:
                children.append((f"global {name!r} used by {obj.__qualname__}()",
                                 obj.__globals__[name]))
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            try:
                children.append((f"closure variable {name!r} of {obj.__qualname__}()",
                                 cell.cell_contents))
            except ValueError:
                pass
        if obj.__defaults__:
            children.extend((f"default argument of {obj.__qualname__}()", d) for d in obj.__defaults__)
    elif isinstance(obj, dict):
        children = [(f"{label}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        children = [(f"{label}[{i}]", v) for i, v in enumerate(obj)]
    elif isinstance(obj, types.ModuleType):
        children = []
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = [(f"{label}.{k}", v) for k, v in vars(obj).items()]
    for child_label, child in children:
        if isinstance(child, types.ModuleType):
            continue
        if not _picklable(child):
            return find_culprit(child, child_label, _depth + 1)
    return f"{label} (type {_type_name(obj)})"


def loads(data: bytes) -> Any:
    return cloudpickle.loads(data)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
