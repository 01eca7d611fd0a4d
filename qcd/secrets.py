"""Secrets from the environment or from files that only their owner can read.

qcd never takes a secret from its TOML file (that file is printed by ``qcd
check-config``, copied around and checked in). Secrets come from:

* **private key files** (``ingest.tls.key_file``, and the client keys of outgoing TLS:
  ``delivery.destinations[].tls.key_file``, ``audit.tls.key_file``): the file must not
  be readable or writable by group or others, else qcd refuses to start
  (:func:`check_private_file`);
* **environment variables** named in the config (``alerts.webhooks[].secret_env``,
  ``delivery.destinations[].auth_env``), or, when the variable itself is not set, a file
  named by ``<VARIABLE>_FILE`` (the Docker/systemd credentials convention), which must
  pass the same permission check (:func:`read_secret`).

The check is on permission bits only (POSIX); it is skipped where there are none
(Windows).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from qcd.errors import ConfigError

__all__ = ["check_private_file", "pem_has_private_key", "read_secret"]


def check_private_file(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse a secret file that is missing or open to group or others.

    Parameters
    ----------
    path
        The file (a symbolic link is followed: the target's mode counts).
    what
        The setting it came from, named in the error (e.g. ``ingest.tls.key_file``).

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    ConfigError
        The file does not exist, is not a regular file, or its mode grants any
        permission to group or others (``mode & 0o077``); the message names the file,
        its mode and the ``chmod`` that fixes it.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {p}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what}: {p} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        who = " and ".join(name for name, bits in (("group", 0o070), ("others", 0o007))
                           if st.st_mode & bits)
        raise ConfigError(
            f"{what}: {p} holds a secret but is accessible by {who} (mode {mode:04o}); "
            f"allowed: mode 0600 or 0400 (run: chmod 600 {p})")
    return p


def pem_has_private_key(path: str | os.PathLike[str]) -> bool:
    """Whether a PEM file contains a private key block (e.g. a cert and key bundle)."""
    try:
        with open(path, "rb") as fh:
            return b"PRIVATE KEY-----" in fh.read(1 << 20)
    except OSError:
        return False


def read_secret(variable: str, what: str,
                environ: Mapping[str, str] | None = None) -> str | None:
    """The secret in environment variable ``variable``, else in file ``$<variable>_FILE``.

    A file's content is used with one trailing newline removed. Returns None when
    neither is set (or both are empty); the caller decides whether that is an error.

    Raises
    ------
    ConfigError
        ``<variable>_FILE`` names a file that fails :func:`check_private_file` or
        cannot be read.
    """
    env = os.environ if environ is None else environ
    value = env.get(variable)
    if value:
        return value
    file_name = env.get(f"{variable}_FILE")
    if not file_name:
        return None
    p = check_private_file(file_name, f"{what} ({variable}_FILE)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} ({variable}_FILE): cannot read {p}: {exc}") from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text or None
