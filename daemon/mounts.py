"""Which filesystem a folder lives on, from /proc/self/mountinfo: the watcher polls on network
and FUSE filesystems, where inotify never hears of files written by another machine."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

# inotify only sees changes made through the local kernel: on these filesystems a file written by
# another machine produces no event, so the watcher polls instead.
NETWORK_FILESYSTEMS: frozenset[str] = frozenset(
    {"cifs", "smb3", "smbfs", "nfs", "nfs4", "9p", "fuse"}
)


def is_network_filesystem(fstype: str) -> bool:
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.")


def parse_mountinfo(text: str) -> list[tuple[PurePosixPath, str]]:
    """(mount point, fs type) pairs in mount order, from /proc/self/mountinfo or /proc/mounts."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" in fields[6:]:
            # mountinfo: id parent major:minor root MOUNT_POINT options [optional] - FSTYPE source
            separator = fields.index("-", 6)
            if separator + 1 >= len(fields):
                continue
            point, fstype = fields[4], fields[separator + 1]
        elif len(fields) >= 3:
            point, fstype = fields[1], fields[2]  # mounts: source MOUNT_POINT FSTYPE options 0 0
        else:
            continue
        mounts.append((PurePosixPath(_unescape_mount(point)), fstype))
    return mounts


def filesystem_type(path: Path | PurePosixPath, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem `path` lives on (`ext4`, `cifs`, `fuse.sshfs`), None if unknown.

    `mountinfo` is the text of /proc/self/mountinfo; by default it is read from /proc.
    """
    if mountinfo is None:
        mountinfo = _read_mounts()
        if mountinfo is None:
            return None
        path = Path(path).resolve()
    target = PurePosixPath(path)
    best: tuple[int, str] | None = None
    for point, fstype in parse_mountinfo(mountinfo):
        # The longest mount point wins; of equal ones the later, which hides the earlier.
        if target.is_relative_to(point) and (best is None or len(point.parts) >= best[0]):
            best = (len(point.parts), fstype)
    return None if best is None else best[1]


_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape_mount(text: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount points as octal escapes.
    return _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def _read_mounts() -> str | None:
    for source in ("/proc/self/mountinfo", "/proc/mounts"):
        try:
            return Path(source).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
    return None
