"""Which parts of the notebook's namespace a cell needs, and whether they may travel.

The cell's source is analysed (AST + symtable) for the names it reads before
binding them; only those globals are shipped, never the whole ``user_ns``
(which holds unpicklable things and is large). cloudpickle then follows what
the shipped functions reference.
"""
from __future__ import annotations

import ast
import builtins
import io
import socket
import symtable
import types
from dataclasses import dataclass, field

from cloudbutton_executor import protocol, screening, serialize

WARN_TOTAL_BYTES = 50 * 1024 * 1024



class CaptureError(ValueError):
    """A cell cannot be shipped; the message names the variable and suggests a fix."""


@dataclass
class CaptureReport:
    rows: list = field(default_factory=list)  # {"name", "type", "size"[, "stored": True]}
    warnings: list = field(default_factory=list)
    # The pickles of values over protocol.LARGE_VALUE_BYTES, by name: stored once on their
    # own (largevalues), not inside the function blob.
    large: dict = field(default_factory=dict, repr=False)

    @property
    def total(self) -> int:
        """Bytes that travel inside the function blob (stored values do not)."""
        return sum(r["size"] for r in self.rows if not r.get("stored"))

    def to_text(self) -> str:
        lines = [f"{'name':<20} {'type':<28} {'size':>10}"]
        for r in self.rows:
            note = "  stored once, loaded by each worker on first use" if r.get("stored") else ""
            lines.append(f"{r['name']:<20} {r['type'][:28]:<28} {_human(r['size']):>10}{note}")
        lines.append(f"{'total':<20} {'':<28} {_human(self.total):>10}  in the function blob")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _type_name(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def describe_syntax_error(err: SyntaxError, first_line: int = 1) -> str:
    """``syntax error in the cell, line N: msg`` with the line and a caret under the
    culprit; ``first_line`` is the number the code's first line has in the user's cell."""
    lineno = (err.lineno or 1) + first_line - 1
    out = f"syntax error in the cell, line {lineno}: {err.msg}"
    text = (err.text or "").rstrip("\n")
    if text.strip():
        indent = len(text) - len(text.lstrip())
        start = max(err.offset or 1, indent + 1)
        end = start + 1
        if err.end_lineno in (None, err.lineno) and err.end_offset and err.end_offset > start:
            end = err.end_offset
        out += f"\n    {text.strip()}\n    {' ' * (start - 1 - indent)}{'^' * (end - start)}"
    return out


# Free-name analysis ------------------------------------------------------------
_CONDITIONAL = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith,
                ast.Match) if hasattr(ast, "Match") else (ast.If, ast.For, ast.While, ast.Try, ast.With)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
           ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _top_level_loads_and_stores(stmt):
    """Names this statement reads and binds at module level, nested scopes excluded."""
    loads: list[str] = []
    stores: list[str] = []

    def visit(node):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else stores).append(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in node.decorator_list:
                visit(d)
            if not isinstance(node, ast.ClassDef):
                for d in node.args.defaults + [d for d in node.args.kw_defaults if d]:
                    visit(d)
            else:
                for b in node.bases:
                    visit(b)
            stores.append(node.name)
            return
        elif isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            # The first iterable of a comprehension is evaluated in the enclosing scope.
            if not isinstance(node, ast.Lambda):
                visit(node.generators[0].iter)
            return
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name != "*":
                    stores.append((alias.asname or alias.name).partition(".")[0])
            return
        elif isinstance(node, ast.ExceptHandler) and node.name:
            stores.append(node.name)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            loads.append(node.target.id)
        if isinstance(node, ast.Assign):  # right side is evaluated before the targets
            visit(node.value)
            for t in node.targets:
                visit(t)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return loads, stores


def _nested_globals(code: str) -> set:
    """Module-level names read from inside functions, lambdas, classes, comprehensions."""
    out = set()

    def walk(table):
        for child in table.get_children():
            for sym in child.get_symbols():
                if sym.is_referenced() and sym.is_global():
                    out.add(sym.get_name())
            walk(child)

    walk(symtable.symtable(code, "<cell>", "exec"))
    return out


def analyse(code: str) -> tuple[list, list]:
    """(names the cell reads from outside, names it binds at module level).

    A name counts as read from outside unless an unconditional top-level
    statement binds it before its first read.
    """
    tree = ast.parse(code, "<cell>", "exec")
    bound: set = set()
    reads: list = []
    assigned: list = []
    for stmt in tree.body:
        loads, stores = _top_level_loads_and_stores(stmt)
        for name in loads:
            if name not in bound and name not in reads:
                reads.append(name)
        for name in stores:
            if name not in assigned:
                assigned.append(name)
        if not isinstance(stmt, _CONDITIONAL):
            bound.update(stores)
    for name in sorted(_nested_globals(code)):
        if name not in bound and name not in reads:
            reads.append(name)
    return reads, assigned


# Capture -----------------------------------------------------------------------
def capture(code: str, user_ns: dict, exclude=(), measure: bool = True) -> tuple[dict, CaptureReport]:
    """The globals ``code`` needs from ``user_ns``, checked, with a size report.

    Raises CaptureError naming the culprit for an undefined, unpicklable or
    secret-bearing name.
    """
    reads, assigned = analyse(code)
    nested_assigned = set(assigned)
    captured, report = {}, CaptureReport()
    undefined = []
    for name in reads:
        if name in exclude:
            continue
        if name in user_ns:
            captured[name] = user_ns[name]
        elif not hasattr(builtins, name) and name not in nested_assigned:
            undefined.append(name)
    if undefined:
        raise CaptureError(
            f"the cell reads {', '.join(repr(n) for n in undefined)} but "
            f"{'it is' if len(undefined) == 1 else 'they are'} not defined in the notebook")
    check_and_measure(captured, report, measure)
    return captured, report


def check_and_measure(captured: dict, report: CaptureReport, measure: bool = True,
                      large_bytes: int = protocol.LARGE_VALUE_BYTES) -> None:
    # The executor screens what is pickled, at any depth, for every job; here each
    # variable is checked as it is first, so the message names it and says why.
    why = screening.check_names(captured)
    if why:
        raise CaptureError(why)
    for name, value in captured.items():
        why = screening.describe_value(value)
        if why:
            raise CaptureError(
                f"refusing to ship variable {name!r}: {why}. Credentials never leave this machine; "
                "create clients inside the cell (workers use their own role).")
        size, stored = 0, False
        if measure and not isinstance(value, types.ModuleType):
            try:
                blob = serialize.dumps(value, f"variable {name!r}")
                size = len(blob)
                if size > large_bytes:
                    report.large[name], stored = blob, True
            except serialize.SecretError as err:  # names the variable and the path inside it
                raise CaptureError(str(err)) from None
            except serialize.SerializationError as err:
                # The serializer's message already names the culprit and says why.
                raise CaptureError(
                    f"{str(err).rstrip('.')}. Create it inside the cell instead, or pass what "
                    "it holds (e.g. a path or plain data).") from None
        report.rows.append({"name": name, "type": _type_name(value), "size": size,
                            **({"stored": True} if stored else {})})
        why = live_resource(value)
        if why:
            report.warnings.append(f"{name!r} {why}")
    if report.total > WARN_TOTAL_BYTES:
        report.warnings.append(
            f"the captured variables total {_human(report.total)}: every task downloads them; "
            "consider passing large data through the iterable or reading it inside the task")


# Live resources -----------------------------------------------------------------
# Types that pickle (cloudpickle) into a copy of their state at capture time rather
# than failing: a worker gets a snapshot, never the resource itself.
_SESSION_TYPES = {
    "requests.sessions.Session": "a requests Session: workers get a copy of its cookies and "
                                 "headers, not its connections",
    "numpy.memmap": "a numpy memmap: workers get a copy of the mapped data as it is now, "
                    "not the file it maps",
}


def live_resource(value) -> str | None:
    """Why ``value`` travels only as a copy of a live resource (an open file, a socket, a
    session), or None. Said as a warning in the capture report: the cell may expect to
    read, write or share the resource itself."""
    if isinstance(value, io.IOBase):
        name = getattr(value, "name", None)
        where = f" ({name}, mode {getattr(value, 'mode', '?')!r})" if isinstance(name, str) else ""
        if value.closed:
            return f"is a closed file handle{where}"
        if isinstance(value, (io.StringIO, io.BytesIO)):
            return None  # in-memory buffers are plain data
        return (f"is an open file handle{where}: each worker gets a copy of what it holds "
                "now, not the file (writes stay on the worker); open it inside the cell")
    if isinstance(value, socket.socket):
        return "is a socket: it cannot be shared with workers; connect inside the cell"
    t = type(value)
    for klass in t.__mro__:
        why = _SESSION_TYPES.get(f"{klass.__module__}.{klass.__qualname__}")
        if why:
            return f"is {why}"
    return None


def function_globals(fn) -> dict:
    """Globals a notebook function reads (for the line form ``%cloud map f xs``)."""
    code = getattr(fn, "__code__", None)
    g = getattr(fn, "__globals__", {})
    if code is None:
        return {}
    names, stack = set(), [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return {n: g[n] for n in sorted(names) if n in g}
