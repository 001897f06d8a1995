"""Trust: privacy. A guest's phone photo goes through the real daemon with
the default config: its artwork keeps no GPS position and no serial number of camera or lens,
says that it was made by an algorithm, and the source keeps every byte it had."""

from __future__ import annotations

import io

from harness import WRITTEN, Fleet, check_invariants, fingerprints, sha256
from imaging import (
    BODY_SERIAL,
    LENS_SERIAL,
    PHONE_XMP,
    marked,
    phone_exif,
    written_xmp,
    xmp_values,
)
from PIL import ExifTags, Image

IPTC_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


def test_a_phone_photos_artwork_keeps_no_location_or_serial_number(fleet: Fleet) -> None:
    daemon = fleet.daemon()
    source = fleet.inbox / "guest" / "IMG_4242.jpg"
    source.parent.mkdir(parents=True)
    marked(48, 32).save(source, "JPEG", quality=90, exif=phone_exif(6), xmp=PHONE_XMP)
    WRITTEN[source] = sha256(source)
    assert b"52,31.208N" in source.read_bytes()  # the source really says where it was taken
    assert BODY_SERIAL.encode() in source.read_bytes()
    sources = fingerprints(fleet.inbox)

    daemon.start()
    output = fleet.outbox / "guest" / "IMG_4242.jpg"
    daemon.wait(output.exists, "the artwork")
    check_invariants(daemon, outbox=fleet.outbox, sources=sources, expected={"guest/IMG_4242.jpg"})
    assert daemon.stop() == 0

    data = output.read_bytes()
    with Image.open(io.BytesIO(data)) as artwork:
        exif = artwork.getexif()
        assert artwork.width < artwork.height  # upright, as the phone was held
    assert ExifTags.IFD.GPSInfo not in exif
    assert exif.get_ifd(ExifTags.IFD.GPSInfo) == {}
    assert ExifTags.Base.CameraSerialNumber not in exif
    for secret in (BODY_SERIAL, LENS_SERIAL, "52,31.208N", "13,24.6E"):
        assert secret.encode() not in data, secret
    xmp = written_xmp(data)
    assert xmp_values(xmp, "Iptc4xmpExt", "DigitalSourceType") == [IPTC_AI]
    assert xmp_values(xmp, "stylewatch", "Style") == ["starry"]
    # What is not private stays: the camera, the date, the photo library's keywords.
    assert exif[ExifTags.Base.Make] == "TestCam"
    assert xmp_values(xmp, "dc", "subject") == ["birthday", "cake"]
