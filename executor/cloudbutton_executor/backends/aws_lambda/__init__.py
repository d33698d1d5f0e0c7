"""AWS Lambda: deploy the worker function, invoke it asynchronously, check what runs.

The host talks to three AWS services, all through the standard credential chain
(nothing secret is stored by us or sent to workers): S3 (``S3Storage``, the storage
protocol of ``protocol.py``), Lambda, and IAM/STS at deploy time only.

One concern a module:

- ``function``: the worker function as deployed: its code zip, the versions in its
  environment, the deployment manifest the host verifies and reads.
- ``iam``: the worker role's trust and least-privilege access policies.
- ``deploy``: ``cloudbutton deploy`` (bucket, role, layer or image, function, async
  config), after the runtime calendar (``packaging.RUNTIMES``) allows it.
- ``image``: the container-image path's build context and its docker/ECR commands.
- ``invoke``: the fast invoker (botocore's SigV4 signer over pooled keep-alive
  connections) and the boto3 one.
- ``backend``: ``LambdaBackend``: invoke through the dispatcher, the pre-flight check,
  readiness and status.

Packages for a runtime (pins, wheels, layers' files) live in ``packaging.py``.
"""
from __future__ import annotations

from .backend import LambdaBackend, NotDeployedError, lambda_status, resolve_bucket
from .deploy import Deployer, ImageRequired, deploy
from .function import (build_function_zip, decode_versions, encode_versions, host_versions,
                       version_problems)

__all__ = ["Deployer", "ImageRequired", "LambdaBackend", "NotDeployedError", "build_function_zip",
           "decode_versions", "deploy", "encode_versions", "host_versions", "lambda_status",
           "resolve_bucket", "version_problems"]
