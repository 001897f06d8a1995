"""The engine's errors. The daemon classifies failures by these types."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class WeightsError(EngineError):
    """The VGG19 checkpoint is missing, unreadable or not a VGG19."""


class BadImageError(EngineError):
    """A photo or painting that cannot be used: retrying will not help.

    `reason` is a short stable code for logs and the journal: empty, not_an_image, truncated,
    too_large, corrupt, unreadable, unsupported_format (a format whose optional decoder is not
    installed: the message names the package to install).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StyleError(EngineError):
    """A style's painting is missing or unusable: every photo of that style would fail."""


class OutOfMemoryError(EngineError):
    """The device ran out of memory; a smaller batch or size may still fit."""


class NumericalError(EngineError):
    """The loss became NaN or infinite (usually fp16 overflow); the image would be garbage."""


class Cancelled(EngineError):  # noqa: N818 - a state, not a fault
    """The caller's should_stop() asked the optimisation to stop."""
