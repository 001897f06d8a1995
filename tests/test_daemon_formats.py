"""The real daemon and the formats: a phone's HEIC in, every output format out, each output saying
how it was made and keeping no location or serial number (the default metadata policy); a HEIC
that comes without the decoder installed is a recorded failure that says what to install."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from harness import WRITTEN, Daemon, Fleet, check_invariants, fingerprints, photo, sha256
from imaging import (
    BODY_SERIAL,
    LENS_SERIAL,
    PHONE_XMP,
    heic_bytes,
    marked,
    needs_heic_decoder,
    phone_exif,
    written_xmp,
    xmp_values,
)
from PIL import ExifTags, Image

from engine import formats

IPTC_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"

# One style per output format, all the same painting; `full/` keeps the photo's location.
CONFIG = """\
input: inbox
output: outbox
state: state
watch: {{settle_seconds: 0.3, rescan_interval: 30, poll_interval: 0.2}}
engine: {{device: cpu, weights: {weights}, download: false, batch_size: 4}}
styles:
{styles}
defaults: {{size: 32, steps: 1, scales: 1}}
rules:
  - match: "full/**/*"
    styles: [jpeg]
    metadata: full
  - match: "**/*"
    styles: [{names}]
    output: "{{dir}}/{{stem}}.{{style}}.{{ext}}"
"""
CREDIT = "{artist: Vincent van Gogh, title: The Starry Night, year: 1889, licence: public domain}"


def formats_daemon(fleet: Fleet) -> Daemon:
    names = [row.name for row in formats.WRITABLE]
    styles = "\n".join(
        f"  {name}: {{image: {fleet.styles[0]}, format: {name}, credit: {CREDIT}}}"
        for name in names
    )
    fleet.inbox.mkdir(parents=True, exist_ok=True)
    config = fleet.root / "config.yaml"
    config.write_text(CONFIG.format(weights=fleet.weights, styles=styles, names=", ".join(names)))
    daemon = Daemon(fleet.root, config)
    fleet.started.append(daemon)
    return daemon


def phone_heic(path: Path) -> Path:
    """A phone's HEIC: turned (portrait), with GPS, serial numbers and its library's XMP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(heic_bytes(marked(48, 32), exif=phone_exif(6).tobytes(), xmp=PHONE_XMP))
    WRITTEN[path] = sha256(path)
    return path


def opened(path: Path) -> tuple[str, tuple[int, int], Image.Exif, bytes]:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return image.format or "", image.size, image.getexif(), data


@needs_heic_decoder
def test_a_phones_heic_becomes_every_output_format_without_its_location(fleet: Fleet) -> None:
    daemon = formats_daemon(fleet)
    phone_heic(fleet.inbox / "party" / "IMG_0001.HEIC")
    phone_heic(fleet.inbox / "full" / "IMG_0002.heic")
    sources = fingerprints(fleet.inbox)
    expected = {f"party/IMG_0001.{row.name}.{row.extensions[0]}" for row in formats.WRITABLE}
    expected.add("full/IMG_0002.jpg")

    daemon.start()
    daemon.wait(lambda: all((fleet.outbox / name).exists() for name in expected), "the outputs")
    status = check_invariants(daemon, outbox=fleet.outbox, sources=sources, expected=expected)
    assert daemon.stop() == 0

    for row in formats.WRITABLE:
        output = fleet.outbox / f"party/IMG_0001.{row.name}.{row.extensions[0]}"
        fmt, size, exif, data = opened(output)
        assert fmt == row.pillow
        assert size[0] < size[1]  # upright: the phone held it in portrait
        # The disclosure, the style and its credit.
        xmp = written_xmp(data)
        assert xmp_values(xmp, "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]
        assert xmp_values(xmp, "stylewatch", "Style") == [row.name]
        assert xmp_values(xmp, "stylewatch", "StyleArtist") == ["Vincent van Gogh"]
        assert exif[ExifTags.Base.Software].startswith("stylewatch")
        # The photo's own record, less where it was taken and by which camera.
        assert exif[ExifTags.Base.Make] == "TestCam"
        assert xmp_values(xmp, "dc", "subject") == ["birthday", "cake"]
        assert exif.get_ifd(ExifTags.IFD.GPSInfo) == {}
        assert xmp_values(xmp, "exif", "GPSLatitude") == []
        assert BODY_SERIAL.encode() not in data
        assert LENS_SERIAL.encode() not in data

    _, _, exif, data = opened(fleet.outbox / "full/IMG_0002.jpg")
    assert exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"
    assert exif[ExifTags.Base.CameraSerialNumber] == BODY_SERIAL

    credit = status["styles"]["avif"]["credit"]
    assert credit == {
        "artist": "Vincent van Gogh",
        "title": "The Starry Night",
        "year": "1889",
        "licence": "public domain",
    }


def hidden_decoder_env(root: Path) -> dict[str, str]:
    """The environment of a daemon on a machine without the heic extra: a `pi_heif` first on
    the path that cannot be imported, as if the package were not there."""
    stub = root / "no-heic" / "pi_heif"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(stub.parent), env.get("PYTHONPATH", "")) if part
    )
    return env


def test_a_heic_without_the_decoder_is_failed_with_the_install_hint(fleet: Fleet) -> None:
    pytest.importorskip("pillow_heif")  # to write the HEIC
    daemon = fleet.daemon()
    phone_heic(fleet.inbox / "IMG_0003.heic")
    photo(fleet.inbox / "plain.jpg", (200, 60, 90))
    sources = fingerprints(fleet.inbox)

    daemon.start(env=hidden_decoder_env(fleet.root))
    daemon.wait(lambda: failed(daemon) and (fleet.outbox / "plain.jpg").exists(), "both ends")
    status = check_invariants(
        daemon,
        outbox=fleet.outbox,
        sources=sources,
        expected={"plain.jpg"},
        rejected={"IMG_0003.heic"},
    )
    assert daemon.stop() == 0

    (failure,) = status["failures"]
    assert failure["kind"] == "bad_image:unsupported_format"
    assert "pip install 'stylewatch[heic]'" in failure["error"]
    assert failure["attempts"] == 1  # recorded once, not retried as if it could pass


def failed(daemon: Daemon) -> list[Any]:
    return list(daemon.full_status()["failures"])
