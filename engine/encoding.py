"""A picture as a file of one of engine.formats' writable formats (JPEG, PNG, WebP, AVIF),
tagged sRGB and marked as made by an algorithm (engine.metadata)."""

from __future__ import annotations

import functools
import io

from PIL import Image, PngImagePlugin

from engine import formats
from engine import metadata as meta
from engine.source_metadata import Metadata
from engine.srgb import srgb_icc

ENCODE_FORMATS: tuple[str, ...] = tuple(f.pillow for f in formats.WRITABLE)

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
        options["icc_profile"] = srgb_icc()
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
