"""`stylewatch stylize` and the formats: a phone's HEIC in, an AVIF out, metadata as asked."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from imaging import (
    PHONE_XMP,
    heic_bytes,
    marked,
    needs_heic_decoder,
    phone_exif,
    written_xmp,
    xmp_values,
)
from PIL import ExifTags, Image
from test_cli_stylize import SAMPLES, _run

IPTC_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


def stylize(vgg_checkpoint: Path, source: Path, out: Path, *extra: str) -> str:
    done = _run(
        "stylize", source, "-s", SAMPLES / "starry_night.jpg", "-o", out, "--size", "32",
        "--steps", "1", "--weights", vgg_checkpoint, "--device", "cpu", *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_heic_decoder
@pytest.mark.parametrize(
    ("policy", "keeps_camera", "keeps_location"),
    [(None, True, False), ("full", True, True), ("minimal", False, False)],
)
def test_a_heic_becomes_an_avif_with_its_metadata_as_asked(
    vgg_checkpoint: Path,
    tmp_path: Path,
    policy: str | None,
    keeps_camera: bool,
    keeps_location: bool,
) -> None:
    source = tmp_path / "IMG_0001.HEIC"
    source.write_bytes(heic_bytes(marked(48, 32), exif=phone_exif(6).tobytes(), xmp=PHONE_XMP))
    out = tmp_path / "art.avif"

    stylize(vgg_checkpoint, source, out, *(["--metadata", policy] if policy else []))

    data = out.read_bytes()
    with Image.open(io.BytesIO(data)) as result:
        assert result.format == "AVIF"
        assert result.size == (21, 32)  # upright, as the phone was held
        exif = result.getexif()
    xmp = written_xmp(data)
    assert xmp_values(xmp, "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]
    assert xmp_values(xmp, "stylewatch", "Style") == ["starry_night"]
    assert (exif.get(ExifTags.Base.Make) == "TestCam") is keeps_camera
    assert bool(exif.get_ifd(ExifTags.IFD.GPSInfo)) is keeps_location


def test_an_output_suffix_no_format_writes_is_refused(vgg_checkpoint: Path, tmp_path: Path) -> None:
    done = _run(
        "stylize", SAMPLES / "chelsea.png", "-s", SAMPLES / "starry_night.jpg",
        "-o", tmp_path / "art.heic", "--weights", vgg_checkpoint,
    )  # fmt: skip

    assert done.returncode == 64
    assert ".avif" in done.stderr
    assert not (tmp_path / "art.heic").exists()
