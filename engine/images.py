"""Image I/O for the engine: any photo Pillow reads in, an upright 8-bit sRGB picture out.

`decode` turns a file (or its bytes) into an RGB picture plus the metadata worth keeping;
`encode` turns a picture back into a file of one of engine.formats' writable formats (JPEG, PNG,
WebP, AVIF), marked as made by an algorithm (engine.metadata). Nothing here knows of folders,
configuration or the daemon: a file that cannot be used raises `BadImageError` with a stable
`reason`, and a failing disk raises the plain `OSError` it gave, because retrying may help there.

This module is the front door; the work is done by subject beside it:

    engine.decoding         reading, sniffing, classifying failures, isolated decoders
    engine.srgb             pixel modes, transparency and colour profiles -> sRGB
    engine.source_metadata  the photo's EXIF and XMP as they travel on (Metadata)
    engine.encoding         writing a picture as a file (encode, format_for_suffix)
"""

from __future__ import annotations

from PIL import Image

from engine.decoding import DEFAULT_MAX_PIXELS, Decoded, decode
from engine.encoding import ENCODE_FORMATS, encode, format_for_suffix
from engine.source_metadata import Metadata

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENCODE_FORMATS",
    "Decoded",
    "Metadata",
    "decode",
    "encode",
    "format_for_suffix",
    "resize_long_edge",
]


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
