"""engine.images, decoding: every odd photo decodes to the right upright sRGB picture; bad files
say why.

Test pictures are made with Pillow (tests/imaging.py, with a small ICC writer for colour profiles),
so the expected pixel values are known exactly.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import structlog
from imaging import (
    BLUE,
    GREEN,
    LOSSY,
    ORIENTATIONS,
    RED,
    SAMPLES,
    SRGB_PROFILE,
    SWAPPED_PROFILE,
    WHITE,
    YELLOW,
    assert_close,
    camera_exif,
    cmyk_profile,
    corner,
    exif_of,
    grey_profile,
    marked,
    pixel,
    png_chunk,
    png_file,
    quadrants,
    save,
)
from PIL import ExifTags, Image, ImageFile

from engine import images
from engine.errors import BadImageError
from engine.images import decode, resize_long_edge

# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "suffix", "params"),
    [
        ("JPEG", ".jpg", {"quality": 95}),
        ("PNG", ".png", {}),
        ("WEBP", ".webp", {"quality": 95}),
        ("WEBP", ".webp", {"lossless": True}),
        ("TIFF", ".tif", {}),
        ("TIFF", ".tif", {"compression": "tiff_lzw"}),
        ("BMP", ".bmp", {}),
        ("GIF", ".gif", {}),
    ],
)
def test_each_format_decodes_to_its_colours(
    tmp_path: Path, fmt: str, suffix: str, params: dict[str, object]
) -> None:
    path = save(quadrants(), tmp_path / f"photo{suffix}", fmt, **params)

    decoded = decode(path)

    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (64, 48)
    assert decoded.metadata.format == fmt
    assert decoded.metadata.size == (64, 48)
    tolerance = 12 if fmt in LOSSY and not params.get("lossless") else 0
    for (x, y), colour in (((8, 8), RED), ((56, 8), GREEN), ((8, 40), BLUE), ((56, 40), YELLOW)):
        assert_close(pixel(decoded.image, x, y), colour, tolerance)


def test_bytes_decode_like_the_file(tmp_path: Path) -> None:
    path = save(quadrants(), tmp_path / "photo.png")

    from_path = decode(path)
    from_bytes = decode(path.read_bytes())

    assert from_bytes.metadata == from_path.metadata
    assert from_bytes.image.tobytes() == from_path.image.tobytes()


@pytest.mark.parametrize("name", ["chelsea.png", "astronaut.png", "shipwreck.jpg"])
def test_real_photos_decode(name: str) -> None:
    path = SAMPLES / name
    with Image.open(path) as original:
        expected = original.convert("RGB")

    decoded = decode(path)

    assert decoded.image.mode == "RGB"
    assert decoded.image.size == expected.size
    difference = np.abs(
        np.asarray(decoded.image, dtype=np.int16) - np.asarray(expected, dtype=np.int16)
    )
    assert difference.mean() < 1.0


def test_the_result_carries_no_stale_profile_or_exif(tmp_path: Path) -> None:
    path = save(quadrants(), tmp_path / "p.png", icc_profile=SWAPPED_PROFILE, exif=camera_exif())

    decoded = decode(path)

    # The pixels are sRGB now: the source's profile must not travel with them.
    assert decoded.image.info == {}


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", ".jpg"), ("PNG", ".png"), ("TIFF", ".tif")])
def test_decode_does_not_touch_the_source(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = save(quadrants(), tmp_path / f"photo{suffix}", fmt, exif=camera_exif(orientation=6))
    before = path.read_bytes()
    stat = path.stat()

    decode(path)

    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == stat.st_mtime_ns


# --- EXIF orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("orientation", "first", "row_end", "swapped"), ORIENTATIONS)
def test_exif_orientation_turns_the_picture_upright(
    tmp_path: Path, orientation: int, first: str, row_end: str, swapped: bool
) -> None:
    path = save(marked(64, 32), tmp_path / "turned.jpg", quality=95, exif=camera_exif(orientation))

    decoded = decode(path)

    assert decoded.image.size == ((32, 64) if swapped else (64, 32))
    assert decoded.metadata.size == decoded.image.size
    assert_close(corner(decoded.image, first), RED, 12)
    assert_close(corner(decoded.image, row_end), GREEN, 12)
    exif = exif_of(decoded.metadata.exif or b"")
    assert exif[ExifTags.Base.Orientation] == 1
    assert exif[ExifTags.Base.Make] == "TestCam"


@pytest.mark.parametrize(
    ("fmt", "suffix", "params"),
    [("PNG", ".png", {}), ("WEBP", ".webp", {"lossless": True}), ("TIFF", ".tif", {})],
)
def test_exif_orientation_in_other_formats(
    tmp_path: Path, fmt: str, suffix: str, params: dict[str, object]
) -> None:
    path = save(marked(64, 32), tmp_path / f"turned{suffix}", fmt, exif=camera_exif(6), **params)

    decoded = decode(path)

    assert decoded.image.size == (32, 64)
    assert_close(corner(decoded.image, "top-right"), RED, 0)
    assert_close(corner(decoded.image, "bottom-right"), GREEN, 0)


# --- pixel modes --------------------------------------------------------------------------------


def palette_image(transparent: bool) -> tuple[Image.Image, dict[str, object]]:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    return image, ({"transparency": 0} if transparent else {})


def grey_alpha_image() -> tuple[Image.Image, dict[str, object]]:
    grey = Image.new("L", (16, 16), 40)
    alpha = Image.new("L", (16, 16), 255)
    alpha.paste(0, (8, 0, 16, 16))
    alpha.paste(128, (8, 8, 16, 16))
    return Image.merge("LA", (grey, alpha)), {}


def rgba_image() -> tuple[Image.Image, dict[str, object]]:
    image = Image.new("RGBA", (16, 16), (*BLUE, 255))
    image.paste((*RED, 0), (8, 0, 16, 16))
    image.paste((0, 0, 0, 128), (8, 8, 16, 16))
    return image, {}


def sixteen_bit(mode: str, values: tuple[int, int, int]) -> tuple[Image.Image, dict[str, object]]:
    """Left third, middle third, right third at the given 16-bit levels."""
    array = np.zeros((16, 18), dtype=np.int64)
    for i, value in enumerate(values):
        array[:, 6 * i : 6 * i + 6] = value
    dtypes = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}
    data = array.astype(dtypes[mode]).tobytes()
    return Image.frombytes(mode, (18, 16), data), {}


# (name, picture and save options, format, [(x, y, expected RGB)], tolerance)
MODES = [
    ("P", lambda: palette_image(False), "PNG", [(2, 2, RED), (12, 2, BLUE)], 0),
    ("P+transparency", lambda: palette_image(True), "PNG", [(2, 2, WHITE), (12, 2, BLUE)], 0),
    ("P+transparency gif", lambda: palette_image(True), "GIF", [(2, 2, WHITE), (12, 2, BLUE)], 0),
    ("L", lambda: (Image.new("L", (8, 8), 77), {}), "PNG", [(3, 3, (77, 77, 77))], 0),
    ("1", lambda: (Image.new("1", (8, 8), 1), {}), "PNG", [(3, 3, WHITE)], 0),
    ("1 black", lambda: (Image.new("1", (8, 8), 0), {}), "TIFF", [(3, 3, (0, 0, 0))], 0),
    ("LA", grey_alpha_image, "PNG", [(2, 2, (40,) * 3), (12, 2, WHITE), (12, 12, (148,) * 3)], 1),
    ("RGBA", rgba_image, "PNG", [(2, 2, BLUE), (12, 2, WHITE), (12, 12, (127,) * 3)], 1),
    ("RGBA tiff", rgba_image, "TIFF", [(2, 2, BLUE), (12, 2, WHITE)], 0),
    ("RGBA webp", lambda: (rgba_image()[0], {"lossless": True}), "WEBP", [(12, 2, WHITE)], 0),
    (
        "L+tRNS",
        lambda: (Image.new("L", (8, 8), 90), {"transparency": 90}),
        "PNG",
        [(3, 3, WHITE)],
        0,
    ),
    (
        "RGB+tRNS",
        lambda: (Image.new("RGB", (8, 8), RED), {"transparency": RED}),
        "PNG",
        [(3, 3, WHITE)],
        0,
    ),
    (
        "I;16 png",
        lambda: sixteen_bit("I;16", (0, 32768, 65535)),
        "PNG",
        [(1, 1, (0,) * 3), (8, 1, (128,) * 3), (15, 1, (255,) * 3)],
        0,
    ),
    (
        "I;16 tiff",
        lambda: sixteen_bit("I;16", (257 * 30, 32768, 65535)),
        "TIFF",
        [(1, 1, (30,) * 3), (8, 1, (128,) * 3), (15, 1, (255,) * 3)],
        0,
    ),
    (
        "I;16B tiff",
        lambda: sixteen_bit("I;16B", (257 * 200, 32768, 256)),
        "TIFF",
        [(1, 1, (200,) * 3), (8, 1, (128,) * 3), (15, 1, (1,) * 3)],
        0,
    ),
    (
        "I tiff",
        lambda: sixteen_bit("I", (0, 32768, 65535)),
        "TIFF",
        [(1, 1, (0,) * 3), (8, 1, (128,) * 3), (15, 1, (255,) * 3)],
        0,
    ),
    (
        "F fractions",
        lambda: (Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)), {}),
        "TIFF",
        [(3, 3, (128,) * 3)],
        0,
    ),
    (
        "F levels",
        lambda: (Image.fromarray(np.full((8, 8), 200.0, dtype=np.float32)), {}),
        "TIFF",
        [(3, 3, (200,) * 3)],
        0,
    ),
    (
        "CMYK tiff",
        lambda: (Image.new("CMYK", (8, 8), (255, 0, 0, 0)), {}),
        "TIFF",
        [(3, 3, (0, 255, 255))],
        0,
    ),
    (
        "LAB tiff",
        lambda: (Image.new("LAB", (8, 8), (255, 128, 128)), {}),
        "TIFF",
        [(3, 3, WHITE)],
        2,
    ),
]


@pytest.mark.parametrize(
    ("make", "fmt", "expected", "tolerance"),
    [pytest.param(*row[1:], id=row[0]) for row in MODES],
)
def test_pixel_modes_become_rgb_with_the_right_colours(
    tmp_path: Path,
    make: object,
    fmt: str,
    expected: list[tuple[int, int, tuple[int, int, int]]],
    tolerance: int,
) -> None:
    image, options = make()  # type: ignore[operator]
    path = save(image, tmp_path / f"odd.{fmt.lower()}", fmt, **options)

    decoded = decode(path)

    assert decoded.image.mode == "RGB"
    assert decoded.image.size == image.size
    for x, y, colour in expected:
        assert_close(pixel(decoded.image, x, y), colour, tolerance)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    image, _ = sixteen_bit("I;16", (32768, 32768, 32768))
    path = save(image, tmp_path / "grey16.png")
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
        # The trap decode() avoids: Pillow's own conversion clips 32768 to white.
        assert opened.convert("L").getpixel((0, 0)) == 255

    assert pixel(decode(path).image, 0, 0) == (128, 128, 128)


def test_sixteen_bit_rgb_png_is_read_as_8_bit(tmp_path: Path) -> None:
    rows = np.zeros((4, 6, 3), dtype=">u2")
    rows[..., 0], rows[..., 1], rows[..., 2] = 65535, 32768, 0x1400
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    path = tmp_path / "rgb48.png"
    path.write_bytes(png_file(6, 4, 16, 2, raw))

    decoded = decode(path)

    assert decoded.image.mode == "RGB"
    assert pixel(decoded.image, 3, 2) == (255, 128, 20)


# --- CMYK and colour profiles -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [
        ((0, 0, 0, 0), WHITE),
        ((255, 0, 0, 0), (0, 255, 255)),
        ((0, 255, 0, 0), (255, 0, 255)),
        ((0, 0, 0, 255), (0, 0, 0)),
    ],
)
def test_adobe_cmyk_jpeg_without_profile(
    tmp_path: Path, cmyk: tuple[int, ...], rgb: tuple[int, ...]
) -> None:
    path = save(Image.new("CMYK", (16, 16), cmyk), tmp_path / "cmyk.jpg", quality=95)
    # libjpeg marks CMYK JPEGs with Adobe's APP14 segment and stores the inks inverted, as
    # Photoshop does: decoding must undo the inversion.
    assert b"Adobe" in path.read_bytes()

    assert_close(pixel(decode(path).image, 8, 8), rgb, 3)


def test_cmyk_jpeg_goes_through_its_icc_profile(tmp_path: Path) -> None:
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    image.paste((255, 0, 0, 0), (8, 0, 16, 16))
    image.paste((0, 0, 0, 255), (0, 8, 8, 16))
    path = save(image, tmp_path / "cmyk.jpg", quality=95, icc_profile=cmyk_profile("Red cyan"))

    decoded = decode(path).image

    assert_close(pixel(decoded, 2, 2), WHITE, 4)  # bare paper
    assert_close(pixel(decoded, 2, 12), (0, 0, 0), 4)  # black ink
    red, green, blue = pixel(decoded, 12, 2)  # "cyan" ink, which this printer prints red
    assert red > green + 60
    assert red > blue + 30


@pytest.mark.parametrize("broken", [b"not an ICC profile at all", SWAPPED_PROFILE[:100]])
def test_cmyk_with_a_broken_profile_falls_back_to_plain_conversion(
    tmp_path: Path, broken: bytes
) -> None:
    path = save(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), tmp_path / "c.jpg", icc_profile=broken)

    with structlog.testing.capture_logs() as logs:
        decoded = decode(path)

    assert_close(pixel(decoded.image, 4, 4), (0, 255, 255), 3)
    assert [entry["event"] for entry in logs] == ["icc_profile_ignored"]


def test_a_profile_for_other_pixels_is_ignored(tmp_path: Path) -> None:
    """An RGB profile on CMYK pixels cannot be applied: the plain conversion is the best guess."""
    path = save(
        Image.new("CMYK", (8, 8), (255, 0, 0, 0)), tmp_path / "c.tif", icc_profile=SRGB_PROFILE
    )

    assert_close(pixel(decode(path).image, 4, 4), (0, 255, 255), 0)


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif")])
def test_rgb_in_another_colour_space_is_converted_to_srgb(
    tmp_path: Path, fmt: str, suffix: str
) -> None:
    # In a space whose red and blue primaries are sRGB's blue and red, (255, 0, 0) is sRGB blue.
    image = Image.new("RGB", (16, 16), (255, 0, 0))
    path = save(image, tmp_path / f"wide{suffix}", fmt, icc_profile=SWAPPED_PROFILE)

    assert_close(pixel(decode(path).image, 8, 8), (0, 0, 255), 6)


def test_srgb_tagged_pixels_are_left_exactly_as_they_are(tmp_path: Path) -> None:
    image = quadrants()
    path = save(image, tmp_path / "srgb.png", icc_profile=SRGB_PROFILE)

    assert decode(path).image.tobytes() == image.tobytes()


def test_grey_with_a_grey_profile(tmp_path: Path) -> None:
    # Grey level 128 in a linear (gamma 1.0) space is half the light: sRGB level 188.
    path = save(
        Image.new("L", (8, 8), 128), tmp_path / "g.png", icc_profile=grey_profile("Linear", 1.0)
    )

    assert_close(pixel(decode(path).image, 4, 4), (188, 188, 188), 1)


# --- bad files ----------------------------------------------------------------------------------


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(7).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(8).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()


def webp_bytes() -> bytes:
    buffer = io.BytesIO()
    quadrants(128, 96).save(buffer, "WEBP", quality=90)
    return buffer.getvalue()


def flipped_png_pixels() -> bytes:
    data = bytearray(png_bytes())
    start = data.index(b"IDAT") + 4
    for offset in range(200, 2000, 97):  # inside the compressed pixel data
        data[start + offset] ^= 0x5A
    return bytes(data)


def broken_png_header() -> bytes:
    data = bytearray(png_bytes())
    data[16:24] = b"\xff" * 8  # width and height in IHDR; its CRC no longer matches
    return bytes(data)


BAD_FILES = [
    ("empty", lambda: b"", "empty"),
    ("text", lambda: b"Dear diary,\nthis is not a photo.\n" * 20, "not_an_image"),
    ("random", lambda: np.random.default_rng(3).bytes(5000), "not_an_image"),
    ("jpeg cut in half", lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated"),
    ("jpeg cut near the end", lambda: jpeg_bytes()[:-200], "truncated"),
    ("png cut in half", lambda: png_bytes()[: len(png_bytes()) // 2], "truncated"),
    ("png cut just before its end", lambda: png_bytes()[:-24], "truncated"),
    ("webp cut in half", lambda: webp_bytes()[: len(webp_bytes()) // 2], "truncated"),
    ("png with flipped pixel bits", flipped_png_pixels, "corrupt"),
    ("png with a broken header", broken_png_header, "corrupt"),
    ("eps", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" * 3, "not_an_image"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [pytest.param(row[1], row[2], id=row[0]) for row in BAD_FILES]
)
def test_bad_files_give_their_reason(tmp_path: Path, make: object, reason: str) -> None:
    data: bytes = make()  # type: ignore[operator]
    path = tmp_path / "holiday photo.jpg"
    path.write_bytes(data)

    with pytest.raises(BadImageError) as from_path:
        decode(path)
    with pytest.raises(BadImageError) as from_bytes:
        decode(data)

    assert from_path.value.reason == reason
    assert from_bytes.value.reason == reason
    message = str(from_path.value)
    assert message.startswith(str(path))
    assert "\n" not in message


def test_png_without_iend_is_still_a_picture_if_its_pixels_are_complete(tmp_path: Path) -> None:
    # Cutting only the IEND chunk loses no pixel: Pillow decodes it, and so should we.
    data = png_bytes()
    assert data.endswith(png_chunk(b"IEND", b""))

    decoded = decode(data[: -len(png_chunk(b"IEND", b""))])

    assert decoded.image.size == (128, 96)


def test_load_truncated_images_is_not_switched_on() -> None:
    # decode() relies on Pillow refusing truncated files; nothing in the engine may change that.
    decode(png_bytes())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_missing_file_is_an_os_error_not_a_bad_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode(tmp_path / "gone.jpg")


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs a user that permissions stop"
)
def test_permission_denied_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    path.write_bytes(png_bytes())
    path.chmod(0)

    with pytest.raises(BadImageError) as caught:
        decode(path)

    assert caught.value.reason == "unreadable"


class FailingFile(io.RawIOBase):
    """A file whose reads fail with `error` after `good` bytes: a bad disk or a revoked share."""

    def __init__(self, data: bytes, good: int, error: OSError) -> None:
        self._data, self._good, self._error, self._position = data, good, error, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}[whence]
        self._position = base + offset
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._position + len(buffer) > self._good:
            raise self._error
        chunk = self._data[self._position : self._position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def open_failing(monkeypatch: pytest.MonkeyPatch, error: OSError, good: int) -> None:
    data = png_bytes()

    def fake_open(
        self: Path, mode: str = "r", *args: object, **kwargs: object
    ) -> io.BufferedReader:
        return io.BufferedReader(FailingFile(data, good, error), buffer_size=64)

    monkeypatch.setattr(Path, "open", fake_open)


@pytest.mark.parametrize("good", [0, 100, 4000])
def test_permission_errors_while_reading_are_unreadable(
    monkeypatch: pytest.MonkeyPatch, good: int
) -> None:
    open_failing(monkeypatch, PermissionError(errno.EACCES, "Permission denied"), good)

    with pytest.raises(BadImageError) as caught:
        decode("/photos/locked.png")

    assert caught.value.reason == "unreadable"
    assert str(caught.value) == "/photos/locked.png: cannot read the file: Permission denied"


@pytest.mark.parametrize("good", [0, 100, 4000])
def test_disk_errors_while_reading_stay_os_errors(
    monkeypatch: pytest.MonkeyPatch, good: int
) -> None:
    """EIO may be a flaky share: the daemon retries OSErrors, so decode must not call it corrupt."""
    open_failing(monkeypatch, OSError(errno.EIO, "Input/output error"), good)

    with pytest.raises(OSError, match="Input/output error") as caught:
        decode("/photos/flaky.png")

    assert not isinstance(caught.value, BadImageError)
    assert caught.value.errno == errno.EIO


def test_permission_denied_on_open_is_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> io.BufferedReader:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)

    with pytest.raises(BadImageError) as caught:
        decode("/photos/locked.jpg")

    assert caught.value.reason == "unreadable"


# --- size limits --------------------------------------------------------------------------------


def huge_png_header(side: int) -> bytes:
    """A few hundred bytes that claim side x side pixels: a decompression bomb's shape."""
    return png_file(side, side, 8, 2, b"\0" * 1000)


@pytest.mark.parametrize("side", [11_000, 20_000, 100_000])
def test_huge_headers_are_refused_before_any_pixel_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png_header(side))

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("decode() started decoding pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    pillow_limit = Image.MAX_IMAGE_PIXELS

    with pytest.raises(BadImageError) as caught:
        decode(path)

    assert caught.value.reason == "too_large"
    assert str(caught.value).startswith(f"{path}: too large")
    assert pillow_limit == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(("max_pixels", "accepted"), [(599, False), (600, True), (10**6, True)])
def test_max_pixels_is_the_callers_limit(max_pixels: int, accepted: bool) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buffer, "PNG")

    if accepted:
        assert decode(buffer.getvalue(), max_pixels=max_pixels).image.size == (30, 20)
    else:
        with pytest.raises(BadImageError, match="30x20") as caught:
            decode(buffer.getvalue(), max_pixels=max_pixels)
        assert caught.value.reason == "too_large"


def test_max_pixels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode(png_bytes(), max_pixels=0)


# --- small helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "long_edge", "expected"),
    [
        ((4000, 3000), 512, (512, 384)),
        ((3000, 4000), 512, (384, 512)),
        ((512, 512), 256, (256, 256)),
        ((1000, 1), 100, (100, 1)),
        ((1, 1000), 100, (1, 100)),
        ((10, 5), 20, (20, 10)),
        ((333, 100), 100, (100, 30)),
    ],
)
def test_resize_long_edge(size: tuple[int, int], long_edge: int, expected: tuple[int, int]) -> None:
    image = Image.new("RGB", size, BLUE)

    resized = resize_long_edge(image, long_edge)

    assert resized.size == expected
    assert resized.mode == "RGB"
    assert_close(pixel(resized, expected[0] // 2, expected[1] // 2), BLUE, 1)


def test_resize_keeps_the_picture() -> None:
    resized = resize_long_edge(quadrants(640, 480), 64)

    assert resized.size == (64, 48)
    for (x, y), colour in (((8, 8), RED), ((56, 8), GREEN), ((8, 40), BLUE), ((56, 40), YELLOW)):
        assert_close(pixel(resized, x, y), colour, 2)


@pytest.mark.parametrize("long_edge", [0, -1])
def test_resize_refuses_an_empty_size(long_edge: int) -> None:
    with pytest.raises(ValueError, match="long_edge"):
        resize_long_edge(Image.new("RGB", (4, 4)), long_edge)


def test_the_module_exports_a_sane_default() -> None:
    # Bigger than any camera (a 100-megapixel medium format sensor fits), far below memory limits.
    assert 100_000_000 < images.DEFAULT_MAX_PIXELS < 2 * Image.MAX_IMAGE_PIXELS


def test_a_photo_read_from_a_pipe_decodes(tmp_path: Path) -> None:
    """A named pipe cannot seek back after the format is sniffed: it is read into memory."""
    import threading

    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(buffer, "PNG")
    pipe = tmp_path / "painting.png"
    os.mkfifo(pipe)

    def write() -> None:
        with pipe.open("wb") as out:
            out.write(buffer.getvalue())

    writer = threading.Thread(target=write)
    writer.start()
    decoded = decode(pipe)
    writer.join(10)
    assert decoded.image.size == (20, 10)
    assert decoded.image.getpixel((5, 5)) == (200, 30, 30)
