"""The staging folder on the shared output: where workers on other hosts leave artworks.

A worker (daemon/remote.py) writes each artwork here atomically (write_atomic: fsync of the file
and the folder) and reports its name; the coordinator (daemon/coordinator.py) writes it to its
claimed name the way every output is written, marks the job done, and deletes the staged file.
The folder is hidden, so the intake never takes it for photos, and on the output's filesystem.

A staged file's name says which job and which dispatched batch it belongs to, so the
coordinator can tell a file that a report may still need from one nobody will ask for (a
duplicate, a worker killed after writing it) and delete the latter.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path, PurePosixPath

STAGING_FOLDER = ".stylewatch-staging"
# <job>-<batch>-<token><suffix>; write_atomic's temporaries carry the same name inside theirs.
_NAME = re.compile(r"(?P<job>\d+)-(?P<batch>[0-9a-f]{8,64})-[0-9a-f]+")


def staging_folder(output: Path) -> Path:
    return output / STAGING_FOLDER


def staged_name(job: int, batch: str, output: str) -> str:
    """A fresh name for job's artwork from `batch` (unique per delivery: a batch taken over
    from a stalled worker is written again under another token)."""
    return f"{job}-{batch}-{secrets.token_hex(4)}{PurePosixPath(output).suffix}"


def owner(name: str) -> tuple[int, str] | None:
    """(job, batch) a staged file (or a temporary of one) belongs to; None for a stranger."""
    found = _NAME.search(name)
    return None if found is None else (int(found["job"]), found["batch"])


def read_staged(folder: Path, name: str) -> bytes:
    """The bytes of a staged file, by a plain name only and never through a symlink."""
    if name != PurePosixPath(name).name or owner(name) is None:
        raise ValueError(f"not a staged artwork's name: {name!r}")
    fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{folder / name} is not a regular file")
        return f.read()
