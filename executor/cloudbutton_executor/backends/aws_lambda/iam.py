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
    """Least privilege: objects under ``prefix/`` only, listing only that prefix, and the
    function's own log group."""
    logs = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ObjectsUnderPrefix", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*"},
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
