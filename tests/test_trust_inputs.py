"""Trust: bad input. Odd file names and broken files through the real daemon; the decoder fuzzed.

Every case must end in an output or a clean, recorded rejection: never a crash, a hang, a retry
loop or unbounded memory.
"""

from __future__ import annotations

import importlib.util
import io
import os
import resource
import signal
import struct
import zlib
from pathlib import Path

import pytest
from harness import (
    Daemon,
    Fleet,
    OutputSpy,
    check_invariants,
    failures_by_source,
    fingerprints,
    output_names,
    photo,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine import images
from engine.errors import BadImageError

LONG = "x" * 251 + ".jpg"  # 255 bytes, the longest name ext4 allows
ODD_NAMES = {
    "with  two spaces .jpg": (10, 60, 90),
    "emoji 📷🎨.jpg": (200, 60, 90),
    "cafe\u0301 NFD.jpg": (90, 200, 60),  # e + combining acute: must stay NFD, not become NFC
    "caf\u00e9 NFC.jpg": (90, 60, 200),
    "-rf.jpg": (1, 2, 3),
    "--help.png": (4, 5, 6),
    LONG: (7, 8, 9),
    "new\nline\ttab.jpg": (30, 30, 90),
    "{stem} {ext} 100% $(touch pwned) `id` 'q' \"dq\" back\\slash.jpg": (90, 30, 30),
    "sub dir with spaces/ünïcödé/深い/photo.png": (30, 90, 30),
}


def test_odd_names_and_broken_files_end_in_an_output_or_a_recorded_reason(
    fleet: Fleet, tmp_path: Path
) -> None:
    inbox, outbox = fleet.inbox, fleet.outbox
    daemon = fleet.daemon()
    for name, colour in ODD_NAMES.items():
        photo(inbox / name, colour)
    latin1 = os.fsdecode(b"caf\xe9 latin-1.jpg")  # not UTF-8: an old camera or SMB share
    photo(inbox / latin1, (50, 50, 50))
    # booth1 names get ".<style>" added: 255 bytes + ".starry" cannot exist on ext4.
    photo(inbox / "booth1" / LONG, (70, 70, 70))
    (inbox / "notes.jpg").write_text("not a photo at all")
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "video.png").write_bytes(os.urandom(4096))
    (inbox / "odd-dds.png").write_bytes(dds_with_pixel_flags(1))  # a reader that raised
    whole = photo(tmp_path / "whole.jpg", (120, 30, 30), size=(64, 64)).read_bytes()
    (inbox / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    sources = fingerprints(inbox)
    with OutputSpy(outbox) as spy:
        daemon.start()
        rejected = {
            "notes.jpg",
            "empty.jpg",
            "video.png",
            "odd-dds.png",
            "cut.jpg",
            f"booth1/{LONG}",
        }
        expected = set(ODD_NAMES)
        daemon.wait(
            lambda: output_count(outbox) >= len(expected) and set(failed(daemon)) >= rejected,
            "every photo done or rejected",
        )
        daemon.wait(
            lambda: daemon.saw("file_ignored", reason="undecodable_name"), "the odd name's reason"
        )
        assert daemon.stop() == 0
    status = check_invariants(
        daemon, outbox=outbox, sources=sources, expected=expected, rejected=rejected, spy=spy
    )
    kinds = {f["source"]: (f["kind"], f["attempts"]) for f in status["failures"]}
    assert kinds == {
        "notes.jpg": ("bad_image:not_an_image", 1),
        "empty.jpg": ("bad_image:empty", 1),
        "video.png": ("bad_image:not_an_image", 1),
        "odd-dds.png": ("bad_image:corrupt", 1),
        "cut.jpg": ("bad_image:truncated", 1),
        # Rejected at once, not retried with back-off as if the disk had failed.
        f"booth1/{LONG}": ("output_name_too_long", 1),
    }
    # The name that is not UTF-8 cannot go into the journal: refused with its reason in the log,
    # and the daemon went on (it used to die on it).
    assert daemon.saw("file_ignored", source="caf\\xe9 latin-1.jpg", reason="undecodable_name")
    assert status["counts"]["done"] == len(ODD_NAMES)
    assert not (tmp_path / "pwned").exists()  # names are never handed to a shell
    assert not Path("pwned").exists()


def output_count(outbox: Path) -> int:
    return len(output_names(outbox))


def failed(daemon: Daemon) -> dict[str, str]:
    return failures_by_source(daemon.full_status())


# ---- the decoder, fuzzed in-process ------------------------------------------------------------

REASONS = {
    "empty",
    "not_an_image",
    "truncated",
    "too_large",
    "corrupt",
    "unreadable",
    "unsupported_format",  # a HEIC where the heic extra is not installed
}
# A tight pixel limit keeps each legitimate decode to a few MB, so any case that allocates much
# more got past the header check: the RSS high-water mark below would show it.
FUZZ_MAX_PIXELS = 2_000_000
MEMORY_SLACK = 256 * 2**20
HANG_SECONDS = 30


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no `except Exception` in the decoder swallows it."""


def _hang(signum: int, frame: object) -> None:
    raise Hang(f"decode() ran for over {HANG_SECONDS} s")


def seeds() -> dict[str, bytes]:
    """One small, valid file per format Pillow writes (and so reads), with metadata to damage."""
    base = Image.new("RGB", (24, 16), (10, 200, 30))
    base.putpixel((3, 3), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate
    exif[0x010F] = "camera"
    made: dict[str, bytes] = {}
    for fmt, picture, options in (
        ("JPEG", base, {"exif": exif.tobytes(), "quality": 80}),
        ("JPEG", base.convert("CMYK"), {}),
        ("PNG", base.convert("RGBA"), {"exif": exif.tobytes()}),
        ("PNG", base.convert("P"), {"transparency": 0}),
        ("PNG", base.convert("I;16"), {}),
        ("GIF", base.convert("P"), {"save_all": True, "append_images": [base.convert("P")]}),
        ("WEBP", base, {"exif": exif.tobytes()}),
        ("AVIF", base, {"exif": exif.tobytes(), "quality": 80}),
        ("TIFF", base, {"compression": "tiff_lzw", "exif": exif}),
        ("BMP", base, {}),
        ("ICO", base, {}),
        ("PPM", base, {}),
        ("TGA", base, {"compression": "tga_rle"}),
        ("PCX", base, {}),
        ("SGI", base, {}),
        ("QOI", base, {}),
        ("JPEG2000", base, {}),
        ("DDS", base.convert("RGBA"), {}),
        ("MSP", base.convert("1"), {}),
        ("XBM", base.convert("1"), {}),
    ):
        buffer = io.BytesIO()
        try:
            picture.save(buffer, fmt, **options)
        except (OSError, KeyError, ValueError):
            continue  # this Pillow build cannot write it: fuzz the others
        made[f"{fmt}-{picture.mode}"] = buffer.getvalue()
    made.update(heic_seeds(base, exif))
    return made


def heic_seeds(base: Image.Image, exif: Image.Exif) -> dict[str, bytes]:
    """HEICs as phones write them (8 and 10 bits, EXIF, XMP, a second picture), made with
    pillow-heif (a test dependency: the decoder stylewatch uses cannot write)."""
    if importlib.util.find_spec("pi_heif") is None:
        return {}  # no decoder: the seeds would not decode
    try:
        import pillow_heif
    except ImportError:
        return {}
    if not pillow_heif.libheif_info()["HEIF"]:
        return {}
    made = {}
    heif = pillow_heif.from_pillow(base)
    heif.add_from_pillow(base.convert("L").convert("RGB"))
    buffer = io.BytesIO()
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    heif.save(buffer, quality=60, exif=exif.tobytes(), xmp=xmp)
    made["HEIF-RGB"] = buffer.getvalue()
    deep = pillow_heif.from_bytes("RGB;16", base.size, base.convert("RGB").tobytes() * 2)
    buffer = io.BytesIO()
    deep.save(buffer, quality=60)
    made["HEIF-10bit"] = buffer.getvalue()
    return made


SEEDS = seeds()
MAGICS = [data[:12] for data in SEEDS.values()] + [b"RIFF\x00\x00\x00\x00WEBP", b"8BPS", b"BM"]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """Truncated, bit-flipped, spliced, or random bytes behind a real format's first bytes."""
    kind = draw(st.sampled_from(["truncated", "flipped", "flipped", "magic", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "magic":
        return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=4096))
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 16))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):  # and sometimes cut short as well
        data = data[: draw(st.integers(1, len(data)))]
    return bytes(data)


def decode_cleanly(data: bytes) -> str:
    """Decode one case under a hang guard; 'ok' or the rejection's reason. Anything else fails."""
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HANG_SECONDS)
    try:
        decoded = images.decode(data, max_pixels=FUZZ_MAX_PIXELS)
    except BadImageError as exc:
        reason = exc.reason
    else:
        reason = "ok"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if reason != "ok":
        assert reason in REASONS, reason
        return reason
    assert decoded.image.mode == "RGB"
    assert decoded.image.width * decoded.image.height <= FUZZ_MAX_PIXELS
    return "ok"


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


FUZZ_TALLY: dict[str, int] = {}


def fuzz(examples: int, *, derandomize: bool) -> None:
    before = peak_rss()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(damaged())
    def case(data: bytes) -> None:
        outcome = decode_cleanly(data)
        FUZZ_TALLY[outcome] = FUZZ_TALLY.get(outcome, 0) + 1

    FUZZ_TALLY.clear()
    case()
    grown = peak_rss() - before
    print(f"trust: fuzz_cases={sum(FUZZ_TALLY.values())} outcomes={FUZZ_TALLY}")
    assert grown < MEMORY_SLACK, f"peak memory grew by {grown / 2**20:.0f} MiB"
    assert sum(FUZZ_TALLY.values()) >= examples * 0.9  # the run really ran


def dds_with_pixel_flags(flags: int) -> bytes:
    """The DDS seed with its pixel format flags (offset 80) set: Pillow has no reader for 1."""
    data = bytearray(SEEDS["DDS-RGBA"])
    data[80:84] = struct.pack("<I", flags)
    return bytes(data)


def test_a_format_variant_pillow_cannot_read_is_rejected_not_raised() -> None:
    """Found by the long fuzz run: Pillow raised NotImplementedError, which escaped decode()."""
    assert decode_cleanly(dds_with_pixel_flags(1)) == "corrupt"


def test_every_seed_decodes() -> None:
    """The fuzz starts from good files: each one must decode, or the damage proves nothing."""
    assert len(SEEDS) >= 12, sorted(SEEDS)
    assert "AVIF-RGB" in SEEDS
    if importlib.util.find_spec("pi_heif") and importlib.util.find_spec("pillow_heif"):
        assert {"HEIF-RGB", "HEIF-10bit"} <= set(SEEDS)
    assert {name: decode_cleanly(data) for name, data in SEEDS.items()} == dict.fromkeys(
        SEEDS, "ok"
    )


def test_damaged_images_are_rejected_cleanly() -> None:
    fuzz(500, derandomize=True)


@pytest.mark.slow
def test_damaged_images_are_rejected_cleanly_long_run() -> None:
    fuzz(int(os.environ.get("TRUST_FUZZ_EXAMPLES", "20000")), derandomize=False)


# ---- huge declared dimensions: refused from the header, before any pixel is allocated -----------


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["JPEG-RGB"])
    at = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_header(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["GIF-P"])
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["BMP-RGB"])
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_header(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1),  # grey, black is zero
        (273, 4, 1, 200),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    body = b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00"
    return body.ljust(216, b"\x00")


def ppm_header(width: int, height: int) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + b"\x00" * 64


def psd_header(width: int, height: int) -> bytes:
    return (
        b"8BPS"
        + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
        + struct.pack(">I", 0) * 3
        + b"\x00\x00"
        + b"\x00" * 64
    )


def qoi_header(width: int, height: int) -> bytes:
    return b"qoif" + struct.pack(">IIBB", width, height, 3, 0) + b"\x00" * 64


HEADERS = {
    "png": png_header,
    "jpeg": jpeg_header,
    "gif": gif_header,
    "bmp": bmp_header,
    "tiff": tiff_header,
    "ppm": ppm_header,
    "psd": psd_header,
    "qoi": qoi_header,
}


@pytest.mark.parametrize("fmt", sorted(HEADERS))
@pytest.mark.parametrize(
    ("width", "height"),
    [
        (11_000, 11_000),  # 121 MP: over our 120 MP limit, under Pillow's own bomb limit
        (65_000, 65_000),  # 4.2 gigapixels: 12 GB of RGB if anything tried to allocate it
    ],
)
def test_huge_declared_dimensions_are_refused_from_the_header(
    fmt: str, width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = HEADERS[fmt](width, height)
    with monkeypatch.context() as patched:  # the crafted header says what we mean it to
        patched.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(io.BytesIO(data)) as probe:
            assert probe.size == (width, height)
    before = peak_rss()
    with pytest.raises(BadImageError) as refused:
        images.decode(data)  # the daemon's own limit, DEFAULT_MAX_PIXELS
    assert refused.value.reason == "too_large", refused.value
    assert peak_rss() - before < 64 * 2**20
