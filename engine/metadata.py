"""What an output says about itself: the photo's EXIF and XMP as the policy allows, and more.

Every output is marked as made by an algorithm: IPTC's digital source type
(`compositeWithTrainedAlgorithmicMedia`) and the software in XMP, the software in EXIF, the style's
name and, when the config gives one, the painting's credit. Under the default policy ("private") a
photo's location (EXIF's GPS directory, XMP's exif:GPS* properties) and the serial numbers of its
camera and lens (with the maker notes, where cameras keep theirs) stay behind; "full" keeps them;
"minimal" keeps nothing of the photo's metadata but writes the disclosure.

XMP is parsed and written with xml.etree: a packet with a DOCTYPE (the only way to entity
expansion) is refused, and every text the user wrote (style names, credits) is escaped by the
serialiser after characters that XML cannot hold are removed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

import structlog
from PIL import ExifTags, Image

log = structlog.get_logger()

MetadataPolicy = Literal["private", "full", "minimal"]
METADATA_POLICIES: tuple[str, ...] = ("private", "full", "minimal")

DIGITAL_SOURCE_TYPE = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
)
# A JPEG APP1 segment holds this much XMP after its header; the same cap for every format keeps
# outputs alike.
MAX_XMP_BYTES = 65504

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "exifEX": "http://cipa.jp/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "stylewatch": "urn:stylewatch:xmp:1/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


# Properties that describe the source file's pixels, wrong for the output's.
_STALE_XMP = frozenset(
    {
        _q("tiff", "Orientation"),
        _q("tiff", "ImageWidth"),
        _q("tiff", "ImageLength"),
        _q("exif", "PixelXDimension"),
        _q("exif", "PixelYDimension"),
        _q("exif", "ColorSpace"),
        _q("photoshop", "ICCProfile"),
        _q("xmp", "Thumbnails"),
    }
)
# Who made the camera's copy: these identify a device or its owner across every photo.
_SERIAL_XMP = frozenset(
    {
        _q("exifEX", "BodySerialNumber"),
        _q("exifEX", "LensSerialNumber"),
        _q("exifEX", "CameraOwnerName"),
        _q("aux", "SerialNumber"),
        _q("aux", "LensSerialNumber"),
        _q("aux", "OwnerName"),
    }
)
_TAG = ExifTags.Base
# In IFD0 / in the Exif directory. The maker notes go too: cameras keep their serial numbers there.
_SERIAL_IFD0 = (_TAG.CameraSerialNumber,)
_SERIAL_EXIF = (
    _TAG.BodySerialNumber,
    _TAG.LensSerialNumber,
    _TAG.CameraOwnerName,
    _TAG.MakerNote,
)
# Characters XML 1.0 cannot carry, even escaped.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Credit:
    """Who painted the style's painting, as the output should credit it; every field optional."""

    artist: str = ""
    title: str = ""
    year: str = ""
    licence: str = ""

    def text(self) -> str:
        """'Vincent van Gogh, The Starry Night (1889), public domain' with the parts given."""
        head = ", ".join(part for part in (self.artist, self.title) if part)
        if self.year:
            head = f"{head} ({self.year})" if head else self.year
        return ", ".join(part for part in (head, self.licence) if part)


@functools.cache
def software() -> str:
    """The name and version written into every output: 'stylewatch 0.1.0'."""
    try:
        return f"stylewatch {importlib.metadata.version('stylewatch')}"
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "stylewatch"


def check_policy(policy: str) -> None:
    if policy not in METADATA_POLICIES:
        raise ValueError(f"metadata must be one of {', '.join(METADATA_POLICIES)}, got {policy!r}")


def source_xmp(data: bytes | str | None) -> bytes | None:
    """A photo's XMP packet if it is one worth carrying (well-formed, no DOCTYPE); else None.

    Raises ValueError with the reason for a packet that is there but unusable.
    """
    if data is None or len(data) == 0:
        return None
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    root = _parse(raw)
    if root.tag != _q("rdf", "RDF") and root.find(_q("rdf", "RDF")) is None:
        return None  # an empty x:xmpmeta, as some writers leave: nothing to carry
    return raw


def output_exif(exif: bytes | None, policy: str, *, software: str) -> bytes:
    """The EXIF block for an output: the photo's (kept by decode) as the policy allows, plus
    the software that made it."""
    check_policy(policy)
    tags = Image.Exif()
    if exif and policy != "minimal":
        tags.load(exif)
        if policy == "private":
            # Deleting the pointer before anything reads the directory drops it whole.
            tags.pop(ExifTags.IFD.GPSInfo, None)
            for tag in _SERIAL_IFD0:
                tags.pop(tag, None)
            if ExifTags.IFD.Exif in tags:
                details = tags.get_ifd(ExifTags.IFD.Exif)
                for tag in _SERIAL_EXIF:
                    details.pop(tag, None)
    tags[_TAG.Software] = software
    return tags.tobytes()


def output_xmp(
    xmp: bytes | None,
    policy: str,
    *,
    software: str,
    style: str | None = None,
    credit: Credit | None = None,
) -> bytes:
    """The XMP packet for an output: the photo's (as the policy allows) and the disclosure."""
    check_policy(policy)
    root: ET.Element | None = None
    if xmp is not None and policy != "minimal":
        try:
            root = _parse(xmp)
        except ValueError as exc:  # decode() checked it; a caller's own bytes may still be bad
            log.warning("xmp_dropped", error=str(exc))
    credited = credit.text() if credit is not None else ""
    if root is not None:
        _strip(root, policy, replace_credit=bool(credited))
    packet = _packet(root, software=software, style=style, credit=credit)
    if len(packet) > MAX_XMP_BYTES and root is not None:
        log.warning("xmp_dropped", error=f"{len(packet)} bytes is too long")
        packet = _packet(None, software=software, style=style, credit=credit)
    return packet


def _parse(raw: bytes) -> ET.Element:
    """The packet's root element; ValueError for anything that is not plain, well-formed XML."""
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise ValueError("the XMP packet declares a DOCTYPE or entities")
    try:
        root = ET.fromstring(raw.rstrip(b"\x00 \t\r\n"))
    except ET.ParseError as exc:
        raise ValueError(f"the XMP packet is not well-formed XML ({exc})") from None
    if root.tag not in (_q("rdf", "RDF"), _q("x", "xmpmeta")):
        raise ValueError("not an XMP packet: its root is neither x:xmpmeta nor rdf:RDF")
    return root


def _rdf(root: ET.Element) -> ET.Element:
    """The packet's rdf:RDF element, added to an x:xmpmeta that has none."""
    if root.tag == _q("rdf", "RDF"):
        return root
    found = root.find(_q("rdf", "RDF"))
    return ET.SubElement(root, _q("rdf", "RDF")) if found is None else found


def _strip(root: ET.Element, policy: str, *, replace_credit: bool) -> None:
    """Removes, in place, what must not travel: stale layout, what the disclosure replaces, and
    (policy private) location and serial numbers."""
    replaced = {_q("Iptc4xmpExt", "DigitalSourceType"), _q("xmp", "CreatorTool")}
    if replace_credit:
        # The photo's rights line stays unless the painting's credit takes its place.
        replaced |= {_q("dc", "rights"), _q("photoshop", "Credit")}

    def unwanted(name: str) -> bool:
        if name in _STALE_XMP or name in replaced or name.startswith(f"{{{NS['stylewatch']}}}"):
            return True
        if policy != "private":
            return False
        return name in _SERIAL_XMP or name.startswith(f"{{{NS['exif']}}}GPS")

    for description in _rdf(root).iter(_q("rdf", "Description")):
        for attribute in [a for a in description.attrib if unwanted(a)]:
            del description.attrib[attribute]
        for child in [c for c in description if unwanted(c.tag)]:
            description.remove(child)


def _packet(
    root: ET.Element | None, *, software: str, style: str | None, credit: Credit | None
) -> bytes:
    if root is None:
        root = ET.Element(_q("x", "xmpmeta"))
        ET.SubElement(root, _q("rdf", "RDF"))
    rdf = _rdf(root)
    has_description = any(
        rdf_description.find(_q("dc", "description")) is not None
        or _q("dc", "description") in rdf_description.attrib
        for rdf_description in rdf.iter(_q("rdf", "Description"))
    )
    ours = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})
    _text(ours, "Iptc4xmpExt", "DigitalSourceType", DIGITAL_SOURCE_TYPE)
    _text(ours, "xmp", "CreatorTool", software)
    credited = credit.text() if credit is not None else ""
    if style:
        _text(ours, "stylewatch", "Style", style)
    if credit is not None:
        for name, value in (
            ("StyleArtist", credit.artist),
            ("StyleTitle", credit.title),
            ("StyleYear", credit.year),
            ("StyleLicence", credit.licence),
        ):
            if value:
                _text(ours, "stylewatch", name, value)
    if credited:
        _alt(ours, "dc", "rights", f"Style after {credited}")
        _text(ours, "photoshop", "Credit", credited)
    if not has_description:
        # The photo's own caption, when it has one, is the user's and stays.
        what = f"Made by {software} from a photo by neural style transfer"
        if style:
            what += f", style {style!r}"
        if credited:
            what += f", after {credited}"
        _alt(ours, "dc", "description", what + ".")
    body = ET.tostring(root, encoding="unicode")
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'{body}\n<?xpacket end="w"?>'
    )
    return packet.encode("utf-8")


def _clean(text: str) -> str:
    return _NOT_XML.sub("", text)


def _text(parent: ET.Element, prefix: str, name: str, value: str) -> None:
    ET.SubElement(parent, _q(prefix, name)).text = _clean(value)


def _alt(parent: ET.Element, prefix: str, name: str, value: str) -> None:
    """A language alternative with one x-default entry, as dc:rights and dc:description are."""
    alt = ET.SubElement(ET.SubElement(parent, _q(prefix, name)), _q("rdf", "Alt"))
    ET.SubElement(alt, _q("rdf", "li"), {_XML_LANG: "x-default"}).text = _clean(value)
