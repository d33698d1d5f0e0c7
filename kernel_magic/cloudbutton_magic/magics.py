"""The ``%cloud`` / ``%%cloud`` magics.

Thin magic methods: each parses its arguments (argument groups shared
between sub-commands) and hands a plain request to ``CloudRunner``, which
does the real work and is testable without IPython's magic machinery.
"""
from __future__ import annotations

import argparse
import io
import os
import tokenize

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from .runner import CloudRunner, MapRequest

SUBCOMMANDS = ("map", "run", "jobs", "attach", "config", "cancel")


# Shared argument groups --------------------------------------------------------
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _chunksize(text):
    return "auto" if text == "auto" else _positive_int(text)


def _add_backend_options(parser):
    g = parser.add_argument_group("where it runs")
    g.add_argument("--backend", choices=("local", "lambda"), help="local worker processes or AWS Lambda")
    g.add_argument("--workers", type=_positive_int, help="concurrency limit (local: processes)")
    g.add_argument("--memory", type=_positive_int, metavar="MB", help="memory limit per worker")
    g.add_argument("--timeout", type=_positive_float, metavar="S", help="seconds each task may run")
    g.add_argument("--retries", type=int, metavar="N", help="re-runs of tasks lost to infrastructure errors")


def _add_map_options(parser):
    g = parser.add_argument_group("how the map runs")
    g.add_argument("-o", "--out", metavar="OUT", help="name for the results (default: results)")
    g.add_argument("--chunksize", type=_chunksize, metavar="N|auto", help="items per invocation")
    g.add_argument("--noblock", action="store_true", help="return at once; the Job goes in OUT")
    g.add_argument("--dry-run", action="store_true", help="show what would be shipped; run nothing")
    g.add_argument("--raise", dest="raise_", action="store_true",
                   help="re-raise the first task failure at the end")


def _parser(prog, *groups, **positional):
    p = MagicArgumentParser(prog=prog, add_help=False)
    for name, kwargs in positional.items():
        p.add_argument(name, **kwargs)
    for g in groups:
        g(p)
    return p


PARSERS = {
    "map-cell": _parser("%%cloud map ITERABLE [as NAME]", _add_backend_options, _add_map_options),
    "map-line": _parser("%cloud map FUNC ITERABLE", _add_backend_options, _add_map_options),
    "run": _parser("%%cloud run", _add_backend_options,
                   lambda p: (p.add_argument("-o", "--out", metavar="OUT"),
                              p.add_argument("--dry-run", action="store_true"))),
    "attach": _parser("%cloud attach", lambda p: p.add_argument("-o", "--out", metavar="OUT"),
                      job_id={"metavar": "JOB_ID"}),
    "cancel": _parser("%cloud cancel", job_id={"metavar": "JOB_ID"}),
    "jobs": _parser("%cloud jobs", lambda p: p.add_argument("-n", type=_positive_int, default=10)),
}

HELP = """\
%%cloud map ITERABLE [as NAME] [-o OUT] [--backend local|lambda] [--workers N] [--memory MB]
            [--timeout S] [--chunksize N|auto] [--retries N] [--noblock] [--dry-run] [--raise]
    Run the cell once per element of ITERABLE (bound to NAME, default `item`); the value of
    each run's last expression lands, in order, in OUT (default `results`).
%%cloud run [-o OUT] [--backend ...] [--memory MB] [--dry-run]
    Run the cell once remotely; the names it assigns come back into the notebook.
%cloud map FUNC ITERABLE [options]   map a function already defined
%cloud jobs [-n N]                   recent jobs
%cloud attach JOB_ID [-o OUT]        re-attach to a job and collect its results
%cloud cancel JOB_ID                 cancel a job
%cloud config [key=value ...]        show or set defaults (backend, workers, memory_mb,
                                     timeout, chunksize, retries)"""


def split_expression(text: str) -> tuple[str, str]:
    """Split ``"xs[:3] as x -o out"`` into the leading Python expression and the rest.

    The expression ends at the first top-level ``as`` or option (`` -x``/`` --x``)
    outside brackets and strings.
    """
    depth = 0
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError) as err:
        raise UsageError(f"cannot parse {text!r}: {err}") from None
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif depth == 0 and i > 0:
            col = tok.start[1]
            if tok.type == tokenize.NAME and tok.string == "as":
                return text[:col].strip(), text[col:].strip()
            if tok.type == tokenize.OP and tok.string in ("-", "--") and text[col - 1:col].isspace():
                nxt = text[col:].lstrip("-")[:1]
                if nxt.isalpha():
                    return text[:col].strip(), text[col:].strip()
    return text.strip(), ""


@magics_class
class CloudMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.runner = CloudRunner(shell)

    @line_cell_magic
    def cloud(self, line, cell=None):
        """Run notebook code on stateless cloud workers. ``%cloud help`` lists the sub-commands."""
        sub, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if sub in ("", "help", "-h", "--help"):
            print(HELP)
            return None
        if sub not in SUBCOMMANDS:
            raise UsageError(f"unknown %cloud sub-command {sub!r}; choose one of {', '.join(SUBCOMMANDS)}")
        if cell is not None and sub not in ("map", "run"):
            raise UsageError(f"%%cloud {sub} is a line magic: use %cloud {sub}")
        if cell is None and sub == "run":
            raise UsageError("%%cloud run needs a cell body: put it at the top of a cell")
        return getattr(self, f"_{sub}")(rest, cell)

    def _map(self, rest, cell):
        if cell is None:
            func, _, rest = rest.partition(" ")
            if not func:
                raise UsageError("usage: %cloud map FUNC ITERABLE [options]")
            iterable, options = split_expression(rest.strip())
            args = PARSERS["map-line"].parse_argstring(options)
            name = None
        else:
            iterable, options = split_expression(rest)
            name = "item"
            if options.startswith("as"):
                _, _, options = options.partition(" ")
                name, _, options = options.strip().partition(" ")
                if not name.isidentifier():
                    raise UsageError(f"`as` must be followed by a variable name, got {name!r}")
            args = PARSERS["map-cell"].parse_argstring(options)
            func = None
        if not iterable:
            raise UsageError("%%cloud map needs an ITERABLE expression: %%cloud map xs [as x]")
        request = MapRequest(iterable=iterable, name=name, func=func, body=cell, out=args.out or "results",
                             options=_options(args), noblock=args.noblock, dry_run=args.dry_run,
                             raise_=args.raise_)
        return self.runner.map(request)

    def _run(self, rest, cell):
        args = PARSERS["run"].parse_argstring(rest)
        return self.runner.run(cell, out=args.out, options=_options(args), dry_run=args.dry_run)

    def _jobs(self, rest, cell):
        self.runner.print_jobs(PARSERS["jobs"].parse_argstring(rest).n)

    def _attach(self, rest, cell):
        args = PARSERS["attach"].parse_argstring(rest)
        return self.runner.attach(args.job_id, out=args.out or "results")

    def _cancel(self, rest, cell):
        self.runner.cancel(PARSERS["cancel"].parse_argstring(rest).job_id)

    def _config(self, rest, cell):
        self.runner.configure(rest.split())


def _options(args) -> dict:
    keys = {"backend": "backend", "workers": "workers", "memory": "memory_mb", "timeout": "timeout",
            "retries": "retries", "chunksize": "chunksize"}
    return {dest: getattr(args, src) for src, dest in keys.items()
            if getattr(args, src, None) is not None}


def notebook_label(shell) -> str | None:
    """The notebook's path when the kernel was started by a Jupyter server session."""
    return os.environ.get("JPY_SESSION_NAME") or shell.user_ns.get("__session__") or None
