"""What of a photo's own metadata travels on to its outputs, read when it is decoded.

The EXIF comes upright (Orientation 1), without the thumbnail and the tags that describe the
source file's layout; the XMP packet only when it is well-formed. The output's policy (what of
location and serial numbers stays) is applied later, when encoding (engine.metadata).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import structlog
from PIL import ExifTags, Image, ImageOps

from engine import metadata as meta

log = structlog.get_logger()

# What reading or rewriting a damaged EXIF block raises; the photo is still good without it.
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, struct.error)

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

def orient(picture: Image.Image, label: str) -> None:
    """Turns the pixels upright as the EXIF (or XMP) Orientation says, in place."""
    try:
        ImageOps.exif_transpose(picture, in_place=True)
    except _EXIF_ERRORS as exc:
        log.warning("exif_orientation_ignored", source=label, error=str(exc))


def kept_exif(picture: Image.Image, label: str) -> bytes | None:
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


def kept_xmp(picture: Image.Image, label: str) -> bytes | None:
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
