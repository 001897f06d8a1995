"""engine.images, metadata and encoding: what of a photo's EXIF travels, and the files encode()
writes."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import structlog
from imaging import (
    BODY_SERIAL,
    DATE,
    GREEN,
    LENS_SERIAL,
    PHONE_XMP,
    RED,
    SWAPPED_PROFILE,
    assert_close,
    camera_exif,
    corner,
    exif_of,
    marked,
    phone_exif,
    pixel,
    quadrants,
    save,
    written_xmp,
    xmp_values,
)
from PIL import ExifTags, Image, ImageCms

from engine import images
from engine.images import Metadata, decode, encode
from engine.metadata import Credit

# --- metadata -----------------------------------------------------------------------------------


def exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """Camera-style EXIF: IFD0 (with orientation 6) chained to IFD1, which holds a thumbnail.

    Pillow writes no IFD1, so it is appended by hand to the TIFF block Pillow writes.
    """
    tiff = bytearray(camera_exif(orientation=6).tobytes()[6:])
    order = "<" if tiff[:2] == b"II" else ">"
    (count,) = struct.unpack_from(order + "H", tiff, 8)
    next_pointer = 8 + 2 + 12 * count
    tiff += bytes(len(tiff) % 2)
    ifd1 = len(tiff)
    struct.pack_into(order + "I", tiff, next_pointer, ifd1)
    thumbnail_at = ifd1 + 2 + 2 * 12 + 4
    tiff += struct.pack(order + "H", 2)
    tiff += struct.pack(order + "HHII", 0x0201, 4, 1, thumbnail_at)  # JPEGInterchangeFormat
    tiff += struct.pack(order + "HHII", 0x0202, 4, 1, len(thumbnail))  # ...Length
    tiff += struct.pack(order + "I", 0) + thumbnail
    return b"Exif\0\0" + bytes(tiff)


def test_exif_keeps_the_camera_and_date_but_not_the_thumbnail(tmp_path: Path) -> None:
    thumb = io.BytesIO()
    Image.new("RGB", (40, 30), GREEN).save(thumb, "JPEG")
    exif = exif_with_thumbnail(thumb.getvalue())
    assert exif_of(exif).get_ifd(ExifTags.IFD.IFD1)  # the source really has one
    path = save(marked(64, 32), tmp_path / "camera.jpg", exif=exif)

    decoded = decode(path)

    assert decoded.metadata.exif is not None
    kept = exif_of(decoded.metadata.exif)
    assert kept[ExifTags.Base.Make] == "TestCam"
    assert kept[ExifTags.Base.Orientation] == 1
    assert kept.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == DATE
    assert kept.get_ifd(ExifTags.IFD.IFD1) == {}
    assert thumb.getvalue()[:200] not in decoded.metadata.exif
    assert decoded.image.size == (32, 64)


def test_tiff_layout_tags_do_not_become_exif(tmp_path: Path) -> None:
    path = save(quadrants(), tmp_path / "scan.tif", exif=camera_exif())

    exif = decode(path).metadata.exif

    assert exif is not None
    kept = exif_of(exif)
    assert kept[ExifTags.Base.Model] == "Model 7"
    for tag in (ExifTags.Base.ImageWidth, ExifTags.Base.StripOffsets, ExifTags.Base.Compression):
        assert tag not in kept


def test_exif_forgets_the_old_size_and_colour_space(tmp_path: Path) -> None:
    exif = camera_exif()
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.ExifImageWidth] = 6000
    details[ExifTags.Base.ExifImageHeight] = 4000
    details[ExifTags.Base.ColorSpace] = 0xFFFF  # "uncalibrated", as Adobe RGB cameras write
    path = save(quadrants(), tmp_path / "wide.jpg", exif=exif, icc_profile=SWAPPED_PROFILE)

    kept = exif_of(decode(path).metadata.exif or b"").get_ifd(ExifTags.IFD.Exif)

    assert ExifTags.Base.ExifImageWidth not in kept
    assert ExifTags.Base.ExifImageHeight not in kept
    assert kept[ExifTags.Base.ColorSpace] == 1  # the pixels are sRGB now
    assert kept[ExifTags.Base.DateTimeOriginal] == DATE


def test_an_orientation_alone_is_no_exif_worth_keeping(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3
    path = save(marked(64, 32), tmp_path / "bare.jpg", quality=95, exif=exif)

    decoded = decode(path)

    assert decoded.metadata.exif is None
    assert_close(corner(decoded.image, "bottom-right"), RED, 12)


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp")])
def test_no_exif_gives_none(tmp_path: Path, fmt: str, suffix: str) -> None:
    assert decode(save(quadrants(), tmp_path / f"plain{suffix}", fmt)).metadata.exif is None


def test_corrupt_exif_is_dropped_and_the_photo_kept(tmp_path: Path) -> None:
    broken = b"Exif\0\0II*\0\x08\0\0\0\xff\xff\x01"  # an IFD claiming 65535 entries
    path = save(quadrants(), tmp_path / "odd.jpg", quality=95, exif=broken)

    with structlog.testing.capture_logs() as logs:
        decoded = decode(path)

    assert_close(pixel(decoded.image, 8, 8), RED, 12)
    assert decoded.metadata.exif is None
    # Pillow's warning about it is logged, not raised (pytest turns warnings into errors).
    assert any(entry["event"] == "image_decode_warning" for entry in logs)


# --- encode -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "tolerance"), [("JPEG", 12), ("PNG", 0), ("WEBP", 12)])
def test_encode_round_trips_pixels_exif_and_profile(
    tmp_path: Path, fmt: str, tolerance: int
) -> None:
    source = save(marked(64, 32), tmp_path / "camera.jpg", quality=95, exif=camera_exif(6))
    decoded = decode(source)

    data = encode(decoded.image, fmt, quality=95, metadata=decoded.metadata)
    again = decode(data)

    assert again.metadata.format == fmt
    # Upright once, not turned a second time by a stale orientation tag.
    assert again.image.size == decoded.image.size == (32, 64)
    assert_close(corner(again.image, "top-right"), RED, tolerance + 12)
    assert again.metadata.exif is not None
    kept = exif_of(again.metadata.exif)
    assert kept[ExifTags.Base.Orientation] == 1
    assert kept.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == DATE
    with Image.open(io.BytesIO(data)) as written:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(written.info["icc_profile"])).profile
        assert profile.profile_description == "sRGB built-in"
        assert profile.xcolor_space == "RGB "
        assert written.getexif()[ExifTags.Base.Orientation] == 1
    difference = np.abs(
        np.asarray(again.image, dtype=np.int16) - np.asarray(decoded.image, dtype=np.int16)
    )
    assert difference.max() <= tolerance + 40
    assert difference.mean() <= tolerance / 4 + 0.01


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "jpeg", "webp"])
def test_encode_without_metadata(fmt: str) -> None:
    data = encode(quadrants(), fmt)

    decoded = decode(data)

    assert decoded.metadata.format == fmt.upper()
    # Nothing of a photo's, only the software that made it (every output says so).
    assert decoded.metadata.exif is not None
    kept = exif_of(decoded.metadata.exif)
    assert set(kept) == {ExifTags.Base.Software, ExifTags.Base.Orientation}
    assert kept[ExifTags.Base.Software].startswith("stylewatch")
    assert_close(pixel(decoded.image, 8, 8), RED, 12)


def test_jpeg_quality_changes_the_size() -> None:
    noise = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))

    assert len(encode(noise, "JPEG", quality=30)) < len(encode(noise, "JPEG", quality=95))
    assert len(encode(noise, "WEBP", quality=30)) < len(encode(noise, "WEBP", quality=95))


@pytest.mark.parametrize(
    ("fmt", "quality", "mode", "match"),
    [
        ("GIF", 92, "RGB", "cannot encode"),
        ("TIFF", 92, "RGB", "cannot encode"),
        ("", 92, "RGB", "cannot encode"),
        ("JPEG", 0, "RGB", "quality"),
        ("JPEG", 101, "RGB", "quality"),
        ("PNG", -5, "RGB", "quality"),
        ("JPEG", True, "RGB", "quality"),
        ("JPEG", 92, "RGBA", "RGB"),
        ("PNG", 92, "L", "RGB"),
    ],
)
def test_encode_refuses_bad_arguments(fmt: str, quality: int, mode: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(Image.new(mode, (4, 4)), fmt, quality=quality)


def test_overlong_exif_is_dropped_rather_than_failing_the_jpeg(tmp_path: Path) -> None:
    exif = camera_exif()
    exif[ExifTags.Base.ImageDescription] = "x" * 70_000  # over a JPEG marker's 64 KiB
    path = save(quadrants(), tmp_path / "long.png", exif=exif)

    with structlog.testing.capture_logs() as logs:
        decoded = decode(path)
    data = encode(decoded.image, "JPEG", metadata=decoded.metadata)

    assert decoded.metadata.exif is None
    assert decode(data).image.size == (64, 48)
    assert [entry["event"] for entry in logs] == ["exif_dropped"]


def test_metadata_is_a_frozen_value() -> None:
    metadata = Metadata(format="JPEG", size=(3, 2), exif=None)
    with pytest.raises(AttributeError):
        metadata.size = (1, 1)  # type: ignore[misc]
    assert metadata == Metadata(format="JPEG", size=(3, 2), exif=None)


# --- what an output says: the disclosure, the credit, and the photo's metadata by policy ----------

STARRY = Credit("Vincent van Gogh", "The Starry Night", "1889", "public domain")
IPTC_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


def phone_photo(tmp_path: Path) -> Path:
    """A JPEG as a phone writes it: turned, with GPS, serial numbers and the library's XMP."""
    return save(marked(64, 32), tmp_path / "IMG_0001.jpg", quality=95, exif=phone_exif(6),
                xmp=PHONE_XMP)  # fmt: skip


def exif_written(data: bytes) -> Image.Exif:
    with Image.open(io.BytesIO(data)) as image:
        return image.getexif()


@pytest.mark.parametrize("fmt", images.ENCODE_FORMATS)
def test_by_default_location_and_serial_numbers_stay_behind(tmp_path: Path, fmt: str) -> None:
    decoded = decode(phone_photo(tmp_path))
    assert decoded.metadata.xmp is not None  # decode keeps it all; the policy is the output's

    data = encode(decoded.image, fmt, metadata=decoded.metadata, style="starry", credit=STARRY)

    exif = exif_written(data)
    assert ExifTags.IFD.GPSInfo not in exif
    assert exif.get_ifd(ExifTags.IFD.GPSInfo) == {}
    assert ExifTags.Base.CameraSerialNumber not in exif
    details = exif.get_ifd(ExifTags.IFD.Exif)
    assert ExifTags.Base.BodySerialNumber not in details
    assert ExifTags.Base.LensSerialNumber not in details
    assert BODY_SERIAL.encode() not in data
    assert LENS_SERIAL.encode() not in data
    # The rest of the camera's record stays.
    assert exif[ExifTags.Base.Make] == "TestCam"
    assert details[ExifTags.Base.DateTimeOriginal] == DATE
    assert details[ExifTags.Base.LensModel] == "Wide 26mm"
    xmp = written_xmp(data)
    assert xmp_values(xmp, "exif", "GPSLatitude") == []
    assert xmp_values(xmp, "exif", "GPSLongitude") == []
    assert xmp_values(xmp, "aux", "SerialNumber") == []
    assert xmp_values(xmp, "aux", "LensSerialNumber") == []
    assert b"52,31.208N" not in data
    # What the photo library added stays, and the stale orientation does not.
    assert xmp_values(xmp, "xmp", "Rating") == ["4"]
    assert xmp_values(xmp, "dc", "subject") == ["birthday", "cake"]
    assert xmp_values(xmp, "tiff", "Orientation") == []
    assert decode(data).image.size == (32, 64)


@pytest.mark.parametrize("fmt", images.ENCODE_FORMATS)
def test_every_output_says_it_was_made_by_an_algorithm(tmp_path: Path, fmt: str) -> None:
    decoded = decode(phone_photo(tmp_path))

    data = encode(decoded.image, fmt, metadata=decoded.metadata, style="starry", credit=STARRY)

    xmp = written_xmp(data)
    assert xmp_values(xmp, "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]
    (tool,) = xmp_values(xmp, "xmp", "CreatorTool")
    assert re.fullmatch(r"stylewatch( \S+)?", tool)
    assert exif_written(data)[ExifTags.Base.Software] == tool
    assert xmp_values(xmp, "stylewatch", "Style") == ["starry"]
    assert xmp_values(xmp, "stylewatch", "StyleArtist") == ["Vincent van Gogh"]
    assert xmp_values(xmp, "stylewatch", "StyleTitle") == ["The Starry Night"]
    assert xmp_values(xmp, "stylewatch", "StyleYear") == ["1889"]
    assert xmp_values(xmp, "stylewatch", "StyleLicence") == ["public domain"]
    credit = "Vincent van Gogh, The Starry Night (1889), public domain"
    assert xmp_values(xmp, "photoshop", "Credit") == [credit]
    assert xmp_values(xmp, "dc", "rights") == [f"Style after {credit}"]
    (description,) = xmp_values(xmp, "dc", "description")
    assert "starry" in description
    assert credit in description


def test_full_keeps_location_and_serial_numbers(tmp_path: Path) -> None:
    decoded = decode(phone_photo(tmp_path))

    data = encode(decoded.image, "JPEG", metadata=decoded.metadata, policy="full")

    exif = exif_written(data)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    assert gps[ExifTags.GPS.GPSLatitudeRef] == "N"
    assert tuple(float(v) for v in gps[ExifTags.GPS.GPSLatitude]) == (52.0, 31.0, 12.5)
    assert exif[ExifTags.Base.CameraSerialNumber] == BODY_SERIAL
    assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.LensSerialNumber] == LENS_SERIAL
    xmp = written_xmp(data)
    assert xmp_values(xmp, "exif", "GPSLatitude") == ["52,31.208N"]
    assert xmp_values(xmp, "aux", "SerialNumber") == [BODY_SERIAL]
    assert xmp_values(xmp, "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]


@pytest.mark.parametrize("fmt", images.ENCODE_FORMATS)
def test_minimal_keeps_nothing_but_the_disclosure(tmp_path: Path, fmt: str) -> None:
    decoded = decode(phone_photo(tmp_path))

    data = encode(
        decoded.image, fmt, metadata=decoded.metadata, style="starry", credit=STARRY,
        policy="minimal",
    )  # fmt: skip

    exif = exif_written(data)
    assert set(exif) - {ExifTags.Base.Orientation} == {ExifTags.Base.Software}
    assert b"TestCam" not in data
    xmp = written_xmp(data)
    assert xmp_values(xmp, "xmp", "Rating") == []
    assert xmp_values(xmp, "dc", "subject") == []
    assert xmp_values(xmp, "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]
    assert xmp_values(xmp, "stylewatch", "StyleArtist") == ["Vincent van Gogh"]


def test_the_photos_caption_and_rights_stay_theirs_without_a_credit() -> None:
    packet = PHONE_XMP.replace(
        b"<dc:subject>",
        b'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Grandma at 90</rdf:li>'
        b'</rdf:Alt></dc:description><dc:rights><rdf:Alt><rdf:li xml:lang="x-default">'
        b"(c) the family</rdf:li></rdf:Alt></dc:rights><dc:subject>",
    )
    metadata = Metadata(format="JPEG", size=(64, 48), exif=None, xmp=packet)

    xmp = written_xmp(encode(quadrants(), "PNG", metadata=metadata, style="starry"))

    assert xmp_values(xmp, "dc", "description") == ["Grandma at 90"]
    assert xmp_values(xmp, "dc", "rights") == ["(c) the family"]
    assert xmp_values(xmp, "stylewatch", "Style") == ["starry"]


def test_user_text_is_escaped_and_cleaned() -> None:
    odd = Credit(
        artist='A & B <script>"x"</script>',
        title="Ünïcödé 深い \x00\x1b title",
        year="c. 1900",
        licence="CC BY-SA 4.0 ]]> <!--",
    )

    data = encode(quadrants(), "JPEG", style="a<b>&c", credit=odd)

    xmp = written_xmp(data)  # well-formed, or this raises
    assert xmp_values(xmp, "stylewatch", "StyleArtist") == ['A & B <script>"x"</script>']
    assert xmp_values(xmp, "stylewatch", "StyleTitle") == ["Ünïcödé 深い  title"]
    assert xmp_values(xmp, "stylewatch", "StyleLicence") == ["CC BY-SA 4.0 ]]> <!--"]
    assert xmp_values(xmp, "stylewatch", "Style") == ["a<b>&c"]


@pytest.mark.parametrize(
    "packet",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
        b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed>",
        b"<plain>no rdf here</plain>",
    ],
    ids=["entities", "broken", "no-rdf"],
)
def test_unusable_xmp_is_dropped_and_the_photo_kept(tmp_path: Path, packet: bytes) -> None:
    path = save(quadrants(), tmp_path / "odd.jpg", quality=95, xmp=packet)

    with structlog.testing.capture_logs() as logs:
        decoded = decode(path)
    data = encode(decoded.image, "JPEG", metadata=decoded.metadata)

    assert decoded.metadata.xmp is None
    assert [entry["event"] for entry in logs] == ["xmp_dropped"]
    assert xmp_values(written_xmp(data), "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]


def test_an_oversized_xmp_packet_gives_way_to_the_disclosure() -> None:
    huge = PHONE_XMP.replace(b"<rdf:li>cake</rdf:li>", b"<rdf:li>cake</rdf:li>" * 5000)
    metadata = Metadata(format="JPEG", size=(64, 48), exif=None, xmp=huge)

    with structlog.testing.capture_logs() as logs:
        data = encode(quadrants(), "JPEG", metadata=metadata)

    xmp = written_xmp(data)
    assert xmp_values(xmp, "dc", "subject") == []
    assert xmp_values(xmp, "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]
    assert [entry["event"] for entry in logs] == ["xmp_dropped"]


def test_encode_refuses_an_unknown_policy() -> None:
    with pytest.raises(ValueError, match="private, full, minimal"):
        encode(quadrants(), "JPEG", policy="everything")


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
@pytest.mark.parametrize("fmt", images.ENCODE_FORMATS)
def test_exiftool_reads_the_disclosure_and_no_location(tmp_path: Path, fmt: str) -> None:
    decoded = decode(phone_photo(tmp_path))
    out = tmp_path / f"art.{fmt.lower()}"
    out.write_bytes(
        encode(decoded.image, fmt, metadata=decoded.metadata, style="starry", credit=STARRY)
    )

    result = subprocess.run(
        ["exiftool", "-json", "-G1", "-a", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (tags,) = json.loads(result.stdout)

    assert tags["XMP-iptcExt:DigitalSourceType"] == IPTC_AI
    assert tags["XMP-photoshop:Credit"].startswith("Vincent van Gogh")
    assert str(tags.get("IFD0:Software", "")).startswith("stylewatch")
    assert not [key for key in tags if "GPS" in key]
    assert not [key for key in tags if "Serial" in key]
