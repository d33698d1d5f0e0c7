"""The worker's IAM role: who may assume it, and the least privilege it holds."""
from __future__ import annotations

import json
import urllib.parse
from typing import Any


def trust_policy() -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


def access_policy(bucket: str, prefix: str, region: str, account: str, function: str,
                  partition: str = "aws") -> dict[str, Any]:
    """Least privilege: read objects under ``prefix/``; write only what workers write (a
    task's status, result and crash reports, under ``jobs/*/tasks/``), so a task cannot
    replace a function blob, another job's inputs or a manifest; delete nothing; list
    only that prefix (so a missing key reads as missing, not forbidden); the function's
    own log group."""
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
    ]}


def policy_doc(doc: str | dict[str, Any]) -> dict[str, Any]:
    """A policy document as IAM returns it (URL-encoded JSON, or already parsed)."""
    if isinstance(doc, str):
        parsed: dict[str, Any] = json.loads(urllib.parse.unquote(doc))
        return parsed
    return doc
