"""Modes of the files that hold secrets or private records, set when they are created.

The database (upstream keys, in plain text without ENCRYPTION_KEY), its WAL and SHM files, the audit
log and the pid file are ``PRIVATE``; the event log is ``GROUP_READABLE`` so that an operators' group
can read it (docs/deploy-ec2.md §7). Modes are given to open()/mkdir() at creation, so a stricter
umask still narrows them but a loose one (002, 000) cannot widen them. Existing files are never
chmod-ed behind the operator's back: a file that grants more is named in one warning instead.
"""

from __future__ import annotations

import logging
import os
import stat

__all__ = (
    "GROUP_DIR",
    "GROUP_READABLE",
    "PRIVATE",
    "PRIVATE_DIR",
    "create_file",
    "make_dirs",
    "warn_if_exposed",
    "write_all",
)

log = logging.getLogger(__name__)

PRIVATE = 0o600
GROUP_READABLE = 0o640
PRIVATE_DIR = 0o700
GROUP_DIR = 0o750


def make_dirs(path: str, mode: int) -> None:
    """Create the directory ``path`` with ``mode`` (its missing parents with the default); an existing
    one is left as it is."""
    if path and not os.path.isdir(path):
        os.makedirs(path, mode=mode, exist_ok=True)


def create_file(path: str, mode: int, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open ``path`` with ``flags``, creating it with ``mode`` if absent; the descriptor."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, mode)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (a pipe or socket may take part of it per call; os.write retries EINTR
    itself, PEP 475). OSError as os.write raises it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def warn_if_exposed(path: str, mode: int) -> bool:
    """One warning when the existing file ``path`` lets its group or others do more than ``mode``
    allows (say 0644 where 0600 is meant); True if it did."""
    try:
        actual = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # absent (created private later) or unreadable: nothing to say
        return False
    extra = actual & ~mode & 0o077
    if not extra:
        return False
    verb = "readable by" if extra & 0o044 else "writable by"
    who = " and ".join(name for name, bits in (("its group", 0o070), ("others", 0o007)) if extra & bits)
    log.warning(
        "%s is %s %s (mode %04o, expected %04o): chmod %o %s", path, verb, who, actual, mode, mode, path
    )
    return True
