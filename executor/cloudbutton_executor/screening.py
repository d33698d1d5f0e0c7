"""Secret screening: what leaves the host must not carry AWS credentials.

It looks at what is actually shipped, at any depth, in three ways:

- objects: the pickler shows every object it reaches (``check_object``, called
  from ``serialize``'s pickler): boto3 sessions and clients, botocore
  credentials and ``os.environ`` are refused wherever they are;
- bytes: the finished pickle (the function blob with everything it carries,
  and the inputs) is searched for key-shaped strings (``scan``): an AWS access
  key id anywhere, and a str or bytes value that is exactly a 40-character
  secret access key. In a pickle every str and bytes is written out whole, so
  a dict three levels deep, an object's attribute, list index 250, a
  function's globals and a helper's globals are all covered;
- names: a module-level variable read by code that travels by value (a cell's
  captured names, the globals of notebook functions and of the helpers they
  call) whose name says it holds a secret (``check_names``).

The bytes search costs about a pass at memory speed; each job may search
``BUDGET_BYTES`` (the function first, then the inputs), and says so when it
stops short. The raw contents of large ``bytes`` inputs (at least
``serialize._BIG`` bytes, sent as they are) are data and are not searched.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import types
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("cloudbutton.screening")

BUDGET_BYTES = 64 * 2 ** 20  # pickled bytes searched per job

# Types that carry AWS credentials, by module and qualified name so that boto3 need
# not be imported to recognise them; every client class derives from BaseClient.
_SECRET_TYPES = {
    ("boto3.session", "Session"): "a boto3 Session",
    ("botocore.session", "Session"): "a botocore Session",
    ("botocore.credentials", "Credentials"): "botocore Credentials",
    ("botocore.credentials", "RefreshableCredentials"): "botocore RefreshableCredentials",
    ("botocore.credentials", "ReadOnlyCredentials"): "botocore ReadOnlyCredentials",
    ("botocore.credentials", "DeferredRefreshableCredentials"): "botocore credentials",
    ("botocore.client", "BaseClient"): "a boto3 client",
    ("os", "_Environ"): "os.environ",
}

# An access key id: a 4-letter kind, then 16 base32 characters.
# (No look-behind in the bytes pattern: a literal first letter keeps the search fast.)
_KEY_ID = re.compile(rb"A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA)[A-Z0-9]{16}(?![A-Z0-9])")
_KEY_CHARS = frozenset(bytes([c]) for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_KEY_ID_TEXT = re.compile(r"(?<![A-Z0-9])A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA)[A-Z0-9]{16}(?![A-Z0-9])")
# A secret access key: 40 base64 characters. In a pickle (protocol 4+) a str or bytes
# of 40 bytes is its opcode (SHORT_BINUNICODE 0x8c, SHORT_BINBYTES 'C'), its length
# (0x28) and its bytes; a bytearray (protocol 5) has an 8-byte length.
_SECRET_40 = re.compile(rb"\x28([A-Za-z0-9/+]{40})")
_BYTEARRAY_40 = b"\x96\x28\x00\x00\x00\x00\x00\x00\x00"
_SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|private_key", re.I)


class ScreeningWarning(UserWarning):
    """Secret screening stopped short of the end of what was shipped (its budget ran out)."""


def credential_type(obj: object) -> str | None:
    """What credential-bearing object ``obj`` is, or None."""
    for klass in type(obj).__mro__:
        what = _SECRET_TYPES.get((klass.__module__, klass.__qualname__))
        if what:
            return what
    return None


def looks_like_secret_key(value: bytes | str) -> bool:
    """A 40-character AWS secret access key: base64 letters with upper and lower case and a
    digit or / or +; not a hex digest (git or SHA-1 ids are 40 hex digits too)."""
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    return (len(value) == 40 and re.fullmatch(rb"[A-Za-z0-9/+]{40}", value) is not None
            and re.search(rb"[A-Z]", value) is not None and re.search(rb"[a-z]", value) is not None
            and re.search(rb"[0-9/+]", value) is not None
            and re.fullmatch(rb"[0-9a-fA-F]{40}", value) is None)


def describe_str(value: str | bytes) -> str | None:
    """Why a str or bytes value looks like an AWS credential, or None."""
    text = value if isinstance(value, str) else bytes(value).decode("latin-1")
    if _KEY_ID_TEXT.search(text):
        return "it contains an AWS access key id"
    if len(text) == 40 and looks_like_secret_key(text):
        return "it looks like an AWS secret access key"
    return None


def _masked(secret: bytes) -> str:
    return secret[:4].decode("ascii", "replace") + "…"


def scan_bytes(data: bytes | memoryview) -> tuple[str, bytes] | None:
    """The first key-shaped value in a pickle: (what it is, its bytes), or None."""
    buf = data if isinstance(data, bytes) else bytes(data)
    for m in _KEY_ID.finditer(buf):
        if m.start() == 0 or buf[m.start() - 1:m.start()] not in _KEY_CHARS:
            return "an AWS access key id", m.group(0)
    for m in _SECRET_40.finditer(buf):
        start = m.start()
        if start >= 1 and buf[start - 1] in (0x8C, 0x43) and looks_like_secret_key(m.group(1)):
            return "an AWS secret access key", m.group(1)
    i = buf.find(_BYTEARRAY_40)
    while i >= 0:
        if looks_like_secret_key(buf[i + 9:i + 49]):
            return "an AWS secret access key", buf[i + 9:i + 49]
        i = buf.find(_BYTEARRAY_40, i + 1)
    return None


@dataclasses.dataclass
class Budget:
    """How many more pickled bytes a job may search; it warns once when it runs out."""

    label: str = "this job"
    left: int = dataclasses.field(default_factory=lambda: BUDGET_BYTES)
    size: int = dataclasses.field(default_factory=lambda: BUDGET_BYTES)
    skipped: int = 0

    def take(self, n: int) -> int:
        got = max(0, min(n, self.left))
        self.left -= got
        self.skipped += n - got
        return got

    def report(self) -> None:
        """Say (once) how much was not searched."""
        if self.skipped:
            msg = (f"secret screening of {self.label} stopped after {self.size / 2 ** 20:.1f} MB "
                   f"(its budget): {self.skipped / 2 ** 20:.1f} MB more of what it ships were not "
                   "searched for key-shaped strings (credential objects were still refused)")
            self.skipped = 0
            log.warning(msg)
            warnings.warn(msg, ScreeningWarning, stacklevel=_outside_this_package())


def _outside_this_package() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the caller) of the first frame outside
    this package, so a warning names the user's line whichever API path led to it."""
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame: types.FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    return level


def scan(parts: Iterable[bytes | memoryview], obj: Any, label: str, budget: Budget | None = None,
         raw_from: int = 0) -> None:
    """Raise ``SecretError`` if the pickle ``parts`` of ``obj`` hold a key-shaped value.

    ``raw_from``: parts at least this long are raw buffers of large bytes objects, not
    searched (0: search every part)."""
    from .serialize import SecretError

    budget = budget if budget is not None else Budget(label=label)
    for part in parts:
        if raw_from and len(part) >= raw_from:
            continue
        n = budget.take(len(part))
        if not n:
            continue
        found = scan_bytes(part[:n] if n < len(part) else part)
        if found is not None:
            what, value = found
            where = locate(obj, value, label)
            raise SecretError(
                f"refusing to ship {where}: it holds {what} ({_masked(value)}). Credentials never "
                "leave this machine: create clients inside the task (workers use their own "
                "execution role)")


def check_object(obj: object) -> str | None:
    """For the pickler: why this object must not be shipped (it carries credentials)."""
    what = credential_type(obj)
    if what is None:
        return None
    return (f"it holds {what}, which carries AWS credentials. Create clients inside the "
            "task; workers use their own execution role")


def refusal(label: str, why: str) -> str:
    """The message refusing ``label`` for ``why`` (which may name its culprit already)."""
    return why if why.startswith("refusing to ship") else f"refusing to ship {label}: {why}"


def check_names(names: Mapping[str, Any], whose: str = "") -> str | None:
    """Why a module-level variable among ``names`` (read by code that travels; ``whose``
    says which, if not the cell) must not be shipped: its name says it holds a secret and
    it holds a long string."""
    for name, value in names.items():
        if isinstance(value, (str, bytes)) and len(value) >= 12 and _SECRET_NAME.search(name):
            by = f" ({whose})" if whose else ""
            return (f"refusing to ship variable {name!r}{by}: its name says it holds a "
                    "secret. Read it inside the task from the worker's own configuration instead.")
    return None


def code_globals(fn: types.FunctionType) -> dict[str, Any]:
    """The module-level names a function's code (and its nested code) reads."""
    names: set[str] = set()
    stack = [fn.__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    g = fn.__globals__
    return {n: g[n] for n in sorted(names) if n in g}


# Where a value found in a pickle sits in the object graph, for the message -----------
_LOCATE_NODES = 200_000


def locate(root: Any, needle: bytes, label: str) -> str:
    """A readable path (``variable 'cfg'['a'].token``) to the str or bytes holding
    ``needle`` inside ``root``, or ``label`` if it cannot be found within a bounded walk."""
    text = needle.decode("latin-1")
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(root, label)]
    nodes = 0
    while stack and nodes < _LOCATE_NODES:
        obj, path = stack.pop()
        nodes += 1
        if isinstance(obj, str):
            if text in obj:
                return path
            continue
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if needle in bytes(obj):
                return path
            continue
        if id(obj) in seen or isinstance(obj, (int, float, complex, bool, type(None), type,
                                               types.ModuleType)):
            continue
        seen.add(id(obj))
        stack.extend(reversed(list(_children(obj, path))))
    return label


def _children(obj: Any, path: str) -> Iterable[tuple[Any, str]]:
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            yield k, f"{path} (a key)"
            yield v, f"{path}[{k!r}]"
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield v, f"{path}[{i}]"
    elif isinstance(obj, (set, frozenset)):
        for v in list(obj):
            yield v, f"{path} (an element)"
    elif isinstance(obj, types.FunctionType):
        name = obj.__qualname__
        for k, v in code_globals(obj).items():
            yield v, f"global {k!r} of {name}()"
        for k, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False):
            try:
                yield cell.cell_contents, f"closure variable {k!r} of {name}()"
            except ValueError:
                pass
        for v in obj.__defaults__ or ():
            yield v, f"a default argument of {name}()"
        for k, v in (obj.__kwdefaults__ or {}).items():
            yield v, f"default {k!r} of {name}()"
        yield obj.__code__.co_consts, f"a constant of {name}()"
    elif isinstance(obj, types.MethodType):
        yield obj.__self__, f"{path}.__self__"
        yield obj.__func__, path
    elif type(obj).__module__ == "cloudbutton_executor.cell" and isinstance(
            getattr(obj, "namespace", None), dict):
        for k, v in obj.namespace.items():
            yield v, f"variable {k!r}"
    else:
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for k, v in attrs.items():
                yield v, f"{path}.{k}"
        for k in getattr(type(obj), "__slots__", ()) or ():
            if isinstance(k, str) and hasattr(obj, k):
                yield getattr(obj, k), f"{path}.{k}"


def describe_value(value: Any) -> str | None:
    """Why a variable's value, as such, must not travel (what the pickle holds deeper
    is ``scan``'s): a credential object, a key-shaped string, a copy of the environment."""
    if isinstance(value, (str, bytes)):
        return describe_str(value)
    if isinstance(value, os._Environ):
        return "it is os.environ"
    what = credential_type(value)
    if what:
        return f"it is {what}, which carries AWS credentials"
    if isinstance(value, Mapping):
        keys = {k for k in value if isinstance(k, str)}
        if {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & keys:
            return "it holds AWS credentials (AWS_SECRET_ACCESS_KEY)"
        if len(keys) >= 8 and "PATH" in keys and len(keys & set(os.environ)) >= 0.8 * len(keys):
            return "it is a copy of os.environ"
    return None
