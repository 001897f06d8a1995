"""What a config setting is: its doc, its bounds and its unit, beside the field that holds it.

The daemon's own settings carry a `Setting` in their dataclass field's metadata
(`field(default=600.0, metadata=setting(doc=..., check=Range(gt=0), unit="seconds"))`); the
engine's (EngineConfig, StyleParams) get theirs from the tables below, keyed by field name, so that
engine/ learns nothing of the config. The default is always the field's own: it is never repeated
here. daemon/configload.py reads YAML nodes by these descriptions; tests/test_config_schema.py
checks config.example.yaml against them.

Nothing here reads YAML: this module is imported by the data model (daemon/config.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_type_hints

# `check` callables take the value read and return a problem's message, or None when it is fine.
Check = Callable[[Any], "str | None"]

DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?", re.ASCII)


@dataclass(frozen=True)
class Range:
    """Bounds of a number. Its message reads "must be between 1 and 64, got 0"."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def wanted(self, unit: str = "") -> str:
        """The bounds in words: `between 0 and 3600 seconds`, `a number of MiB >= 1`, `> 0`."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            return f"between {low:g} and {high:g}" + (f" {unit}" if unit else "")
        op, bound = (">=", self.ge) if self.ge is not None else (">", self.gt)
        if bound is None:
            op, bound = ("<=", self.le) if self.le is not None else ("<", self.lt)
        return f"a number of {unit} {op} {bound:g}" if unit else f"{op} {bound:g}"


@dataclass(frozen=True)
class Items:
    """A setting that is one text or a list of texts, checked item by item."""

    each: Check | None = None  # the message for one bad item (its key gets `[index]`)
    empty: str | None = None  # the message for an empty list; None: an empty list is fine
    list_only: str | None = None  # the message for a single text where only a list will do
    clean: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None  # e.g. lower-case


@dataclass(frozen=True)
class Setting:
    """One setting of the config, as its field's metadata: how it is documented and checked."""

    doc: str  # one line, for `stylewatch check` and the docs test
    check: Range | Check | None = None
    unit: str = ""  # shown in range messages: seconds, MiB, px
    choices: tuple[str, ...] = ()  # for a `str` field that takes one of a few words
    alias: Callable[[object], str | None] | None = None  # another spelling of a choice
    items: Items | None = None  # for a tuple of texts
    file: bool = False  # a Path that must name an existing file (a painting)


def setting(
    doc: str,
    *,
    check: Range | Check | None = None,
    unit: str = "",
    choices: Sequence[str] = (),
    alias: Callable[[object], str | None] | None = None,
    items: Items | None = None,
    file: bool = False,
) -> Mapping[str, Setting]:
    """A dataclass field's metadata: `field(default=..., metadata=setting(doc=...))`."""
    described = Setting(doc, check, unit, tuple(choices), alias, items, file)
    return MappingProxyType({"setting": described})


@dataclass(frozen=True)
class Field:
    """A setting of a section as the loader reads it: its name, type, default and description."""

    name: str
    kind: object  # the field's type, as get_type_hints gives it
    default: object
    setting: Setting


def fields_of(cls: type, table: Mapping[str, Setting] | None = None) -> dict[str, Field]:
    """The settings of a dataclass, in field order: from the fields' metadata, or from `table`
    for the engine's classes. A field without a description is not a config setting."""
    hints = get_type_hints(cls)
    found: dict[str, Field] = {}
    for f in dataclasses.fields(cls):
        described = table.get(f.name) if table is not None else f.metadata.get("setting")
        if described is None:
            continue
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        found[f.name] = Field(f.name, hints[f.name], default, described)
    return found


def suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _device(value: str) -> str | None:
    if DEVICE.fullmatch(value):
        return None
    return f"unknown device {value!r}{suggest(value, ('auto', 'cpu', 'cuda'))}; " + (
        "use auto, cpu, cuda, cuda:N or mps"
    )


def _weights(value: object) -> str | None:
    # A missing file is not a config error: `stylewatch weights fetch` puts it there, and
    # `check` and the service's start say where to get it.
    if isinstance(value, Path) and value.is_dir():
        return f"{value} is a folder; name the checkpoint file"
    return None


# The engine's EngineConfig, as the config's `engine:` section shows it (beside the daemon's own
# EngineSettings). Bounds the engine checks itself are not repeated; these are the config's.
ENGINE_CONFIG: Mapping[str, Setting] = MappingProxyType(
    {
        "device": Setting(
            "auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps", _device
        ),
        "weights": Setting("the VGG19 checkpoint file; unset: torch's hub cache", _weights),
        "preprocess": Setting("torchvision, or caffe for a Caffe-converted VGG19"),
        "precision": Setting("precision of the VGG19 passes: auto, fp32, bf16 or fp16"),
        "download": Setting("fetch the checkpoint when it is missing and `weights` is unset"),
        "style_cache_size": Setting("style targets kept in memory", Range(ge=1, le=4096)),
        "memory_budget_mb": Setting(
            "memory one optimisation pass may use; unset: 80% of the GPU, half the RAM",
            Range(ge=1),
            unit="MiB",
        ),
        "cuda_graphs": Setting("replay each scale's network pass as a captured CUDA graph"),
    }
)

# The engine's StyleParams: every one may be set in `defaults`, a style or a rule. Their bounds
# are the engine's (StyleParams refuses a bad value and names the field); only the words are here.
STYLE_PARAMS: Mapping[str, Setting] = MappingProxyType(
    {
        "size": Setting("long edge of the result", unit="px"),
        "steps": Setting("optimisation steps over all scales; unset: planned or 300"),
        "seconds": Setting("time budget of one photo's optimisation", unit="seconds"),
        "scales": Setting("coarse-to-fine: optimise at this many sizes"),
        "scale_step_ratio": Setting("each finer scale gets 1/ratio of the steps before it"),
        "min_scale_size": Setting("scales smaller than this are skipped", unit="px"),
        "content_weight": Setting("how much the result keeps the photo's content"),
        "style_weight": Setting("how much the result takes the painting's texture"),
        "tv_weight": Setting("smoothing of high-frequency noise"),
        "content_layers": Setting("VGG19 layers of the content loss"),
        "style_layers": Setting("VGG19 layers of the style loss"),
        "style_layer_weights": Setting("relative weights of style_layers; empty: equal"),
        "style_scale": Setting("painting size relative to the photo"),
        "pooling": Setting("max or avg pooling in VGG19"),
        "optimizer": Setting("lbfgs or adam"),
        "learning_rate": Setting("unset: 1.0 for lbfgs, 0.02 for adam"),
        "init": Setting("start from the photo (content) or from noise (random)"),
        "init_image": Setting("start from this picture instead", file=True),
        "seed": Setting("random seed, for repeatable results"),
        "preserve_colors": Setting("none, luminance or histogram"),
    }
)
