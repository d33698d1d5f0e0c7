"""Source lines for code that travels by value, so remote tracebacks can show them.

cloudpickle ships the code objects of notebook functions, lambdas and local
modules, but not their source, and since 3.1.3 it renames their file to
``<dynamic-code>``. Workers have none of the user's files (on Lambda, never),
so the host sends, with each by-value code object, its real file name and the
source lines it spans (from the host's ``linecache``, which also holds
notebook cells). Unpickling on the worker puts the name back and registers
the lines in the worker's ``linecache``, where ``traceback`` looks. The
reduction wraps whatever cloudpickle's own code reducer produces, so it does
not depend on the cloudpickle version on either side.
"""
from __future__ import annotations

import linecache
import sys
import types

_shipped: dict[str, list[str]] = {}  # file name -> the lines registered for it


def code_source(code: types.CodeType) -> tuple[int, tuple[str, ...]]:
    """The first line number of ``code`` and the host's source lines it spans (may be empty)."""
    first = code.co_firstlineno
    last = max((line for _, _, line in code.co_lines() if line is not None), default=first)
    lines = linecache.getlines(code.co_filename)
    return first, tuple(lines[first - 1:last])


def shipped_name(filename: str) -> str:
    """The file name by-value code travels under. For a notebook cell it says which cell,
    as IPython's own tracebacks do, and stays unique (warm workers serve many kernels):
    ``Cell In[3] (/tmp/ipykernel_42/1234.py)``. Host side only; IPython is never imported
    here, only asked if the host runs it."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    name_of = getattr(getattr(shell, "compile", None), "format_code_name", None)
    try:
        label = name_of(filename) if name_of is not None else None
    except Exception:
        label = None
    return f"{label[0]} {label[1]} ({filename})" if label else filename


def restore_code(code: types.CodeType, filename: str, first: int,
                 lines: tuple[str, ...]) -> types.CodeType:
    """Worker side: ``code`` under its real file name, its lines registered for tracebacks."""
    register_lines(filename, first, lines)
    return code.replace(co_filename=filename)  # nested code objects are restored one by one


def register_lines(filename: str, first: int, lines: tuple[str, ...] | list[str]) -> None:
    if not lines:
        return
    # Merge with spans registered before (other functions of the same file); an entry
    # read from a file on this machine is replaced: the host's source is the truth.
    have = _shipped.setdefault(filename, [])
    stop = first - 1 + len(lines)
    if len(have) < stop:
        have.extend(["\n"] * (stop - len(have)))
    have[first - 1:stop] = lines
    # mtime None: linecache.checkcache() leaves the entry alone (there is no file to stat).
    linecache.cache[filename] = (sum(map(len, have)), None, have, filename)
