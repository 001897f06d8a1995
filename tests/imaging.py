"""Test pictures for the engine.images tests, made here with Pillow (and, for colour profiles, a
small ICC writer), so that the expected pixel values are known exactly."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import ExifTags, Image, ImageCms

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

RED = (230, 20, 20)
GREEN = (20, 200, 40)
BLUE = (30, 40, 220)
YELLOW = (240, 220, 30)
WHITE = (255, 255, 255)
LOSSY = {"JPEG", "WEBP"}
DATE = "2024:05:06 07:08:09"


def save(image: Image.Image, path: Path, fmt: str | None = None, **params: object) -> Path:
    image.save(path, fmt, **params)
    return path


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """Red, green / blue, yellow quadrants: a picture whose every region has a known colour."""
    image = Image.new("RGB", (width, height))
    w, h = width // 2, height // 2
    for box, colour in (
        ((0, 0, w, h), RED),
        ((w, 0, width, h), GREEN),
        ((0, h, w, height), BLUE),
        ((w, h, width, height), YELLOW),
    ):
        image.paste(colour, box)
    return image


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> None:
    assert len(actual) == len(expected)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (
        f"{actual} is not within {tolerance} of {expected}"
    )


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def exif_of(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data)
    return exif


def camera_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.Model] = "Model 7"
    exif[ExifTags.Base.Orientation] = orientation
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = DATE
    return exif


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_file(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: Pillow cannot write 16-bit RGB, and a bomb needs only a header."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


# --- a minimal ICC v2 profile writer (header, tag table, XYZ / curve / desc / lut8 tags) -------

D50 = (0.9642, 1.0, 0.8249)
# sRGB's primaries adapted to D50, as the sRGB profile lists them.
SRGB_RED = (0.4361, 0.2225, 0.0139)
SRGB_GREEN = (0.3851, 0.7169, 0.0971)
SRGB_BLUE = (0.1431, 0.0606, 0.7141)


def s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def xyz_tag(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in xyz)


def gamma_tag(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))


def desc_tag(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(78)


def icc_profile(device: bytes, space: bytes, pcs: bytes, tags: dict[bytes, bytes]) -> bytes:
    table_end = 128 + 4 + 12 * len(tags)
    entries, body = b"", b""
    for signature, data in tags.items():
        padded = data + bytes(-len(data) % 4)
        entries += signature + struct.pack(">II", table_end + len(body), len(data))
        body += padded
    header = struct.pack(
        ">I4sI4s4s4s", table_end + len(body), b"none", 0x02100000, device, space, pcs
    )
    header += bytes(12) + b"acsp" + bytes(28) + b"".join(s15(v) for v in D50)
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + entries + body


def rgb_profile(
    name: str, red: tuple[float, float, float], blue: tuple[float, float, float]
) -> bytes:
    """A matrix/gamma-2.2 RGB display profile with the given red and blue primaries."""
    return icc_profile(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        {
            b"desc": desc_tag(name),
            b"wtpt": xyz_tag(D50),
            b"rXYZ": xyz_tag(red),
            b"gXYZ": xyz_tag(SRGB_GREEN),
            b"bXYZ": xyz_tag(blue),
            b"rTRC": gamma_tag(2.2),
            b"gTRC": gamma_tag(2.2),
            b"bTRC": gamma_tag(2.2),
        },
    )


def grey_profile(name: str, gamma: float) -> bytes:
    return icc_profile(
        b"mntr",
        b"GRAY",
        b"XYZ ",
        {b"desc": desc_tag(name), b"wtpt": xyz_tag(D50), b"kTRC": gamma_tag(gamma)},
    )


def cmyk_profile(name: str) -> bytes:
    """A printer profile whose cyan ink prints red: white paper stays white, K gives neutral black.

    The naive CMYK conversion turns cyan ink into cyan, so a red result proves the profile was
    applied. A2B0 is a lut8 over a 2x2x2x2 grid of Lab values.
    """
    identity = bytes(range(256))
    grid = b""
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lightness = 100 * (1 - k) * (1 - 0.4 * c) * (1 - 0.3 * m) * (1 - 0.1 * y)
                    grid += bytes([round(lightness * 255 / 100), 128 + 60 * c * (1 - k), 128])
    matrix = b"".join(s15(1.0 if i % 4 == 0 else 0.0) for i in range(9))
    lut = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + matrix + identity * 4 + grid + identity * 3
    return icc_profile(
        b"prtr", b"CMYK", b"Lab ", {b"desc": desc_tag(name), b"wtpt": xyz_tag(D50), b"A2B0": lut}
    )


SWAPPED_PROFILE = rgb_profile("Swapped primaries", red=SRGB_BLUE, blue=SRGB_RED)
SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# Per the EXIF specification: where the stored picture's first pixel (x=0, y=0) and the end of its
# first row (x=w-1, y=0) are shown, and whether width and height swap.
ORIENTATIONS = [
    (1, "top-left", "top-right", False),
    (2, "top-right", "top-left", False),
    (3, "bottom-right", "bottom-left", False),
    (4, "bottom-left", "bottom-right", False),
    (5, "top-left", "bottom-left", True),
    (6, "top-right", "bottom-right", True),
    (7, "bottom-right", "top-right", True),
    (8, "bottom-left", "top-left", True),
]


def corner(image: Image.Image, where: str) -> tuple[int, ...]:
    width, height = image.size
    x = 2 if where.endswith("left") else width - 3
    y = 2 if where.startswith("top") else height - 3
    return pixel(image, x, y)


def marked(width: int, height: int) -> Image.Image:
    """Grey, with a red block at the first pixel and a green one at the end of the first row."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste(RED, (0, 0, 8, 8))
    image.paste(GREEN, (width - 8, 0, width, 8))
    return image

