"""The ``%cloud`` / ``%%cloud`` magics.

Thin magic methods: each parses its arguments (argument groups shared
between sub-commands) and hands a plain request to ``CloudRunner``, which
does the real work and is testable without IPython's magic machinery.
"""
from __future__ import annotations

import argparse
import io
import textwrap
import tokenize

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from cloudbutton_executor import config

from .runner import CloudRunner, MapRequest

SUBCOMMANDS = ("map", "run", "jobs", "attach", "config", "cancel", "cache", "rerun")


# Shared argument groups: the run settings' types, bounds and help come from the one
# config schema, so the magic accepts exactly what the executor and the panel accept.
def _add_setting(group, key: str) -> None:
    s = config.RUN[key]
    # A yes/no setting's flag alone means yes (``--cache``); ``--backups false`` says no.
    flag_alone = {"nargs": "?", "const": True} if s.kind is bool else {}
    group.add_argument(s.flag or f"--{key}", dest=key, type=s.argparse_type(),
                       choices=s.choices or None, metavar=s.metavar, help=s.help, **flag_alone)


def _add_backend_options(parser):
    g = parser.add_argument_group("where it runs")
    for key in ("backend", "workers", "memory_mb", "timeout", "retries"):
        _add_setting(g, key)
    g = parser.add_argument_group("reuse and cost")
    for key in ("cache", "budget", "backups"):
        _add_setting(g, key)


def _add_map_options(parser):
    g = parser.add_argument_group("how the map runs")
    g.add_argument("-o", "--out", metavar="OUT", help="name for the results (default: results)")
    _add_setting(g, "chunksize")
    g.add_argument("--noblock", action="store_true", help="return at once; the Job goes in OUT")
    g.add_argument("--dry-run", action="store_true", help="show what would be shipped; run nothing")
    g.add_argument("--raise", dest="raise_", action="store_true",
                   help="re-raise the first task failure at the end")


def _add_data_options(parser):
    g = parser.add_argument_group("a data-driven map (ITERABLE names storage: s3://bucket/prefix/, "
                                  "keys, a glob or a local directory)")
    for key in ("obj_chunk_size", "obj_chunk_number"):
        s = config.OPTIONS[key]
        g.add_argument(f"--{key.replace('_', '-')}", dest=key, type=s.argparse_type(),
                       metavar=s.metavar, help=s.help)


def _add_run_options(parser):
    g = parser.add_argument_group("what comes back")
    g.add_argument("-o", "--out", metavar="OUT", help="also put the assigned names in OUT (a dict)")
    g.add_argument("--dry-run", action="store_true", help="show what would be shipped; run nothing")


def _parser(prog, description, *groups, **positional):
    p = MagicArgumentParser(prog=prog, description=description, add_help=False,
                            formatter_class=argparse.HelpFormatter)
    for name, kwargs in positional.items():
        p.add_argument(name, **kwargs)
    for g in groups:
        g(p)
    return p


_KEYS = ", ".join(config.RUN)
_JOB_ID = {"metavar": "JOB_ID", "type": config.OPTIONS["job_id"].argparse_type()}
PARSERS = {
    "map-cell": _parser(
        "%%cloud map ITERABLE [as NAME]",
        "Run the cell once per element of ITERABLE (bound to NAME, default `item`); the value "
        "of each run's last expression lands, in order, in OUT (default `results`). An ITERABLE "
        "that names storage (s3://bucket/prefix/) runs it once per object or chunk, NAME "
        "bound to the chunk (obj.data_stream, obj.key, obj.part).",
        _add_backend_options, _add_map_options, _add_data_options),
    "map-line": _parser("%cloud map FUNC ITERABLE", "Map a function already defined.",
                        _add_backend_options, _add_map_options, _add_data_options),
    "run": _parser("%%cloud run", "Run the cell once remotely; the names it assigns come back "
                   "into the notebook.", _add_backend_options, _add_run_options),
    "jobs": _parser("%cloud jobs", "Recent jobs, newest first.",
                    lambda p: p.add_argument("-n", type=config.OPTIONS["limit"].argparse_type(),
                                             default=10, metavar="N", help="how many (default 10)")),
    "attach": _parser("%cloud attach", "Re-attach to a job (e.g. after a kernel restart) and "
                      "collect its results.",
                      lambda p: p.add_argument("-o", "--out", metavar="OUT",
                                               help="name for the results (default: results)"),
                      job_id=_JOB_ID),
    "cancel": _parser("%cloud cancel", "Cancel a job of this or another kernel.", job_id=_JOB_ID),
    "rerun": _parser("%cloud rerun", "Re-run the failed items of a job of this kernel into its "
                     "own results (OUT, default results, gets all of them again).",
                     lambda p: p.add_argument("-o", "--out", metavar="OUT",
                                              help="name for the results (default: results)"),
                     job_id=_JOB_ID),
    "cache": _parser("%cloud cache", "List the result cache (one row per cached function), or "
                     "clear it (all of it, or one function's entries with --function).",
                     lambda p: p.add_argument("--function", metavar="IDENTITY",
                                              help="only this function (its identity, as "
                                                   "`%cloud cache list` shows it)"),
                     action={"choices": ("list", "clear"), "metavar": "list|clear"}),
    "config": _parser("%cloud config", f"Show, or set for this session, the run defaults ({_KEYS}); "
                      "the Cloud panel's config file and CLOUDBUTTON_* variables set them too.",
                      assignments={"nargs": "*", "metavar": "key=value"}),
}


def _help() -> str:
    """``%cloud help``: every sub-command's usage, then the shared options (from the parsers)."""
    lines = []
    for name in ("map-cell", "map-line", "run", "jobs", "attach", "cancel", "rerun", "cache",
                 "config"):
        p = PARSERS[name]
        lines.append(p.format_usage().strip().removeprefix("usage: "))
        lines.extend(textwrap.wrap(p.description, 88, initial_indent="    ",
                                   subsequent_indent="    "))
    lines.append("")
    options = PARSERS["map-cell"].format_help()
    lines.append(options[options.index("where it runs"):].rstrip())
    return "\n".join(lines)


HELP = _help()


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
                             raise_=args.raise_, data_options=_data_options(args))
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

    def _rerun(self, rest, cell):
        args = PARSERS["rerun"].parse_argstring(rest)
        return self.runner.rerun(args.job_id, out=args.out or "results")

    def _cache(self, rest, cell):
        args = PARSERS["cache"].parse_argstring(rest)
        self.runner.cache(args.action, args.function)

    def _config(self, rest, cell):
        self.runner.configure(PARSERS["config"].parse_argstring(rest).assignments)


def _data_options(args) -> dict:
    return {key: getattr(args, key) for key in ("obj_chunk_size", "obj_chunk_number")
            if getattr(args, key, None) is not None}


def _options(args) -> dict:
    return {key: getattr(args, key) for key in config.RUN if getattr(args, key, None) is not None}
