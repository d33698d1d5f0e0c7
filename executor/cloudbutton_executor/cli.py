"""The ``cloudbutton`` command: deploy the Lambda worker, inspect it, list and clean jobs.

AWS-CLI style: ``cloudbutton [--config FILE] [--profile P] [--region R] COMMAND [options]``.
Credentials come from the standard AWS chain, never from our config.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from . import accounting, cache, catalog, cleanup, protocol
from . import config as _config
from .storage import LocalStorage
from .units import format_usd


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloudbutton",
        description="Deploy and inspect the cloudbutton AWS Lambda worker; list and clean jobs. "
                    "Configuration: ~/.cloudbutton/config.yaml or $CLOUDBUTTON_CONFIG; "
                    "credentials: the standard AWS chain (AWS_PROFILE, ~/.aws, environment).")
    p.add_argument("--config", metavar="FILE", help="config file (default: $CLOUDBUTTON_CONFIG "
                   "or ~/.cloudbutton/config.yaml)")
    p.add_argument("--profile", type=_config.SETTINGS["profile"].argparse_type(),
                   help="AWS profile (default: AWS_PROFILE or the config's)")
    p.add_argument("--region", type=_config.SETTINGS["region"].argparse_type(),
                   help="AWS region (default: the config's, AWS_REGION or the profile's)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("deploy", help="create or update the bucket, IAM role and Lambda function",
                       description="Create or update, idempotently: the S3 bucket, an IAM role "
                       "with access only to the project's prefix and its logs, and the worker "
                       "Lambda function (a zip of cloudbutton_executor + cloudpickle). Running it "
                       "again changes nothing unless something differs.")
    for key, flag, metavar in (("memory", "--memory", "MB"), ("timeout", "--timeout", "S"),
                               ("architecture", "--arch", None)):
        setting = _config.LAMBDA[f"lambda.{key}"]
        d.add_argument(flag, dest=key if key != "architecture" else "arch",
                       type=setting.argparse_type(), choices=setting.choices or None,
                       metavar=metavar, help=f"{setting.help} ({setting.describe()})")
    d.add_argument("--sync", action="store_true",
                   help="deploy, as a layer, the packages your Lambda jobs import (recorded by each "
                        "job's pre-flight check), pinned to this environment's versions")
    d.add_argument("--modules", metavar="M,M", type=lambda t: [m for m in t.split(",") if m],
                   default=[], help="also these importable modules (e.g. numpy,sklearn)")
    d.add_argument("--requirements", metavar="FILE",
                   help="pip requirements added to the layer (exact pins win over --sync)")
    dg = d.add_mutually_exclusive_group()
    dg.add_argument("--data", metavar="S3_URL", action="append", type=_data_url,
                   help="s3://bucket/prefix the workers may read (and list) for data-driven maps; "
                        "repeat for more; without it a deploy keeps the prefixes granted before")
    dg.add_argument("--no-data", action="store_true",
                   help="take back the read access every earlier --data granted")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--image", action="store_true",
                   help="the container-image path: a Dockerfile on the public Lambda Python image "
                        "with the same pins, built and pushed to ECR (or the commands printed)")
    g.add_argument("--image-uri", metavar="URI", help="deploy a container image instead of the zip")

    s = sub.add_parser("status", help="credentials, deployed function and version check",
                       description="Show whether credentials are found, whether the worker "
                       "function is deployed and whether its versions match this host.")
    s.add_argument("--json", action="store_true", help="print JSON")

    j = sub.add_parser("jobs", help="recent jobs from their manifests in S3",
                       description="List recent jobs (newest first) with their progress.")
    j.add_argument("--limit", type=_config.OPTIONS["limit"].argparse_type(), default=20, metavar="N",
                   help="how many (default 20)")
    j.add_argument("--json", action="store_true", help="print JSON")
    j.add_argument("--cost", action="store_true",
                   help="read every stored status too: failures and the Lambda and S3 bill "
                        "(one GET per stored task)")

    c = sub.add_parser("clean", help="delete a job's objects, or all jobs older than a duration",
                       description="Delete stored jobs: one (--job ID) or every job older than "
                       "a duration (--older-than 7d; units s, m, h, d; a bare number means days); "
                       "then the function blobs and large values no remaining job names (those "
                       "stored or reused within the last hour are kept: a job may be starting).")
    cg = c.add_mutually_exclusive_group(required=True)
    cg.add_argument("--job", metavar="ID", help="job id (as `cloudbutton jobs` shows)")
    cg.add_argument("--older-than", metavar="D", help="e.g. 30m, 12h, 7d")
    c.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    c.add_argument("--local", action="store_true",
                   help="the local backend's storage ($CLOUDBUTTON_STORAGE_DIR, else "
                        "~/.cache/cloudbutton; prefix 'cloudbutton') instead of S3")

    k = sub.add_parser("cache", help="list or clear the per-item result cache in S3",
                       description="List the result cache (one row per cached function), or "
                       "clear it: all of it, or one function's entries (--function).")
    k.add_argument("action", choices=("list", "clear"))
    k.add_argument("--function", metavar="IDENTITY",
                   help="only this function (its identity, as `cloudbutton cache list` shows)")
    return p


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise ValueError(f"--older-than {text!r}: expected a duration like 30m, 12h or 7d")
    return float(m.group(1)) * _UNITS[m.group(2) or "d"]


def _load_config(args: argparse.Namespace) -> _config.Config:
    cfg = _config.load(args.config)
    if args.profile:
        cfg.profile = args.profile
    if args.region:
        cfg.region = args.region
    return cfg


def _backend(cfg: _config.Config) -> Any:
    from .backends.aws_lambda import LambdaBackend

    return LambdaBackend(config=cfg)


def _data_url(text: str) -> str:
    from .backends.aws_lambda.iam import data_prefix

    try:
        data_prefix(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def cmd_deploy(args: argparse.Namespace, out: TextIO) -> int:
    from .backends.aws_lambda import deploy

    cfg = _load_config(args)
    print(f"Deploying {cfg.lambda_.function_name} (config: {cfg.path or 'defaults'})", file=out)
    actions = deploy(cfg, memory=args.memory, timeout=args.timeout, requirements=args.requirements,
                     image_uri=args.image_uri, sync=args.sync, modules=args.modules, arch=args.arch,
                     image=args.image, out=out, data=[] if args.no_data else args.data)
    changed = [a for a in actions if a[0] != "unchanged"]
    print("Nothing to do: everything is up to date." if not changed
          else f"Done: {len(changed)} change(s).", file=out)
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    st = _backend(_load_config(args)).status()
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True), file=out)
        return 0 if st.get("ok") else 1
    creds = f"found ({st['credentials_source']})" if st["credentials"] else "NOT FOUND"
    lines = [("credentials", creds), ("region", st["region"]), ("bucket", st["bucket"]),
             ("prefix", st["prefix"]), ("function", st["function"]),
             ("deployed", {True: "yes", False: "no", None: "unknown"}[st.get("deployed")])]
    if st.get("deployed"):
        dates = st.get("runtime_dates")
        runtime = f"{st.get('runtime') or 'container image'} ({st.get('package_type', 'Zip').lower()})"
        if dates:
            runtime += (f": {dates['phase']} (deprecated {dates['deprecated']}, function create "
                        f"blocked {dates['block_create']}, update blocked {dates['block_update']})")
        lines += [("runtime", runtime),
                  ("memory/timeout", f"{st['memory']} MB / {st['timeout']} s"),
                  ("versions", "match" if st["versions_match"] else "DIFFER"),
                  ("host", json.dumps(st["host_versions"], sort_keys=True)),
                  ("deployed", json.dumps(st["deployed_versions"], sort_keys=True))]
    lines.append(("status", st["message"]))
    for k, v in lines:
        print(f"{k:>15}: {v}", file=out)
    return 0 if st.get("ok") else 1


def _job_rows(storage: Any, prefix: str, limit: int, cost: bool = False) -> list[dict[str, Any]]:
    """One row per recent job, from its keys (``catalog.brief``); with ``cost``, from its
    statuses too (failures and the bill, the summary the Jupyter panel shows)."""
    now = time.time()
    rows = []
    for m in catalog.manifests(storage, prefix, limit):
        row = catalog.brief(storage, prefix, m, now)
        if cost:
            s = catalog.summary(storage, prefix, m, now)
            row.update(state=s["state"], done=s["counts"]["done"], failed=s["counts"]["failed"],
                       gb_seconds=s["gb_seconds"], cost_usd=s["cost_usd"])
        rows.append(row)
    return rows


def cmd_jobs(args: argparse.Namespace, out: TextIO) -> int:
    be = _backend(_load_config(args))
    rows = accounting.link_reruns(_job_rows(be.storage, be.prefix, args.limit, cost=args.cost))
    if args.json:
        print(json.dumps(rows, indent=1), file=out)
        return 0
    if not rows:
        print(f"no jobs under s3://{be.storage.bucket}/{protocol.jobs_prefix(be.prefix)}", file=out)
        return 0
    cost_head = f" {'FAILED':>6} {'COST':>9}" if args.cost else ""
    print(f"{'JOB ID':<23} {'CREATED (UTC)':<19} {'ITEMS':>7} {'ENDED':>7} {'STATE':<9}{cost_head}"
          "  FUNCTION", file=out)
    for r in rows:
        created = datetime.datetime.fromtimestamp(r["created"] or 0, datetime.timezone.utc)
        label = f" ({r['label']})" if r["label"] else ""
        cost = f" {r['failed']:>6} {format_usd(r['cost_usd']):>9}" if args.cost else ""
        print(f"{r['job_id']:<23} {created:%Y-%m-%d %H:%M:%S} {r['items']:>7} {r['ended']:>7} "
              f"{r['state']:<9}{cost}  {r['function']}{label}", file=out)
        if r.get("rerun_by"):  # the re-run's results went into this job's, in its kernel
            print(f"{'':<23} {r['rerun_by']['text']}", file=out)
    return 0


def cmd_clean(args: argparse.Namespace, out: TextIO) -> int:
    if args.job:
        _config.check("job_id", args.job, "--job: ")
    if args.local:
        st, prefix = LocalStorage(), "cloudbutton"  # what Executor("local") uses by default
        where = os.path.join(st.root, protocol.jobs_prefix(prefix))
    else:
        be = _backend(_load_config(args))
        st, prefix = be.storage, be.prefix
        where = f"s3://{st.bucket}/{protocol.jobs_prefix(prefix)}"
    if args.job:
        victims = [args.job]
        if not st.list(protocol.job_prefix(prefix, args.job) + "/"):
            print(f"no job {args.job} under {where}", file=out)
            return 1
    else:
        age = parse_duration(args.older_than)
        cutoff = datetime.datetime.now(datetime.timezone.utc).timestamp() - age
        victims = [j for j in catalog.job_ids(st, prefix) if protocol.job_created(j) < cutoff]
    total = 0
    for job_id in victims:
        if args.dry_run:
            n = len(st.list(protocol.job_prefix(prefix, job_id) + "/"))
        else:
            n = st.delete_prefix(protocol.job_prefix(prefix, job_id) + "/")
        total += n
        print(f"{'would delete' if args.dry_run else 'deleted'} {job_id} ({n} objects)", file=out)
    print(f"{len(victims)} job(s), {total} object(s){' (dry run)' if args.dry_run else ''}", file=out)
    shared = cleanup.unreferenced(st, prefix, excluding=victims)
    for key in shared:
        if not args.dry_run:
            st.delete(key)
        print(f"{'would delete' if args.dry_run else 'deleted'} {key} (no remaining job names it)",
              file=out)
    print(f"{len(shared)} function blob(s) and large value(s) no remaining job names"
          f"{' (dry run)' if args.dry_run else ''}", file=out)
    return 0


def cmd_cache(args: argparse.Namespace, out: TextIO) -> int:
    be = _backend(_load_config(args))
    if args.action == "list":
        print(cache.format_listing(cache.list_functions(be.storage, be.prefix)), file=out)
        return 0
    n = cache.clear(be.storage, be.prefix, args.function)
    print(f"deleted {n} object(s) of the result cache"
          + (f" of {args.function}" if args.function else ""), file=out)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "deploy": cmd_deploy, "status": cmd_status, "jobs": cmd_jobs, "clean": cmd_clean,
    "cache": cmd_cache}


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, out)
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        if type(exc).__name__ == "ImageRequired":  # the commands to run are the answer
            print(f"cloudbutton {args.command}: {exc}", file=out)
            return 3
        print(f"cloudbutton {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except Exception as exc:  # botocore errors: say which call failed, no stack dump
        if type(exc).__module__.startswith("botocore"):
            print(f"cloudbutton {args.command}: AWS error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
