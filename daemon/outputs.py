"""Atomic output writes: nobody ever sees half a picture.

The bytes go to a hidden temporary file in the target folder (the same filesystem, so the final
step is a rename), are fsynced, and only then get the final name; the folder is fsynced last so
the new name survives a power cut. Temporary names start with "." and contain ".stylewatch-tmp":
watchers skip them and clean_stale_temporaries() finds those a kill -9 left behind.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

import structlog

__all__ = [
    "OUTPUT_MARKER",
    "TEMP_MARKER",
    "claim_output_folder",
    "clean_stale_temporaries",
    "is_temporary",
    "write_atomic",
]

log = structlog.get_logger()

TEMP_MARKER = ".stylewatch-tmp"
# In the output folder: the identity of the journal whose outputs these are. Hidden, so that an
# output folder inside the input folder never offers it as a photo.
OUTPUT_MARKER = ".stylewatch-journal"
# Keeps ".<name>.<token>.stylewatch-tmp" under the usual 255-byte limit on a file name.
_MAX_STEM_BYTES = 160
# Errors of filesystems that have no hard links (FAT and exFAT cards, some SMB shares).
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})
# Errors of filesystems that cannot fsync a folder; the file itself is already on disk.
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names one of our temporary files."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARKER in name


def write_atomic(path: Path, data: bytes, *, overwrite: bool = False, mode: int = 0o644) -> None:
    """Write `data` to `path` so that it appears complete or not at all.

    Missing parent folders are created. With overwrite=False an existing `path` is never
    replaced: FileExistsError is raised and the existing file is left as it was. The file is
    created with `mode` minus the process umask, like any other file.
    Any error (ENOSPC, EACCES, ...) removes the temporary file and propagates as OSError.
    """
    folder = path.parent
    created = _make_folders(folder)
    tmp = folder / _temporary_name(path.name)
    # O_EXCL: a fresh file of our own, never someone else's (or a symlink planted there).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, path, overwrite=overwrite)
    except BaseException:
        _remove_quietly(tmp)
        raise
    # New folders need their own entries synced in their parents, or a power cut loses them.
    for synced in [folder, *(c.parent for c in created)]:
        _fsync_folder(synced)


def claim_output_folder(root: Path, journal_id: str) -> str:
    """Mark `root` as written with the journal `journal_id`, unless it is marked already; returns
    the identity it carries now (another one means another journal made these outputs)."""
    marker = root / OUTPUT_MARKER
    try:
        write_atomic(marker, f"{journal_id}\n".encode(), overwrite=False)
    except FileExistsError:
        return marker.read_text(encoding="utf-8", errors="replace").strip()
    return journal_id


def clean_stale_temporaries(
    root: Path, *, min_age: float = 0.0, now: Callable[[], float] = time.time
) -> int:
    """Remove temporary files left under `root` by a process that died mid-write.

    Call it at start-up, before any write of this process begins. `min_age` (seconds, by
    mtime) spares temporaries that another live writer into the same tree may still be
    filling. Returns how many were removed; one that cannot be removed is logged and skipped.
    """
    removed = 0
    limit = now() - min_age
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not is_temporary(name):
                continue
            candidate = Path(folder) / name
            try:
                st = candidate.lstat()
                if not stat.S_ISREG(st.st_mode) or st.st_mtime > limit:
                    continue
                candidate.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("stale_temporary_not_removed", path=str(candidate), error=str(exc))
                continue
            removed += 1
    return removed


def _temporary_name(final_name: str) -> str:
    stem = final_name.encode()[:_MAX_STEM_BYTES].decode(errors="ignore")
    return f".{stem}.{secrets.token_hex(4)}{TEMP_MARKER}"


def _make_folders(folder: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, deepest first."""
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _publish(tmp: Path, final: Path, *, overwrite: bool) -> None:
    if overwrite:
        tmp.replace(final)
        return
    try:
        # link() fails with EEXIST instead of replacing: the check and the publish are one step.
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # No hard links here. Check, then rename: only this daemon writes its outputs (the
        # state folder's lock), so nothing can slip in between.
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from exc
        tmp.rename(final)
        return
    # Published: a leftover second name is only clutter for clean_stale_temporaries().
    _remove_quietly(tmp)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("output_folder_not_synced", folder=str(folder), error=str(exc))
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # The file is complete and visible; only its name's durability over a power cut is in
        # doubt, and writing it again would not change that. Say so and carry on.
        if exc.errno not in _NO_DIR_FSYNC:
            log.warning("output_folder_not_synced", folder=str(folder), error=str(exc))
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("temporary_not_removed", path=str(path), error=str(exc))


class OutputBlockedError(OSError):
    """Something that is not ours stands where an output or its folder must go."""


def publish(root: Path, claimed: str, data: bytes, *, ours: Callable[[], bool]) -> None:
    """write_atomic of a new output at `root / claimed`, telling an output written before a crash
    (`ours()`: the same content's, so the job is done) from a path that is blocked by something
    else (a file where a folder should be): the latter raises OutputBlockedError and is retried
    until the path is free."""
    target = root / claimed
    try:
        write_atomic(target, data, overwrite=False)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = _blocker(root, target)
        if blocker is not None:
            raise OutputBlockedError(
                f"cannot write {target}: {blocker} is in the way (a file where a folder "
                "should be); move it away and the photo is written at the next try"
            ) from exc
        if isinstance(exc, NotADirectoryError) or not ours():
            raise


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file, never through a symlink planted at its name."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
        return f.read()


def _blocker(root: Path, target: Path) -> Path | None:
    """The first path from the output folder down to `target`'s folder that exists and is not
    a folder, or `target` itself when it is neither a file nor absent (a folder, a socket)."""
    folders = [target.parent, *target.parent.parents]
    for folder in reversed(folders):
        if not folder.is_relative_to(root.parent):
            continue
        try:
            mode = folder.lstat().st_mode
        except FileNotFoundError:
            return None  # nothing in the way from here down: the folders can be made
        except OSError:
            continue
        if not stat.S_ISDIR(mode):
            return folder
    try:
        mode = target.lstat().st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else target
