"""Any photo Pillow reads -> an upright 8-bit sRGB picture and the metadata worth keeping.

A file that cannot be used raises `BadImageError` with a stable `reason`; a failing disk raises
the plain `OSError` it gave, because retrying may help there. Formats whose decoders have crashed
processes (engine.formats marks them `isolated`) are decoded by engine/decode_child.py in a
process of its own.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog
from PIL import Image, UnidentifiedImageError

from engine import formats
from engine.errors import BadImageError
from engine.source_metadata import Metadata, kept_exif, kept_xmp, orient
from engine.srgb import through_primaries, to_srgb

log = structlog.get_logger()

DEFAULT_MAX_PIXELS = 120_000_000  # bigger than any camera; a guard against decompression bombs
# A HEIC of 48 megapixels decodes in about a second; past this, its decoder is stuck on it.
ISOLATED_DECODE_SECONDS = 120.0
_CHILD = Path(__file__).with_name("decode_child.py")

# What Pillow's decoders raise for damaged data (besides OSError, handled apart).
_DECODER_ERRORS = (
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    # NotImplementedError, a subclass, for variants a plugin cannot read (DDS pixel formats, BLP
    # encodings): as unusable as damaged data, and found so by the trust suite's fuzzing.
    RuntimeError,
)
# First bytes of the common formats, to tell a damaged photo from a file that is no image at all.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# ISO base media file brands (the `ftyp` box) of HEIF stills and AVIF.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_ISOBMFF_CONTAINERS = frozenset({b"mif1", b"msf1", b"miaf"})


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # mode "RGB", 8 bits per channel, sRGB, upright
    metadata: Metadata

def decode(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Reads a photo (a path, or the file's bytes) into an upright 8-bit sRGB RGB picture.

    Raises BadImageError (reason empty, not_an_image, truncated, too_large, corrupt,
    unreadable, or unsupported_format: a format whose optional decoder is not installed) for a
    file that cannot be used, and OSError for other failures of the disk.
    The pixel count is checked against `max_pixels` from the header, before any pixel is
    decoded; Pillow's own bomb limit (twice Image.MAX_IMAGE_PIXELS) still applies above it.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    label = "image data" if isinstance(source, bytes) else os.fspath(source)
    # Warnings about odd files (corrupt EXIF, Pillow's bomb warning) are about the photo, not
    # the program: they are logged here rather than printed or, under pytest, raised.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _opened(source, label) as fp:
            picture = _read_pixels(fp, label, max_pixels)
            orient(picture, label)
            exif = kept_exif(picture, label)
            xmp = kept_xmp(picture, label)
        try:
            image = to_srgb(picture, picture.info.get("icc_profile"), label)
            if not picture.info.get("icc_profile"):
                image = through_primaries(image, picture.info.get("nclx_profile"), label)
        except (*_DECODER_ERRORS, OSError) as exc:
            raise BadImageError(
                f"{label}: cannot convert its {picture.mode} pixels to RGB ({exc})",
                reason="corrupt",
            ) from exc
    for warning in caught:
        if not issubclass(warning.category, Image.DecompressionBombWarning):
            log.warning("image_decode_warning", source=label, warning=str(warning.message))
    # A fresh info: the source's ICC profile and EXIF no longer describe these pixels, and
    # Pillow's PNG writer would copy them from here.
    image.info = {}
    metadata = Metadata(format=picture.format or "unknown", size=image.size, exif=exif, xmp=xmp)
    return Decoded(image=image, metadata=metadata)


@contextmanager
def _opened(source: str | os.PathLike[str] | bytes, label: str) -> Iterator[BinaryIO]:
    """The source as a readable binary file, refusing empty and unreadable ones."""
    if isinstance(source, bytes):
        if not source:
            raise BadImageError(f"{label}: empty (0 bytes)", reason="empty")
        yield io.BytesIO(source)
        return
    try:
        # Read lazily rather than all at once: a mis-named video is refused after its first
        # bytes, a bomb after its header.
        with Path(source).open("rb") as fp:
            if not fp.peek(1):
                raise BadImageError(f"{label}: empty file (0 bytes)", reason="empty")
            if not fp.seekable():
                # A pipe or a device: the format is sniffed before decoding, which needs to go
                # back to the start (Pillow itself reads such a stream into memory too).
                yield io.BytesIO(fp.read())
                return
            yield fp
    except PermissionError as exc:  # opening, or any read while decoding
        raise BadImageError(
            f"{label}: cannot read the file: {exc.strerror or exc}", reason="unreadable"
        ) from exc


def _read_pixels(fp: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """The first frame, fully decoded; every failure classified."""
    kind = _sniff(fp)
    fp.seek(0)
    row = _table_row(kind)
    if row is not None and row.isolated:
        missing = _missing_plugin(kind)
        if missing is not None:
            raise _not_installed(missing, kind, label)
        return _read_isolated(fp, row, label, max_pixels)
    try:
        picture = Image.open(fp, formats=_readable_formats())
    except UnidentifiedImageError as exc:
        kind = _sniff(fp)
        missing = _missing_plugin(kind)
        if missing is not None:
            raise _not_installed(missing, kind, label) from exc
        if kind is None:
            raise BadImageError(
                f"{label}: not an image (no known image format matches its contents)",
                reason="not_an_image",
            ) from exc
        raise BadImageError(
            f"{label}: starts like a {kind} file but its header is damaged or cut short",
            reason="corrupt",
        ) from exc
    except Image.DecompressionBombError as exc:
        # Pillow's own limit (twice Image.MAX_IMAGE_PIXELS), checked inside open().
        raise _classified(exc, fp, label, None) from exc
    except (*_DECODER_ERRORS, OSError) as exc:
        if _failed_read(exc):
            raise
        raise _classified(exc, fp, label, _sniff(fp)) from exc
    width, height = picture.size
    if width * height > max_pixels:
        raise BadImageError(
            f"{label}: too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.1f}",
            reason="too_large",
        )
    try:
        picture.load()
    except (*_DECODER_ERRORS, OSError) as exc:
        if _failed_read(exc):
            raise
        raise _classified(exc, fp, label, picture.format) from exc
    return picture


def _not_installed(row: formats.Format, kind: str | None, label: str) -> BadImageError:
    return BadImageError(
        f"{label}: a {kind} file, and its decoder is not installed: install it with "
        f"pip install 'stylewatch[{row.extra}]' (the {row.package} package)",
        reason="unsupported_format",
    )


def _read_isolated(fp: BinaryIO, row: formats.Format, label: str, max_pixels: int) -> Image.Image:
    """The picture, decoded by engine/decode_child.py in a process of its own."""
    assert row.plugin is not None  # only plugin rows are isolated
    data = fp.read()
    what = f"{row.pillow} data"
    command = [
        sys.executable,
        str(_CHILD),
        row.plugin,
        json.dumps(dict(row.plugin_options)),
        row.pillow,
        str(max_pixels),
    ]
    try:
        done = subprocess.run(
            command, input=data, capture_output=True, timeout=ISOLATED_DECODE_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise BadImageError(
            f"{label}: damaged {what} (its decoder ran for over {ISOLATED_DECODE_SECONDS:g} s)",
            reason="corrupt",
        ) from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise BadImageError(
            f"{label}: damaged {what} (its decoder crashed on it: {name})", reason="corrupt"
        )
    header, _, raw = done.stdout.partition(b"\n")
    try:
        reply = json.loads(header)
    except ValueError:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
        # Its process died without an answer (out of memory before it could say so): the
        # daemon records the photo as failed rather than let the error escape.
        raise BadImageError(
            f"{label}: its {row.pillow} decoder failed ({detail[0]})", reason="corrupt"
        ) from None
    if not reply["ok"]:
        if reply.get("reason") == "too_large":
            width, height = reply.get("size") or (0, 0)
            raise BadImageError(
                f"{label}: too large: {width}x{height} is over the limit of "
                f"{max_pixels / 1e6:.1f} megapixels ({reply.get('error') or 'from its header'})",
                reason="too_large",
            )
        error = str(reply.get("error") or reply.get("type"))
        if reply.get("type") == "EOFError" or re.search("truncat|end of file", error, re.I):
            raise BadImageError(
                f"{label}: truncated: the file ends in the middle of its {what} "
                "(an interrupted copy or download?)",
                reason="truncated",
            )
        raise BadImageError(f"{label}: damaged {what} ({error})", reason="corrupt")
    try:
        picture = Image.frombytes(reply["mode"], tuple(reply["size"]), raw)
    except (ValueError, TypeError) as exc:
        raise BadImageError(f"{label}: damaged {what} ({exc})", reason="corrupt") from exc
    picture.info = {key: base64.b64decode(value) for key, value in reply["info"].items()}
    if isinstance(reply.get("nclx"), dict):
        picture.info["nclx_profile"] = reply["nclx"]
    picture.format = row.pillow
    return picture


def _failed_read(exc: Exception) -> bool:
    """Whether the operating system failed a read: Pillow's own OSErrors carry no errno.

    Those stay OSErrors (a flaky disk or share is worth retrying); permission errors become
    "unreadable" in _opened().
    """
    return isinstance(exc, OSError) and exc.errno is not None


def _classified(exc: Exception, fp: BinaryIO, label: str, kind: str | None) -> BadImageError:
    """The BadImageError for a failure of Pillow's open() or load() on the file's data."""
    if isinstance(exc, Image.DecompressionBombError):  # its message carries the pixel count
        return BadImageError(f"{label}: too large to decode safely ({exc})", reason="too_large")
    what = f"{kind} data" if kind else "image data"
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower() or _riff_cut_short(fp):
        return BadImageError(
            f"{label}: truncated: the file ends in the middle of its {what} "
            "(an interrupted copy or download?)",
            reason="truncated",
        )
    detail = str(exc) or type(exc).__name__
    return BadImageError(f"{label}: damaged {what} ({detail})", reason="corrupt")


def _sniff(fp: BinaryIO) -> str | None:
    fp.seek(0)
    head = fp.read(64)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _isobmff_kind(head)
    return next((kind for magic, kind in _SIGNATURES if head.startswith(magic)), None)


def _isobmff_kind(head: bytes) -> str | None:
    """HEIF or AVIF, from the brands of an ISO base media file's `ftyp` box."""
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    compatible = {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    for brands in ({major}, compatible):
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
    return "HEIF" if major in _ISOBMFF_CONTAINERS else None


def _table_row(kind: str | None) -> formats.Format | None:
    if kind is None:
        return None
    try:
        return formats.by_name(kind)
    except KeyError:
        return None


def _missing_plugin(kind: str | None) -> formats.Format | None:
    """The table's row for `kind` when it needs a plugin that is not installed."""
    row = _table_row(kind)
    return None if row is None or _plugin_loaded(row) else row


def _riff_cut_short(fp: BinaryIO) -> bool:
    """Whether a WebP file is shorter than its RIFF header says (libwebp only says 'failed')."""
    fp.seek(0)
    head = fp.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return False
    declared = 8 + int.from_bytes(head[4:8], "little")
    return fp.seek(0, io.SEEK_END) < declared


def _plugin_loaded(row: formats.Format) -> bool:
    """Whether the row's optional Pillow plugin is installed; registered here, once, unless the
    format is decoded in a process of its own."""
    if row.plugin is None:
        return True
    options = () if row.isolated else tuple(row.plugin_options.items())
    return _load_plugin(row.plugin, options, register=not row.isolated)


@functools.cache
def _load_plugin(plugin: str, options: tuple[tuple[str, object], ...], *, register: bool) -> bool:
    module_name, _, function = plugin.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    if register:
        getattr(module, function)(**dict(options))
    return True


@functools.cache
def _readable_formats() -> tuple[str, ...]:
    for row in formats.FORMATS:
        _plugin_loaded(row)
    Image.init()
    # Pillow renders EPS by running Ghostscript on the file: not something to do to whatever
    # lands in a watched folder, and never a photo.
    return tuple(name for name in Image.OPEN if name != "EPS")
