"""engine.formats and the formats it lists: the table, suffixes, AVIF and HEIC in and out."""

from __future__ import annotations

import pytest

from engine.images import format_for_suffix

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
