"""Image I/O for the engine: any photo Pillow reads in, an upright 8-bit sRGB picture out.

`decode` turns a file (or its bytes) into an RGB picture plus the metadata worth keeping;
`encode` turns a picture back into a file of one of engine.formats' writable formats (JPEG, PNG,
WebP, AVIF), marked as made by an algorithm (engine.metadata). Nothing here knows of folders,
configuration or the daemon: a file that cannot be used raises `BadImageError` with a stable
`reason`, and a failing disk raises the plain `OSError` it gave, because retrying may help there.
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

import numpy as np
import structlog
from PIL import ExifTags, Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from engine import formats
from engine import metadata as meta
from engine.errors import BadImageError

log = structlog.get_logger()

DEFAULT_MAX_PIXELS = 120_000_000  # bigger than any camera; a guard against decompression bombs
# A HEIC of 48 megapixels decodes in about a second; past this, its decoder is stuck on it.
ISOLATED_DECODE_SECONDS = 120.0
_CHILD = Path(__file__).with_name("decode_child.py")

ENCODE_FORMATS: tuple[str, ...] = tuple(f.pillow for f in formats.WRITABLE)

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
# What reading or rewriting a damaged EXIF block raises; the photo is still good without it.
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, struct.error)

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

_TAG = ExifTags.Base
# IFD0 tags that describe the source file's layout or colours, which an encoded result does not
# share: copied into the output they would describe pixels that are not there. A TIFF's EXIF is
# its own tag directory, so these are common there.
_STALE_IFD0_TAGS = frozenset(
    {
        _TAG.NewSubfileType,
        _TAG.SubfileType,
        _TAG.ImageWidth,
        _TAG.ImageLength,
        _TAG.BitsPerSample,
        _TAG.Compression,
        _TAG.PhotometricInterpretation,
        _TAG.FillOrder,
        _TAG.StripOffsets,
        _TAG.SamplesPerPixel,
        _TAG.RowsPerStrip,
        _TAG.StripByteCounts,
        _TAG.MinSampleValue,
        _TAG.MaxSampleValue,
        _TAG.PlanarConfiguration,
        _TAG.TransferFunction,
        _TAG.Predictor,
        _TAG.WhitePoint,
        _TAG.PrimaryChromaticities,
        _TAG.ColorMap,
        _TAG.TileWidth,
        _TAG.TileLength,
        _TAG.TileOffsets,
        _TAG.TileByteCounts,
        _TAG.ExtraSamples,
        _TAG.SampleFormat,
        _TAG.JPEGTables,
        _TAG.JpegIFOffset,  # the embedded thumbnail
        _TAG.JpegIFByteCount,
        _TAG.YCbCrCoefficients,
        _TAG.YCbCrSubSampling,
        _TAG.ReferenceBlackWhite,
        _TAG.XMLPacket,
        _TAG.IPTCNAA,
        _TAG.ImageResources,  # Photoshop's private block
        _TAG.InterColorProfile,  # the output carries its own (sRGB) profile
    }
)
# A JPEG APP1 segment holds at most this many bytes of EXIF (Pillow refuses more).
_MAX_EXIF_BYTES = 65533

_WHITE = 255  # transparent areas become white: what viewers show for a transparent PNG on paper


@dataclass(frozen=True)
class Metadata:
    """What of the source is worth carrying into an encoded result."""

    format: str  # Pillow's format of the source, e.g. "JPEG"
    size: tuple[int, int]  # the source's (width, height) after EXIF orientation
    # The source's EXIF with Orientation reset to 1 (the pixels are upright now), without the
    # thumbnail and the tags describing the source's layout; None when it had none worth keeping.
    # Location and serial numbers are still in it: encode() applies the output's policy.
    exif: bytes | None
    xmp: bytes | None = None  # the source's XMP packet, well-formed, as it was


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
            _orient(picture, label)
            exif = _kept_exif(picture, label)
            xmp = _kept_xmp(picture, label)
        try:
            image = _to_srgb(picture, picture.info.get("icc_profile"), label)
            if not picture.info.get("icc_profile"):
                image = _through_primaries(image, picture.info.get("nclx_profile"), label)
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


def resize_long_edge(image: Image.Image, long_edge: int) -> Image.Image:
    """The picture scaled (Lanczos) so that its longer edge is `long_edge`, aspect kept."""
    if long_edge < 1:
        raise ValueError(f"long_edge must be at least 1, got {long_edge}")
    width, height = image.size
    scale = long_edge / max(width, height)
    size = (
        long_edge if width >= height else max(1, round(width * scale)),
        long_edge if height > width else max(1, round(height * scale)),
    )
    # reducing_gap first shrinks by whole factors with a box filter: a 24-megapixel photo
    # brought to 512 pixels costs a fraction of a pure Lanczos pass, with no visible difference.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def format_for_suffix(suffix: str) -> str:
    """The encode() format for a file suffix such as ".jpg" (any case)."""
    row = formats.by_extension(suffix) if suffix else None
    if row is None or not row.writable:
        known = ", ".join(f".{ext}" for f in formats.WRITABLE for ext in f.extensions)
        raise ValueError(f"cannot write {suffix!r} files; use one of {known}")
    return row.pillow


def encode(
    image: Image.Image,
    format: str,
    *,
    quality: int = 92,
    metadata: Metadata | None = None,
    style: str | None = None,
    credit: meta.Credit | None = None,
    policy: str = "private",
) -> bytes:
    """The RGB picture as a file of a writable format (engine.formats), tagged sRGB.

    `quality` (1..100) applies to the lossy formats. The file carries the photo's EXIF and XMP
    as `policy` allows (engine.metadata: private, the default, drops location and serial
    numbers; full keeps them; minimal drops all), and always the disclosure: made by an
    algorithm, by this software, in `style`, after the painting `credit` names.
    """
    row = formats.by_name(format) if format and format.lower() in _writable_names() else None
    if row is None:
        raise ValueError(f"cannot encode {format!r}; formats are {', '.join(ENCODE_FORMATS)}")
    if isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality!r}")
    if image.mode != "RGB":
        raise ValueError(f"encode() takes RGB pictures, got mode {image.mode}")
    meta.check_policy(policy)
    software = meta.software()
    options: dict[str, object] = dict(row.options)
    if row.lossy:
        options["quality"] = quality
    if row.icc:
        options["icc_profile"] = _srgb_icc()
    if row.exif:
        options["exif"] = meta.output_exif(
            metadata.exif if metadata else None, policy, software=software
        )
    if row.xmp:
        xmp = meta.output_xmp(
            metadata.xmp if metadata else None,
            policy,
            software=software,
            style=style,
            credit=credit,
        )
        if row.pillow == "PNG":
            # Pillow writes PNG text chunks, not an xmp= option; XMP's own rule: an
            # uncompressed iTXt chunk under this keyword.
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"), zip=False)
            options["pnginfo"] = info
        else:
            options["xmp"] = xmp
    buffer = io.BytesIO()
    image.save(buffer, row.pillow, **options)
    return buffer.getvalue()


@functools.cache
def _writable_names() -> frozenset[str]:
    names = {f.name for f in formats.WRITABLE} | {f.pillow.lower() for f in formats.WRITABLE}
    return frozenset(names | {ext for f in formats.WRITABLE for ext in f.extensions})


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


def _orient(picture: Image.Image, label: str) -> None:
    """Turns the pixels upright as the EXIF (or XMP) Orientation says, in place."""
    try:
        ImageOps.exif_transpose(picture, in_place=True)
    except _EXIF_ERRORS as exc:
        log.warning("exif_orientation_ignored", source=label, error=str(exc))


def _kept_exif(picture: Image.Image, label: str) -> bytes | None:
    """The picture's EXIF as it should travel to an output: upright, no thumbnail, no layout."""
    try:
        exif = picture.getexif()
        for tag in _STALE_IFD0_TAGS & set(exif):
            del exif[tag]
        exif.pop(_TAG.Orientation, None)
        if not exif:
            return None
        exif[_TAG.Orientation] = 1
        # get_ifd() would add an empty Exif directory to a block that has none.
        details = exif.get_ifd(ExifTags.IFD.Exif) if ExifTags.IFD.Exif in exif else {}
        # The size the camera wrote: wrong once the picture is resized.
        details.pop(_TAG.ExifImageWidth, None)
        details.pop(_TAG.ExifImageHeight, None)
        if _TAG.ColorSpace in details:
            details[_TAG.ColorSpace] = 1  # sRGB, which decode() makes every picture
        # Exif.tobytes() writes IFD0 and its sub-directories but not IFD1, the thumbnail.
        data = exif.tobytes()
        if len(data) > _MAX_EXIF_BYTES and details.pop(_TAG.MakerNote, None) is not None:
            # Camera maker notes are the usual bulk; date, camera and lens fit without them.
            data = exif.tobytes()
    except _EXIF_ERRORS as exc:
        log.warning("exif_dropped", source=label, error=str(exc))
        return None
    if len(data) > _MAX_EXIF_BYTES:
        log.warning("exif_dropped", source=label, error=f"{len(data)} bytes is too long")
        return None
    return data


def _kept_xmp(picture: Image.Image, label: str) -> bytes | None:
    """The picture's XMP packet, if it is well-formed; policy is applied when encoding."""
    raw = picture.info.get("xmp")
    if isinstance(raw, tuple) and len(raw) == 1:  # TIFF's tag, as some writers store it
        raw = raw[0]
    if not isinstance(raw, bytes | str):
        return None
    try:
        return meta.source_xmp(raw)
    except ValueError as exc:
        log.warning("xmp_dropped", source=label, error=str(exc))
        return None


def _to_srgb(picture: Image.Image, icc: bytes | None, label: str) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB in sRGB, transparency composited onto white."""
    image = picture
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        image = _scaled_16bit(image)
    elif mode == "F":
        image = _scaled_float(image)
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("La", "RGBa"):
        image = image.convert(mode.upper())  # un-premultiply before compositing
    elif mode in ("L", "RGB") and image.has_transparency_data:
        image = image.convert("LA" if mode == "L" else "RGBA")  # a tRNS colour key
    elif mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "LAB"):
        image = image.convert("RGB")  # YCbCr, HSV, RGBX...
    if image.mode in ("LA", "RGBA"):
        image = _on_white(image)
    if image.mode == "LAB":
        # Pillow's LAB mode is CIE L*a*b*, whatever profile travels with it.
        lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
        return _transformed(image, lab, label) or image.convert("RGB")
    if icc:
        converted = _through_profile(image, icc, label)
        if converted is not None:
            return converted
    return image if image.mode == "RGB" else image.convert("RGB")


# sRGB's (BT.709's) primaries and D65 white, as CIE xy.
_SRGB_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290))


def _through_primaries(image: Image.Image, nclx: object, label: str) -> Image.Image:
    """RGB described by an nclx colour box (HEIF, AVIF) instead of an ICC profile -> sRGB.

    Phones write Display P3 this way: other primaries, sRGB's curve and white. Those are
    converted; sRGB or unspecified primaries are left as they are, and what this does not handle
    (HDR curves, another white) is logged and read as sRGB.
    """
    if image.mode != "RGB" or not isinstance(nclx, dict):
        return image
    primaries, transfer = nclx.get("color_primaries"), nclx.get("transfer_characteristics")
    if primaries in (1, 2):  # BT.709 (sRGB's), unspecified
        return image
    try:
        xy = tuple(
            (float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
            for c in ("red", "green", "blue", "white")
        )
    except (KeyError, TypeError, ValueError):
        xy = ()
    if transfer not in (2, 13) or len(xy) != 4 or max(
        abs(a - b) for a, b in zip(xy[3], _SRGB_XY[3], strict=True)
    ) > 0.002:
        log.warning(
            "color_description_ignored", source=label, primaries=primaries, transfer=transfer
        )
        return image
    try:
        matrix = np.linalg.inv(_rgb_to_xyz(_SRGB_XY)) @ _rgb_to_xyz(xy)
    except np.linalg.LinAlgError:
        log.warning("color_description_ignored", source=label, primaries=primaries)
        return image
    levels = np.arange(256, dtype=np.float64) / 255
    decode_curve = np.where(levels <= 0.04045, levels / 12.92, ((levels + 0.055) / 1.055) ** 2.4)
    linear = decode_curve.astype(np.float32)[np.asarray(image)] @ matrix.T.astype(np.float32)
    linear = np.clip(linear, 0.0, 1.0)
    encoded = np.where(
        linear <= 0.0031308, linear * 12.92, 1.055 * np.power(linear, 1 / 2.4) - 0.055
    )
    return Image.fromarray(np.rint(encoded * 255).astype(np.uint8), "RGB")


def _rgb_to_xyz(xy: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The RGB -> XYZ matrix of primaries and a white point given as CIE xy."""
    columns = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in xy[:3]]).T
    wx, wy = xy[3]
    white = np.array([wx / wy, 1.0, (1 - wx - wy) / wy])
    return columns * np.linalg.solve(columns, white)


def _scaled_16bit(image: Image.Image) -> Image.Image:
    """16-bit grey scaled to 8 bits: Pillow's convert("L") clips everything above 255 to white."""
    values = np.asarray(image).astype(np.int64)
    # Mode "I" carries no range; 16-bit sources are what it holds in practice.
    levels = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
    grey = Image.fromarray(levels)
    key = image.info.get("transparency")
    if isinstance(key, int):  # a tRNS grey level marks the transparent pixels
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha)))
    return grey


def _scaled_float(image: Image.Image) -> Image.Image:
    """Float grey to 8 bits: values in [0, 1] are read as fractions, others as 0..255 levels."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0 and values.max() <= 1:
        values = values * 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _on_white(image: Image.Image) -> Image.Image:
    colour = image.mode[:-1]  # "LA" -> "L", "RGBA" -> "RGB"
    background = Image.new(colour, image.size, (_WHITE,) * len(colour))
    background.paste(image.convert(colour), mask=image.getchannel("A"))
    return background


def _through_profile(image: Image.Image, icc: bytes, label: str) -> Image.Image | None:
    """The picture converted from its embedded profile to sRGB; None to fall back to Pillow's
    plain conversion (a broken profile, or one that does not fit the pixels)."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError) as exc:
        log.warning("icc_profile_ignored", source=label, error=str(exc))
        return None
    space = profile.profile.xcolor_space.strip()
    if space != {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}.get(image.mode):
        log.warning("icc_profile_ignored", source=label, error=f"a {space} profile on {image.mode}")
        return None
    if image.mode == "RGB" and "sRGB" in (profile.profile.profile_description or ""):
        return image  # already sRGB: spare the transform
    return _transformed(image, profile, label)


def _transformed(
    image: Image.Image, profile: ImageCms.ImageCmsProfile, label: str
) -> Image.Image | None:
    try:
        # Perceptual intent: out-of-gamut colours (Display P3, CMYK) are compressed smoothly
        # rather than clipped.
        return ImageCms.profileToProfile(image, profile, _srgb_profile(), outputMode="RGB")
    except (OSError, ValueError, ImageCms.PyCMSError) as exc:
        log.warning("icc_profile_ignored", source=label, error=str(exc))
        return None


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.cache
def _srgb_icc() -> bytes:
    data = bytearray(_srgb_profile().tobytes())
    # LittleCMS stamps the current time into the header (bytes 24..35); a fixed date makes
    # encode() deterministic, the same picture giving the same file in every run. The profile
    # carries no MD5 ID that the change would invalidate.
    data[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
    return bytes(data)
