"""Any pixels Pillow decodes -> 8-bit RGB in sRGB: modes, transparency, ICC profiles and
colour descriptions (nclx) converted; and the sRGB profile that encoded files carry."""

from __future__ import annotations

import functools
import io
import struct

import numpy as np
import structlog
from PIL import Image, ImageCms

log = structlog.get_logger()

_WHITE = 255  # transparent areas become white: what viewers show for a transparent PNG on paper


def to_srgb(picture: Image.Image, icc: bytes | None, label: str) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB in sRGB, transparency composited onto white."""
    image = picture
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        image = _scaled_16bit(image)
    elif mode == "F":
        image = _scaled_float(image)
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("La", "RGBa"):
        image = image.convert(mode.upper())  # un-premultiply before compositing
    elif mode in ("L", "RGB") and image.has_transparency_data:
        image = image.convert("LA" if mode == "L" else "RGBA")  # a tRNS colour key
    elif mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "LAB"):
        image = image.convert("RGB")  # YCbCr, HSV, RGBX...
    if image.mode in ("LA", "RGBA"):
        image = _on_white(image)
    if image.mode == "LAB":
        # Pillow's LAB mode is CIE L*a*b*, whatever profile travels with it.
        lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
        return _transformed(image, lab, label) or image.convert("RGB")
    if icc:
        converted = _through_profile(image, icc, label)
        if converted is not None:
            return converted
    return image if image.mode == "RGB" else image.convert("RGB")


# sRGB's (BT.709's) primaries and D65 white, as CIE xy.
_SRGB_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290))


def through_primaries(image: Image.Image, nclx: object, label: str) -> Image.Image:
    """RGB described by an nclx colour box (HEIF, AVIF) instead of an ICC profile -> sRGB.

    Phones write Display P3 this way: other primaries, sRGB's curve and white. Those are
    converted; sRGB or unspecified primaries are left as they are, and what this does not handle
    (HDR curves, another white) is logged and read as sRGB.
    """
    if image.mode != "RGB" or not isinstance(nclx, dict):
        return image
    primaries, transfer = nclx.get("color_primaries"), nclx.get("transfer_characteristics")
    if primaries in (1, 2):  # BT.709 (sRGB's), unspecified
        return image
    try:
        xy = tuple(
            (float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
            for c in ("red", "green", "blue", "white")
        )
    except (KeyError, TypeError, ValueError):
        xy = ()
    if transfer not in (2, 13) or len(xy) != 4 or max(
        abs(a - b) for a, b in zip(xy[3], _SRGB_XY[3], strict=True)
    ) > 0.002:
        log.warning(
            "color_description_ignored", source=label, primaries=primaries, transfer=transfer
        )
        return image
    try:
        matrix = np.linalg.inv(_rgb_to_xyz(_SRGB_XY)) @ _rgb_to_xyz(xy)
    except np.linalg.LinAlgError:
        log.warning("color_description_ignored", source=label, primaries=primaries)
        return image
    levels = np.arange(256, dtype=np.float64) / 255
    decode_curve = np.where(levels <= 0.04045, levels / 12.92, ((levels + 0.055) / 1.055) ** 2.4)
    linear = decode_curve.astype(np.float32)[np.asarray(image)] @ matrix.T.astype(np.float32)
    linear = np.clip(linear, 0.0, 1.0)
    encoded = np.where(
        linear <= 0.0031308, linear * 12.92, 1.055 * np.power(linear, 1 / 2.4) - 0.055
    )
    return Image.fromarray(np.rint(encoded * 255).astype(np.uint8), "RGB")


def _rgb_to_xyz(xy: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The RGB -> XYZ matrix of primaries and a white point given as CIE xy."""
    columns = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in xy[:3]]).T
    wx, wy = xy[3]
    white = np.array([wx / wy, 1.0, (1 - wx - wy) / wy])
    return columns * np.linalg.solve(columns, white)


def _scaled_16bit(image: Image.Image) -> Image.Image:
    """16-bit grey scaled to 8 bits: Pillow's convert("L") clips everything above 255 to white."""
    values = np.asarray(image).astype(np.int64)
    # Mode "I" carries no range; 16-bit sources are what it holds in practice.
    levels = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
    grey = Image.fromarray(levels)
    key = image.info.get("transparency")
    if isinstance(key, int):  # a tRNS grey level marks the transparent pixels
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha)))
    return grey


def _scaled_float(image: Image.Image) -> Image.Image:
    """Float grey to 8 bits: values in [0, 1] are read as fractions, others as 0..255 levels."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0 and values.max() <= 1:
        values = values * 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _on_white(image: Image.Image) -> Image.Image:
    colour = image.mode[:-1]  # "LA" -> "L", "RGBA" -> "RGB"
    background = Image.new(colour, image.size, (_WHITE,) * len(colour))
    background.paste(image.convert(colour), mask=image.getchannel("A"))
    return background


def _through_profile(image: Image.Image, icc: bytes, label: str) -> Image.Image | None:
    """The picture converted from its embedded profile to sRGB; None to fall back to Pillow's
    plain conversion (a broken profile, or one that does not fit the pixels)."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError) as exc:
        log.warning("icc_profile_ignored", source=label, error=str(exc))
        return None
    space = profile.profile.xcolor_space.strip()
    if space != {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}.get(image.mode):
        log.warning("icc_profile_ignored", source=label, error=f"a {space} profile on {image.mode}")
        return None
    if image.mode == "RGB" and "sRGB" in (profile.profile.profile_description or ""):
        return image  # already sRGB: spare the transform
    return _transformed(image, profile, label)


def _transformed(
    image: Image.Image, profile: ImageCms.ImageCmsProfile, label: str
) -> Image.Image | None:
    try:
        # Perceptual intent: out-of-gamut colours (Display P3, CMYK) are compressed smoothly
        # rather than clipped.
        return ImageCms.profileToProfile(image, profile, _srgb_profile(), outputMode="RGB")
    except (OSError, ValueError, ImageCms.PyCMSError) as exc:
        log.warning("icc_profile_ignored", source=label, error=str(exc))
        return None


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.cache
def srgb_icc() -> bytes:
    data = bytearray(_srgb_profile().tobytes())
    # LittleCMS stamps the current time into the header (bytes 24..35); a fixed date makes
    # encode() deterministic, the same picture giving the same file in every run. The profile
    # carries no MD5 ID that the change would invalidate.
    data[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
    return bytes(data)
