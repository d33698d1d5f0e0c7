"""The environment every test (and every server, kernel or CLI it starts) runs in:
its own config file and job cache, and no way to reach a real AWS account."""
from __future__ import annotations

import os

# AWS settings a developer's shell may hold: no test may reach a real account with them.
AWS_ACCOUNT_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


def settings(directory) -> dict:
    """Variables to set (None: to remove) for a test whose private files live in ``directory``."""
    out = dict.fromkeys(AWS_ACCOUNT_VARS)
    out.update(CLOUDBUTTON_CONFIG=os.path.join(str(directory), "config.yaml"),
               CLOUDBUTTON_STORAGE_DIR=os.path.join(str(directory), "cache"),
               CLOUDBUTTON_KEY_FILE=os.path.join(str(directory), "host.key"),
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true")  # never probe an instance role
    return out


def environ(directory, **extra) -> dict:
    """A copy of ``os.environ`` with ``settings(directory)`` applied, for a subprocess."""
    env = dict(os.environ)
    for k, v in {**settings(directory), **extra}.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
