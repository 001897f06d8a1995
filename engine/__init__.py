"""stylewatch's engine: neural style transfer (Gatys et al.) with a resident VGG19.

Pixels in, pixels out: it knows nothing of folders, YAML, journals or logging set-up.
"""

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
