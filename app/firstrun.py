"""First run without ceremony: `make run` with no service key makes an admin key, once.

Only `provider-registry serve --first-run-key` (what `make run` runs) does this, and only when
authentication is on and no key is configured at all (neither `api_keys` nor `api_keys_file`).
The key is printed once; the file keeps only its SHA-256, and later runs read it as their
`api_keys_file`. Delete the file to be given a new key.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

import yaml

from .config import ENV_PREFIX, Settings

FIRST_RUN_KEYS = Path("var/keys.yaml")
KEY_NAME = "first-run-admin"


def ensure_first_run_key(settings: Settings, path: Path = FIRST_RUN_KEYS, out: TextIO = sys.stdout) -> bool:
    """Make (once) and use the local admin key when no key is configured; tell whether it did.

    Points this process's `api_keys_file` at `path` through the environment, which the
    gunicorn master and its workers read their settings from.
    """
    from .auth import service_key_entry

    if not settings.auth_enabled or settings.api_keys or settings.api_keys_file:
        return False
    if not path.exists():
        secret, entry = service_key_entry(KEY_NAME, ["admin"])
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created readable by the owner only: it names who may administer this registry.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as keys:
            keys.write(
                "# Made by the first `make run`: the SHA-256 of an admin key, printed once.\n"
                "# Delete this file to be given a new key; configure api_keys to stop using it.\n"
            )
            yaml.safe_dump({"api_keys": [entry]}, keys, default_flow_style=False)
        print(
            f"\nNo service key was configured, so this first run made an admin key:\n\n"
            f"    {secret}\n\n"
            f"It is shown only now; {path} keeps only its SHA-256. Use it as\n"
            f"    curl -H 'Authorization: Bearer {secret}' http://127.0.0.1:{settings.port}/providers\n"
            f"    export REGISTRY_KEY={secret}    # for `provider-registry providers list`\n",
            file=out, flush=True,
        )
    else:
        print(f"using the service keys of {path} (made by the first `make run`)", file=out, flush=True)
    os.environ[f"{ENV_PREFIX}API_KEYS_FILE"] = str(path.resolve())
    return True
