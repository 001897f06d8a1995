"""engine.images, metadata and encoding: what of a photo's EXIF travels, and the files encode()
writes."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import structlog
from imaging import (
    DATE,
    GREEN,
    RED,
    SWAPPED_PROFILE,
    assert_close,
    camera_exif,
    corner,
    exif_of,
    marked,
    pixel,
    quadrants,
    save,
)
from PIL import ExifTags, Image, ImageCms

from engine.images import Metadata, decode, encode

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


