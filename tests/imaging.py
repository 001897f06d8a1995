"""Test pictures for the engine.images tests, made here with Pillow (and, for colour profiles, a
small ICC writer), so that the expected pixel values are known exactly."""

from __future__ import annotations

import importlib.util
import io
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
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


# --- HEIC and AVIF files, written by the libraries themselves ------------------------------------

HAS_HEIC_DECODER = importlib.util.find_spec("pi_heif") is not None
needs_heic_decoder = pytest.mark.skipif(
    not HAS_HEIC_DECODER, reason="the heic extra (pi-heif) is not installed"
)


def heic_encoder() -> Any:
    """pillow-heif, which can write HEIC (its wheels carry x265); the test skips without it.

    The decoder stylewatch uses (pi-heif) cannot write: these files are made by another build of
    the same binding, as a phone's would be by another encoder.
    """
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info()["HEIF"]:
        pytest.skip("this pillow-heif build has no HEVC encoder")
    return pillow_heif


def heic_bytes(image: Image.Image, *, quality: int = 95, **metadata: object) -> bytes:
    """`image` as a HEIC file; `exif`, `icc_profile` and `xmp` are written as given.

    An EXIF orientation becomes the file's own rotation (HEIF's `irot` box), as a phone writes it.
    """
    heif = heic_encoder().from_pillow(image)
    buffer = io.BytesIO()
    heif.save(buffer, quality=quality, **metadata)
    return buffer.getvalue()


def heic_10_bit(width: int, height: int, rgb10: tuple[int, int, int]) -> bytes:
    """A 10-bit HEIC of one colour, given in 10-bit levels (0..1023), losslessly coded."""
    pillow_heif = heic_encoder()
    pixels = np.zeros((height, width, 3), dtype=np.uint16)
    pixels[...] = [level << 6 for level in rgb10]  # pillow-heif takes 16-bit, high bits first
    heif = pillow_heif.from_bytes("RGB;16", (width, height), pixels.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, quality=-1)  # -1: lossless
    return buffer.getvalue()


def heic_burst(*colours: tuple[int, int, int], primary: int) -> bytes:
    """A HEIC with several pictures (a burst, a Live Photo's stills), each 16+8i pixels square."""
    pillow_heif = heic_encoder()
    heif = pillow_heif.from_pillow(Image.new("RGB", (16, 16), colours[0]))
    for index, colour in enumerate(colours[1:], start=1):
        size = 16 + 8 * index
        heif.add_from_pillow(Image.new("RGB", (size, size), colour))
    buffer = io.BytesIO()
    heif.save(buffer, quality=95, primary_index=primary)
    return buffer.getvalue()


def avif_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "AVIF", **params)
    return buffer.getvalue()


# --- a phone's metadata: where it was, which camera, and what the photo library added -------------

GPS = {
    ExifTags.GPS.GPSLatitudeRef: "N",
    ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.5),
    ExifTags.GPS.GPSLongitudeRef: "E",
    ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
}
BODY_SERIAL = "BODY-0042-SECRET"
LENS_SERIAL = "LENS-7777-SECRET"

PHONE_XMP = b"""<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:aux="http://ns.adobe.com/exif/1.0/aux/"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmp:Rating="4"
    exif:GPSLatitude="52,31.208N"
    aux:SerialNumber="BODY-0042-SECRET"
    tiff:Orientation="6">
   <exif:GPSLongitude>13,24.6E</exif:GPSLongitude>
   <aux:LensSerialNumber>LENS-7777-SECRET</aux:LensSerialNumber>
   <dc:subject><rdf:Bag><rdf:li>birthday</rdf:li><rdf:li>cake</rdf:li></rdf:Bag></dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


def phone_exif(orientation: int = 1) -> Image.Exif:
    """camera_exif() with a GPS position and the serial numbers of the body and lens."""
    exif = camera_exif(orientation)
    exif[ExifTags.IFD.GPSInfo] = GPS
    exif[ExifTags.Base.CameraSerialNumber] = BODY_SERIAL
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.BodySerialNumber] = BODY_SERIAL
    details[ExifTags.Base.LensSerialNumber] = LENS_SERIAL
    details[ExifTags.Base.LensModel] = "Wide 26mm"
    return exif


def written_xmp(data: bytes) -> ET.Element:
    """The XMP packet of an encoded file, as Pillow reads it back, parsed."""
    with Image.open(io.BytesIO(data)) as image:
        packet = image.info.get("xmp")
    assert packet, "the file carries no XMP"
    if isinstance(packet, str):
        packet = packet.encode()
    return ET.fromstring(packet.rstrip(b"\0 \n"))


def xmp_values(root: ET.Element, prefix: str, name: str) -> list[str]:
    """Every value of one XMP property, written as an element (its text or list items) or as an
    attribute of an rdf:Description."""
    uri = XMP_NS[prefix]
    tag = f"{{{uri}}}{name}"
    values = []
    for description in root.iter(f"{{{XMP_NS['rdf']}}}Description"):
        if tag in description.attrib:
            values.append(description.attrib[tag])
        for element in description.iter(tag):
            items = [li.text or "" for li in element.iter(f"{{{XMP_NS['rdf']}}}li")]
            values.extend(items or [element.text or ""])
    return values


XMP_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "stylewatch": "urn:stylewatch:xmp:1/",
}
