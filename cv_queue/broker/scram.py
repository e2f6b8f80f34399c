"""SCRAM users of the secured local broker: their names, random passwords, and the file that keeps them.

The users are created when storage is formatted (`kafka-storage format --add-scram`), so they exist before the
broker takes its first connection. Their passwords are written to one file, readable by its owner only, in the
broker's data dir; nothing prints them. A restart on the same data reads the file again (the users already exist
in the metadata log, formatting is skipped).
"""

import os
import secrets
from pathlib import Path

from cv_queue.broker.errors import BrokerError
from cv_queue.kafka.admin.acls import ADMIN, PRINCIPALS

__all__ = ["ADMIN", "CREDENTIALS_FILE", "PRINCIPALS", "SCRAM_MECHANISM", "ensure_credentials", "format_arguments",
           "new_password", "read_credentials", "redact"]

SCRAM_MECHANISM = "SCRAM-SHA-512"
# Every user the local broker creates is one of the queue's principals (cv_queue.kafka.admin.acls); the admin is its
# super user (provisioning, ACLs).
CREDENTIALS_FILE = "scram-credentials.properties"


def new_password() -> str:
    # Hex only: the storage tool's `[name=...,password=...]` syntax and the JAAS line in server.properties both
    # have separators and quotes a URL-safe token could collide with.
    return secrets.token_hex(24)


def read_credentials(path: Path) -> dict[str, str]:
    """`user=password` lines, as written by `ensure_credentials`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BrokerError(f"Cannot read the SCRAM credentials file {path}: {exc.strerror}.",
                          "it is written by `cv-queue broker start --security sasl_ssl`; start the broker again "
                          "with an empty --data-dir to make new users.") from exc
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {user.strip(): password.strip() for user, password in pairs}


def ensure_credentials(path: Path) -> dict[str, str]:
    """The users' passwords: those in `path` if it exists (a restart), else new ones written there (mode 0600)."""
    if path.is_file():
        credentials = read_credentials(path)
        missing = [p for p in PRINCIPALS if p not in credentials]
        if missing:
            raise BrokerError(f"The SCRAM credentials file {path} lacks user(s) {missing}.",
                              "restore it, or start a new broker with an empty --data-dir.")
        return credentials
    credentials = {principal: new_password() for principal in PRINCIPALS}
    body = "# SCRAM-SHA-512 users of the local cv-queue broker (user=password). Keep this file private.\n"
    body += "".join(f"{user}={password}\n" for user, password in credentials.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
    return credentials


def format_arguments(credentials: dict[str, str]) -> list[str]:
    """The `kafka-storage format` arguments that create every user (they hold passwords: never log them)."""
    args: list[str] = []
    for user, password in credentials.items():
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
    return args


def redact(text: str, credentials: dict[str, str]) -> str:
    """`text` with every password replaced, for error messages that quote a tool's output."""
    for password in credentials.values():
        text = text.replace(password, "****")
    return text
