"""API keys from a file on shared storage, for processes started by a Ray job or a cluster.

A key put into a Ray job's runtime env (`ray job submit --runtime-env-json`) is shown to
anyone who can run `ray job list` or open the dashboard. So mmr's launch scripts send only
the *path* of a secrets file, `MMR_SECRETS_FILE`, and each mmr process reads the keys from
it at startup: the verl plugin (every verl process: the driver, verl's TaskRunner, which
runs wandb, and the reward workers, which run the judge), `mmr rl train`, the LLM client
and the metric logger.

The file holds `NAME=value` lines (`#` comments, blank lines, an optional `export ` and
quotes around the value are allowed), e.g. `OPENAI_API_KEY=sk-...` and `WANDB_API_KEY=...`.
A variable already set in the process's environment (exported on the node before
`ray start`) wins over the file. Values are never logged; only names are.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

SECRETS_FILE_ENV = "MMR_SECRETS_FILE"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class SecretsFileError(RuntimeError):
    """The file named by MMR_SECRETS_FILE is missing or has a line that is not NAME=value."""


def read_secrets_file(path: str | Path) -> dict[str, str]:
    """The NAME=value pairs of a secrets file (the error names the line, never a value)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SecretsFileError(
            f"{SECRETS_FILE_ENV}={path}: cannot read it ({err.strerror}); it must be a file "
            "on storage every Ray node sees"
        ) from None
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise SecretsFileError(f"{path}:{number}: not a NAME=value line")
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def load_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set the variables of $MMR_SECRETS_FILE that `environ` lacks; return their names."""
    environ = os.environ if environ is None else environ
    path = environ.get(SECRETS_FILE_ENV)
    if not path:
        return []
    added = []
    for name, value in read_secrets_file(path).items():
        if not environ.get(name):
            environ[name] = value
            added.append(name)
    return added
