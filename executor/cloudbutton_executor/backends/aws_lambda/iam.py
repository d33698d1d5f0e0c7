"""The worker's IAM role: who may assume it, and the least privilege it holds."""
from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any


def trust_policy() -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def data_prefix(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` named at deploy (``--data``) as ``(bucket, "prefix/")``: a
    folder (``""`` for the whole bucket); never a wildcard, so a policy names it exactly."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"--data takes s3://bucket/prefix, got {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ValueError(f"--data {url!r}: {bucket!r} is not an S3 bucket name "
                         "(3-63 lowercase letters, digits, . and -)")
    if any(c in prefix for c in "*?$"):
        raise ValueError(f"--data {url!r}: a data prefix names objects exactly (no * ? or $)")
    return bucket, (prefix.rstrip("/") + "/") if prefix.strip("/") else ""


def data_statements(urls: Iterable[str], partition: str = "aws") -> list[dict[str, Any]]:
    """Read and list access to the data prefixes named at deploy, and nothing more: a
    data-driven map's tasks read their chunks there (GET; HEAD needs the same right)."""
    by_bucket: dict[str, list[str]] = {}
    for url in urls:
        bucket, prefix = data_prefix(url)
        if prefix not in by_bucket.setdefault(bucket, []):
            by_bucket[bucket].append(prefix)
    out: list[dict[str, Any]] = []
    if by_bucket:
        out.append({"Sid": "DataRead", "Effect": "Allow", "Action": "s3:GetObject",
                    "Resource": [f"arn:{partition}:s3:::{b}/{p}*" for b, ps in sorted(by_bucket.items())
                                 for p in sorted(ps)]})
    for i, (bucket, prefixes) in enumerate(sorted(by_bucket.items())):
        out.append({"Sid": f"DataList{i}", "Effect": "Allow", "Action": "s3:ListBucket",
                    "Resource": f"arn:{partition}:s3:::{bucket}",
                    "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in sorted(prefixes)]}}})
    return out


def data_urls(policy: dict[str, Any] | None) -> list[str]:
    """The data prefixes a deployed policy grants (kept by a deploy that names none)."""
    urls = []
    for st in (policy or {}).get("Statement", []):
        if st.get("Sid") == "DataRead":
            res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            urls += ["s3://" + r.split(":::", 1)[1][:-1] for r in res]
    return urls


def access_policy(bucket: str, prefix: str, region: str, account: str, function: str,
                  partition: str = "aws", data: Iterable[str] = ()) -> dict[str, Any]:
    """Least privilege: read objects under ``prefix/``; write only what workers write (a
    task's status, result and crash reports, under ``jobs/*/tasks/``), so a task cannot
    replace a function blob, another job's inputs or a manifest; delete nothing; list
    only that prefix (so a missing key reads as missing, not forbidden); the function's
    own log group; read and list the ``data`` prefixes named at deploy."""
    logs = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadUnderPrefix", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*"},
        {"Sid": "WriteTaskOutputs", "Effect": "Allow", "Action": "s3:PutObject",
         "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/jobs/*/tasks/*"},
        {"Sid": "ListPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:{partition}:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
        {"Sid": "Logs", "Effect": "Allow", "Action": "logs:CreateLogGroup",
         "Resource": f"{logs}:*"},
        {"Sid": "LogStreams", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": f"{logs}:log-stream:*"},
        *data_statements(data, partition),
    ]}


def policy_doc(doc: str | dict[str, Any]) -> dict[str, Any]:
    """A policy document as IAM returns it (URL-encoded JSON, or already parsed)."""
    if isinstance(doc, str):
        parsed: dict[str, Any] = json.loads(urllib.parse.unquote(doc))
        return parsed
    return doc
