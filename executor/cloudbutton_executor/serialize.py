"""cloudpickle with three rules: user code by value, installed code by reference,
and never a credential.

- Functions and classes defined in ``__main__`` travel by value (cloudpickle's
  default); so do the user's own local modules (files that are not installed),
  so workers need not have them.
- Installed modules (stdlib, site-packages) travel by reference.
- AWS credential objects are refused wherever they hide in the object graph.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import site
import sys
import sysconfig
import threading
import types

import cloudpickle

# Our own packages are installed wherever the user put them (often an editable
# checkout); they must never be shipped by value.
_OWN_PACKAGES = {"cloudbutton_executor", "cloudbutton_magic", "cloudbutton_jupyter"}

# Types that carry AWS credentials, by module and qualified name so that boto3
# need not be imported to recognise them.
_SECRET_TYPES = {
    ("boto3.session", "Session"),
    ("botocore.session", "Session"),
    ("botocore.credentials", "Credentials"),
    ("botocore.credentials", "RefreshableCredentials"),
    ("botocore.credentials", "ReadOnlyCredentials"),
    ("botocore.credentials", "DeferredRefreshableCredentials"),
}


class SerializationError(TypeError):
    """An object cannot be shipped to the workers; the message names it."""


class SecretError(SerializationError):
    """An object would carry credentials to the workers."""


def _is_secret_type(obj) -> bool:
    for klass in type(obj).__mro__:
        key = (klass.__module__, klass.__qualname__)
        if key in _SECRET_TYPES:
            return True
        # Every boto3/botocore client class derives from botocore.client.BaseClient.
        if key == ("botocore.client", "BaseClient"):
            return True
    return False


class _GuardedPickler(cloudpickle.Pickler):
    def reducer_override(self, obj):
        if _is_secret_type(obj):
            raise SecretError(
                f"refusing to ship a {_type_name(obj)}: it carries AWS credentials. "
                "Create clients inside the task; workers use their own execution role.")
        return super().reducer_override(obj)


def _type_name(obj) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# Local-module detection ----------------------------------------------------
def _installed_roots() -> tuple[str, ...]:
    roots = set()
    for getter in (site.getsitepackages, lambda: [site.getusersitepackages()]):
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
def _local_modules_by_value():
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


def _dump(obj) -> bytes:
    buf = io.BytesIO()
    _GuardedPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def dumps(obj, label: str = "object") -> bytes:
    """Pickle ``obj`` for the workers, naming the culprit if that fails."""
    with _local_modules_by_value():
        try:
            return _dump(obj)
        except SecretError as err:
            raise SecretError(f"{label}: {err}") from None
        except Exception as err:
            culprit = find_culprit(obj, label)
            raise SerializationError(f"cannot ship {culprit}: {err}") from err


def dumps_each(objs) -> list[bytes]:
    """Pickle many objects in one by-value registration (raises SerializationError)."""
    with _local_modules_by_value():
        try:
            return [_dump(o) for o in objs]
        except Exception as err:
            raise SerializationError(str(err)) from err


def _picklable(obj) -> bool:
    try:
        _GuardedPickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return True
    except Exception:
        return False


def find_culprit(obj, label: str, _depth: int = 0) -> str:
    """Describe the innermost unpicklable part of ``obj`` ("global 'conn' (sqlite3.Connection)")."""
    if _depth > 6:
        return f"{label} ({_type_name(obj)})"
    children: list[tuple[str, object]] = []
    if isinstance(obj, types.FunctionType):
        code_names = set()
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


def loads(data: bytes):
    return cloudpickle.loads(data)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
