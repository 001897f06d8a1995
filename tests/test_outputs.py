"""Atomic output writes: complete or absent, never half; existing outputs never clobbered."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from daemon import outputs
from daemon.outputs import TEMP_MARKER, clean_stale_temporaries, is_temporary, write_atomic


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_writes_the_file_and_its_folders(tmp_path: Path) -> None:
    target = tmp_path / "out" / "2024" / "day 1" / "photo.jpg"
    write_atomic(target, b"\xff\xd8 pixels")
    assert target.read_bytes() == b"\xff\xd8 pixels"
    assert listing(tmp_path) == ["out/2024/day 1/photo.jpg"]  # no temporary left behind


def test_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.jpg", b"x")
        write_atomic(tmp_path / "b.jpg", b"x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.jpg").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.jpg").stat().st_mode) == 0o600


def test_existing_output_is_not_clobbered(tmp_path: Path) -> None:
    target = tmp_path / "photo.jpg"
    target.write_bytes(b"earlier artwork")
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new artwork")
    assert target.read_bytes() == b"earlier artwork"
    assert listing(tmp_path) == ["photo.jpg"]


def test_overwrite_replaces(tmp_path: Path) -> None:
    target = tmp_path / "photo.jpg"
    target.write_bytes(b"old")
    write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert listing(tmp_path) == ["photo.jpg"]


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_failure_mid_write_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    real_write = os.write
    seen: list[Path] = []

    def half_then_fail(fd: int, data: bytes) -> int:
        # Half the bytes really land in the temporary file before the failure.
        seen.extend(p for p in tmp_path.iterdir() if is_temporary(p))
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.EIO, "Input/output error")

    def failing_fsync(fd: int) -> None:
        seen.extend(p for p in tmp_path.iterdir() if is_temporary(p))
        raise OSError(errno.EIO, "Input/output error")

    if call == "write":
        monkeypatch.setattr(outputs.os, "write", half_then_fail)
    else:
        monkeypatch.setattr(outputs.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(tmp_path / "photo.jpg", b"0123456789" * 1000)
    assert seen  # the write really went through a temporary file...
    assert listing(tmp_path) == []  # ...which is gone, and no final file appeared


def test_disk_full_propagates_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "write", disk_full)
    existing = tmp_path / "photo.jpg"
    existing.write_bytes(b"kept")
    with pytest.raises(OSError, match="No space left") as info:
        write_atomic(existing, b"new", overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert existing.read_bytes() == b"kept"
    assert listing(tmp_path) == ["photo.jpg"]


def test_partial_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may write fewer bytes than asked (pipes, signals, some network filesystems)."""
    real_write = os.write
    monkeypatch.setattr(outputs.os, "write", lambda fd, data: real_write(fd, bytes(data)[:7]))
    payload = bytes(range(256)) * 10
    write_atomic(tmp_path / "photo.png", payload)
    assert (tmp_path / "photo.png").read_bytes() == payload


def test_without_hard_links_existing_output_is_still_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAT and exFAT cards and some shares have no hard links; the fallback still never clobbers."""

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outputs.os, "link", no_links)
    fresh = tmp_path / "fresh.jpg"
    write_atomic(fresh, b"fresh")
    assert fresh.read_bytes() == b"fresh"
    existing = tmp_path / "existing.jpg"
    existing.write_bytes(b"earlier")
    with pytest.raises(FileExistsError):
        write_atomic(existing, b"new")
    assert existing.read_bytes() == b"earlier"
    assert listing(tmp_path) == ["existing.jpg", "fresh.jpg"]


def test_long_names_fit_the_temporary_name(tmp_path: Path) -> None:
    target = tmp_path / ("é" * 120 + ".jpg")  # 244 bytes: the longest names cameras never make
    write_atomic(target, b"x")
    assert target.read_bytes() == b"x"


def test_temporary_names_are_recognised() -> None:
    assert is_temporary(f".photo.jpg.1a2b3c4d{TEMP_MARKER}")
    assert is_temporary(Path("out") / f".x{TEMP_MARKER}")
    assert not is_temporary("photo.jpg")
    assert not is_temporary(f"visible{TEMP_MARKER}")  # ours are always hidden
    assert not is_temporary(".hidden.jpg")


def test_clean_stale_temporaries(tmp_path: Path) -> None:
    keep = [tmp_path / "a.jpg", tmp_path / "sub" / ".hidden.jpg", tmp_path / "sub" / "b.jpg"]
    stale = [tmp_path / f".a.jpg.00000000{TEMP_MARKER}", tmp_path / "sub" / f".b{TEMP_MARKER}"]
    for path in keep + stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert clean_stale_temporaries(tmp_path) == 2
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in stale)
    assert clean_stale_temporaries(tmp_path) == 0


def test_clean_stale_temporaries_spares_young_ones(tmp_path: Path) -> None:
    old = tmp_path / f".old{TEMP_MARKER}"
    young = tmp_path / f".young{TEMP_MARKER}"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    os.utime(old, (1000.0, 1000.0))
    os.utime(young, (5000.0, 5000.0))
    assert clean_stale_temporaries(tmp_path, min_age=60, now=lambda: 5030.0) == 1
    assert not old.exists()
    assert young.exists()


def test_clean_never_follows_or_removes_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / f".precious{TEMP_MARKER}"
    victim.write_bytes(b"not ours")
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / f".link{TEMP_MARKER}").symlink_to(victim)
    assert clean_stale_temporaries(root) == 0
    assert victim.read_bytes() == b"not ours"
