"""engine.formats and the formats it lists: the table, suffixes, AVIF and HEIC in and out."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from imaging import (
    BLUE,
    GREEN,
    PHONE_XMP,
    RED,
    SWAPPED_PROFILE,
    YELLOW,
    assert_close,
    avif_bytes,
    camera_exif,
    corner,
    exif_of,
    heic_10_bit,
    heic_burst,
    heic_bytes,
    heic_encoder,
    marked,
    needs_heic_decoder,
    pixel,
    quadrants,
    written_xmp,
    xmp_values,
)
from PIL import ExifTags, Image

from engine import decoding, formats, images
from engine.errors import BadImageError
from engine.images import decode, encode, format_for_suffix

# --- small helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fmt"),
    [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".JPG", "JPEG"), (".png", "PNG"), (".webp", "WEBP")],
)
def test_format_for_suffix(suffix: str, fmt: str) -> None:
    assert format_for_suffix(suffix) == fmt


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".heic", "", ".jpg.bak"])
def test_format_for_unknown_suffix(suffix: str) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        format_for_suffix(suffix)


# --- the table ----------------------------------------------------------------------------------


def test_the_table_is_consistent() -> None:
    names = [f.name for f in formats.FORMATS]
    extensions = [ext for f in formats.FORMATS for ext in f.extensions]
    assert len(set(names)) == len(names)
    assert len(set(extensions)) == len(extensions)  # one format per extension
    assert images.ENCODE_FORMATS == ("JPEG", "PNG", "WEBP", "AVIF")
    for row in formats.FORMATS:
        assert formats.by_name(row.name) is row
        assert formats.by_name(row.pillow) is row
        for ext in row.extensions:
            assert formats.by_extension(f".{ext.upper()}") is row
        # A plugin row says what to install in the message a user gets without it.
        assert (row.plugin is None) == (row.extra is None) == (row.package is None)


@pytest.mark.parametrize("row", formats.WRITABLE, ids=lambda row: row.name)
def test_every_writable_format_round_trips(row: formats.Format) -> None:
    data = encode(quadrants(), row.name, quality=95)

    decoded = decode(data)

    assert decoded.metadata.format == row.pillow
    assert format_for_suffix("." + row.extensions[0]) == row.pillow
    tolerance = 14 if row.lossy else 0
    for (x, y), colour in (((8, 8), RED), ((56, 8), GREEN), ((8, 40), BLUE), ((56, 40), YELLOW)):
        assert_close(pixel(decoded.image, x, y), colour, tolerance)


# --- AVIF ---------------------------------------------------------------------------------------


def test_avif_in_with_its_orientation_and_profile() -> None:
    data = avif_bytes(marked(64, 32), quality=95, exif=camera_exif(6).tobytes())

    decoded = decode(data)

    assert decoded.metadata.format == "AVIF"
    assert decoded.image.size == (32, 64)
    assert_close(corner(decoded.image, "top-right"), RED, 16)
    assert_close(corner(decoded.image, "bottom-right"), GREEN, 16)
    assert decoded.metadata.exif is not None
    assert exif_of(decoded.metadata.exif)[ExifTags.Base.Make] == "TestCam"


def test_avif_in_another_colour_space_is_converted_to_srgb() -> None:
    data = avif_bytes(Image.new("RGB", (16, 16), (255, 0, 0)), quality=100,
                      icc_profile=SWAPPED_PROFILE)  # fmt: skip

    assert_close(pixel(decode(data).image, 8, 8), (0, 0, 255), 10)


def test_avif_quality_changes_the_size() -> None:
    noise = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))

    assert len(encode(noise, "AVIF", quality=30)) < len(encode(noise, "AVIF", quality=95))


# --- HEIC ---------------------------------------------------------------------------------------


@needs_heic_decoder
def test_heic_with_orientation_and_profile_decodes_upright_in_srgb() -> None:
    # The phone's picture: red and blue swapped by its profile, turned by its orientation.
    stored = marked(64, 32)
    stored.paste((0, 0, 255), (24, 12, 40, 20))  # sRGB red once through the profile
    exif = camera_exif(6)
    data = heic_bytes(stored, exif=exif.tobytes(), icc_profile=SWAPPED_PROFILE)

    decoded = decode(data)

    assert decoded.metadata.format == "HEIF"
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == decoded.metadata.size == (32, 64)
    # marked(): red at the first pixel, green at the row's end; the profile swaps red and blue.
    assert_close(corner(decoded.image, "top-right"), (20, 20, 230), 24)
    assert_close(corner(decoded.image, "bottom-right"), GREEN[::-1], 24)
    assert_close(pixel(decoded.image, 16, 32), (255, 0, 0), 24)
    assert decoded.metadata.exif is not None
    kept = exif_of(decoded.metadata.exif)
    assert kept[ExifTags.Base.Make] == "TestCam"
    assert kept[ExifTags.Base.Orientation] == 1


@needs_heic_decoder
def test_ten_bit_heic_becomes_eight_bit_by_scaling() -> None:
    data = heic_10_bit(32, 32, (1023, 512, 64))

    decoded = decode(data)

    assert decoded.image.mode == "RGB"
    # 10 bits to 8: v * 255 / 1023, not the low or high byte of the value.
    assert_close(pixel(decoded.image, 16, 16), (255, 128, 16), 2)


@needs_heic_decoder
def test_a_multi_image_heic_gives_its_primary_picture() -> None:
    data = heic_burst(RED, BLUE, GREEN, primary=1)

    decoded = decode(data)

    assert decoded.image.size == (24, 24)
    assert_close(pixel(decoded.image, 12, 12), BLUE, 12)


@needs_heic_decoder
def test_heic_xmp_is_carried() -> None:
    decoded = decode(heic_bytes(quadrants(), xmp=PHONE_XMP))

    assert decoded.metadata.xmp is not None
    out = written_xmp(encode(decoded.image, "JPEG", metadata=decoded.metadata))
    assert xmp_values(out, "xmp", "Rating") == ["4"]
    assert xmp_values(out, "dc", "subject") == ["birthday", "cake"]


@needs_heic_decoder
@pytest.mark.parametrize(
    ("damage", "reasons"),
    [
        (lambda data: data[: len(data) // 2], {"truncated", "corrupt"}),
        (lambda data: data[:40], {"truncated", "corrupt"}),
        (lambda data: data[:200] + bytes(len(data) - 200), {"truncated", "corrupt"}),
    ],
    ids=["half", "header-only", "zeroed"],
)
def test_damaged_heic_is_a_bad_image(damage: Any, reasons: set[str]) -> None:
    data = damage(heic_bytes(quadrants()))

    with pytest.raises(BadImageError) as info:
        decode(data)

    assert info.value.reason in reasons
    assert "HEIF" in str(info.value)


@pytest.fixture
def no_heic_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the heic extra were not installed: the plugin does not load, Pillow has no HEIF."""
    monkeypatch.setattr(decoding, "_plugin_loaded", lambda row: row.plugin is None)
    readable = tuple(name for name in decoding._readable_formats() if name != "HEIF")
    monkeypatch.setattr(decoding, "_readable_formats", lambda: readable)


@pytest.mark.usefixtures("no_heic_decoder")
def test_heic_without_the_decoder_names_the_extra_to_install() -> None:
    data = heic_bytes(quadrants())

    with pytest.raises(BadImageError) as info:
        decode(data)

    assert info.value.reason == "unsupported_format"
    message = str(info.value)
    assert "pip install 'stylewatch[heic]'" in message
    assert "pi-heif" in message


@pytest.mark.usefixtures("no_heic_decoder")
def test_without_the_decoder_other_formats_are_unchanged() -> None:
    assert decode(avif_bytes(quadrants())).metadata.format == "AVIF"
    with pytest.raises(BadImageError) as info:
        decode(b"\0\0\0\x18ftypisom\0\0\0\0isomavc1" + bytes(64))  # an MP4 video
    assert info.value.reason == "not_an_image"


def test_the_decoder_is_the_decoder_only_build() -> None:
    # The licence choice (README): pi-heif's wheels carry no HEVC encoder (x265 is GPL).
    pi_heif = pytest.importorskip("pi_heif")
    assert not pi_heif.libheif_info()["HEIF"]


# --- HEIC is decoded in a process of its own ---------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@needs_heic_decoder
def test_a_heic_that_crashed_the_decoder_is_a_bad_image() -> None:
    """Found by the fuzz: libheif crashed the whole process on it; now only its own."""
    data = (FIXTURES / "bitflip-crashes-pi-heif-1.4.heic").read_bytes()

    with pytest.raises(BadImageError) as info:
        decode(data)

    assert info.value.reason in {"corrupt", "truncated"}


@needs_heic_decoder
@pytest.mark.parametrize(
    ("script", "reason", "message"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "corrupt", "SIGSEGV"),
        ("import sys; sys.stderr.write('MemoryError\\n'); sys.exit(1)", "corrupt", "MemoryError"),
        ("import time; time.sleep(30)", "corrupt", "ran for over"),
    ],
    ids=["crash", "no-answer", "hang"],
)
def test_a_decoder_that_dies_or_hangs_gives_a_bad_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, reason: str, message: str
) -> None:
    child = tmp_path / "child.py"
    child.write_text(script)
    monkeypatch.setattr(decoding, "_CHILD", child)
    monkeypatch.setattr(decoding, "ISOLATED_DECODE_SECONDS", 2.0)

    with pytest.raises(BadImageError) as info:
        decode(heic_bytes(quadrants()))

    assert info.value.reason == reason
    assert message in str(info.value)


@needs_heic_decoder
def test_a_heic_over_the_pixel_limit_is_refused_before_decoding() -> None:
    with pytest.raises(BadImageError) as info:
        decode(heic_bytes(quadrants()), max_pixels=1000)

    assert info.value.reason == "too_large"
    assert "64x48" in str(info.value)


# Display P3 to sRGB, linear light (the matrix published with the P3 specifications).
P3_TO_SRGB = np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0196, -0.0786, 1.0979]])


def srgb_from_p3(rgb: tuple[int, int, int]) -> tuple[int, ...]:
    v = np.array(rgb) / 255
    linear = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    out = np.clip(P3_TO_SRGB @ linear, 0, 1)
    encoded = np.where(out <= 0.0031308, out * 12.92, 1.055 * out ** (1 / 2.4) - 0.055)
    return tuple(int(np.rint(c * 255)) for c in encoded)


@needs_heic_decoder
@pytest.mark.parametrize(
    ("primaries", "colour", "expected"),
    [
        (12, (200, 150, 100), srgb_from_p3((200, 150, 100))),  # Display P3, as phones write it
        (1, (200, 150, 100), (200, 150, 100)),  # sRGB's own primaries: nothing to do
    ],
)
def test_heic_colours_described_without_a_profile_become_srgb(
    primaries: int, colour: tuple[int, int, int], expected: tuple[int, ...]
) -> None:
    heif = heic_encoder().from_pillow(Image.new("RGB", (16, 16), colour))
    buffer = io.BytesIO()
    heif.save(buffer, quality=-1, color_primaries=primaries, transfer_characteristics=13,
              matrix_coefficients=6)  # fmt: skip

    decoded = decode(buffer.getvalue())

    assert expected != colour or primaries == 1
    assert_close(pixel(decoded.image, 8, 8), expected, 3)
