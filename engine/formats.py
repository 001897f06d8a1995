"""The photo formats stylewatch knows: one row each, read by decode, encode, the config and the CLI.

Adding a format is one row in FORMATS. `decode()` reads anything Pillow reads (these rows and the
rarer ones, GIF or BMP); the rows say which files the daemon watches by default, which formats an
output can take, under which extensions, with which encoder options, and which metadata each
container carries.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Format:
    name: str  # the config's name: `format: avif`
    pillow: str  # Pillow's format name: "AVIF"
    extensions: tuple[str, ...]  # lower case, no dot; the first is the one outputs get
    lossy: bool  # takes the quality setting
    writable: bool  # an output format
    # Encoder options besides quality and metadata, passed to Pillow's save().
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    exif: bool = False  # the container carries EXIF, XMP and an ICC profile as written here
    xmp: bool = False
    icc: bool = False
    # A Pillow plugin that must be installed to read it, as `module:register_function`, the
    # options that function takes, the package on PyPI and the distribution's extra that
    # brings it; None for what Pillow reads itself.
    plugin: str | None = None
    plugin_options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    package: str | None = None
    extra: str | None = None
    # Decoded in a process of its own (engine/decode_child.py): for plugins whose C libraries
    # have crashed the whole process on damaged files. Costs 0.3-0.5 s per photo.
    isolated: bool = False


FORMATS: tuple[Format, ...] = (
    Format(
        "jpeg",
        "JPEG",
        ("jpg", "jpeg"),
        lossy=True,
        writable=True,
        options=MappingProxyType({"optimize": True, "subsampling": "4:2:0"}),
        exif=True,
        xmp=True,
        icc=True,
    ),
    Format(
        "png",
        "PNG",
        ("png",),
        lossy=False,
        writable=True,
        # optimize tries every filter and compression setting: seconds per picture for a few
        # percent; the default level is the better trade for a daemon.
        options=MappingProxyType({"optimize": False}),
        exif=True,
        xmp=True,
        icc=True,
    ),
    Format(
        "webp",
        "WEBP",
        ("webp",),
        lossy=True,
        writable=True,
        options=MappingProxyType({"method": 4}),
        exif=True,
        xmp=True,
        icc=True,
    ),
    Format(
        "avif",
        "AVIF",
        ("avif",),
        lossy=True,
        writable=True,
        # libavif's default speed (6 of 0..10): about as fast as WebP's method 4 at these sizes.
        options=MappingProxyType({"speed": 6, "subsampling": "4:2:0"}),
        exif=True,
        xmp=True,
        icc=True,
    ),
    Format(
        "heif",
        "HEIF",
        ("heic", "heif", "hif"),
        lossy=True,
        writable=False,
        exif=True,
        xmp=True,
        icc=True,
        # The decoder-only build of the libheif binding (LGPL libheif and libde265, no
        # encoders): see the README on the choice. Thumbnails, depth maps and other auxiliary
        # pictures are never wanted: the primary image is the photo.
        plugin="pi_heif:register_heif_opener",
        plugin_options=MappingProxyType(
            {"thumbnails": False, "depth_images": False, "aux_images": False}
        ),
        package="pi-heif",
        extra="heic",
        # libheif crashed (SIGSEGV) on bit-flipped HEICs in the trust suite's fuzzing.
        isolated=True,
    ),
    Format("tiff", "TIFF", ("tif", "tiff"), lossy=False, writable=False, exif=True, icc=True),
)

WRITABLE: tuple[Format, ...] = tuple(f for f in FORMATS if f.writable)
# The files the daemon watches by default: every extension of every row.
EXTENSIONS: tuple[str, ...] = tuple(ext for f in FORMATS for ext in f.extensions)


def by_name(name: str) -> Format:
    """The row named `name` (the config's name, Pillow's, or an extension; any case).

    KeyError if none.
    """
    return _by_name()[name.lower()]


def by_extension(suffix: str) -> Format | None:
    """The row for a file suffix such as ".JPG" or "heic"; None for one no row claims."""
    return _by_extension().get(suffix.lower().removeprefix("."))


@functools.cache
def _by_name() -> dict[str, Format]:
    # Extensions first, so that a format's own names win over them ("jpg" still finds JPEG).
    table = dict(_by_extension())
    table.update({f.pillow.lower(): f for f in FORMATS})
    table.update({f.name: f for f in FORMATS})
    return table


@functools.cache
def _by_extension() -> dict[str, Format]:
    return {ext: f for f in FORMATS for ext in f.extensions}
