"""stylewatch's engine: neural style transfer (Gatys et al.) with a resident VGG19.

Pixels in, pixels out: it knows nothing of folders, YAML, journals or logging set-up.

The package imports torch lazily: `engine.params`, `engine.errors` and `engine.layers` load
without it, so the command line answers `--help`, `status` and `check` in a fraction of a second
and installs its signal handlers before the seconds that importing torch takes. The names below
are resolved on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.errors import (
        BadImageError,
        Cancelled,
        EngineError,
        NumericalError,
        OutOfMemoryError,
        StyleError,
        WeightsError,
    )
    from engine.params import (
        EngineConfig,
        LossTerms,
        Progress,
        Snapshot,
        StyleImage,
        StyleParams,
        StyleSpec,
    )
    from engine.stylizer import Stylized, Stylizer

_HOMES = {
    "BadImageError": "engine.errors",
    "Cancelled": "engine.errors",
    "EngineError": "engine.errors",
    "NumericalError": "engine.errors",
    "OutOfMemoryError": "engine.errors",
    "StyleError": "engine.errors",
    "WeightsError": "engine.errors",
    "EngineConfig": "engine.params",
    "LossTerms": "engine.params",
    "Progress": "engine.params",
    "Snapshot": "engine.params",
    "StyleImage": "engine.params",
    "StyleParams": "engine.params",
    "StyleSpec": "engine.params",
    "Stylized": "engine.stylizer",
    "Stylizer": "engine.stylizer",
}

__all__ = [
    "BadImageError",
    "Cancelled",
    "EngineConfig",
    "EngineError",
    "LossTerms",
    "NumericalError",
    "OutOfMemoryError",
    "Progress",
    "Snapshot",
    "StyleError",
    "StyleImage",
    "StyleParams",
    "StyleSpec",
    "Stylized",
    "Stylizer",
    "WeightsError",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
