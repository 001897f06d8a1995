"""Decodes one photo with an optional Pillow plugin, in a process of its own.

engine.decoding runs this file by its path (`python decode_child.py PLUGIN OPTIONS FORMAT
MAX_PIXELS`) for the formats engine.formats marks `isolated`: their decoders are C libraries
(libheif, libde265) that have crashed the whole process on damaged files, and a photo must never
take the daemon down with it. It imports nothing of the engine, so it starts in a fraction of a
second.

The photo's bytes come on stdin. The answer on stdout is one line of JSON, then, on success, the
raw pixels: {"ok": true, "mode", "size", "info": {exif, xmp, icc_profile as base64}} or {"ok":
false, "type", "error", "reason"}; "nclx" carries a colour description given instead of an ICC
profile. A crash shows to the caller as the signal that ended it.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import sys

KEPT_INFO = ("exif", "xmp", "icc_profile")


def main(argv: list[str]) -> None:
    plugin, options, pillow_format, max_pixels = argv[1], json.loads(argv[2]), argv[3], int(argv[4])
    from PIL import Image

    module_name, _, register = plugin.partition(":")
    getattr(importlib.import_module(module_name), register)(**options)
    data = sys.stdin.buffer.read()
    try:
        with Image.open(io.BytesIO(data), formats=[pillow_format]) as picture:
            width, height = picture.size
            if width * height > max_pixels:
                _reply({"ok": False, "reason": "too_large", "size": [width, height]})
                return
            picture.load()
            raw = picture.tobytes()
            info = {
                key: base64.b64encode(value).decode("ascii")
                for key in KEPT_INFO
                if isinstance(value := picture.info.get(key), bytes) and value
            }
            # The size after decoding: a damaged file's pixels may not match its header.
            header = {"ok": True, "mode": picture.mode, "size": list(picture.size), "info": info}
            nclx = picture.info.get("nclx_profile")
            if isinstance(nclx, dict):  # colours described without an ICC profile
                header["nclx"] = {k: v for k, v in nclx.items() if isinstance(v, int | float)}
    except Exception as exc:  # every failure goes back to the caller, which classifies it
        reason = "too_large" if isinstance(exc, Image.DecompressionBombError) else None
        _reply({"ok": False, "type": type(exc).__name__, "error": str(exc), "reason": reason})
        return
    _reply(header, raw)


def _reply(header: dict[str, object], raw: bytes = b"") -> None:
    out = sys.stdout.buffer
    out.write(json.dumps(header).encode("utf-8") + b"\n")
    out.write(raw)
    out.flush()


if __name__ == "__main__":
    main(sys.argv)
