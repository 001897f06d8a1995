"""Settings (defaults < style < rule) and styles, read from their YAML nodes.

A setting layer remembers where each value was written (`Given`), so that when the engine refuses
the merged settings (StyleParams raises a SettingError naming the field), the problem points at
the line that set it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from daemon.config import (
    CREDIT_KEYS,
    OUTPUT_KEYS,
    PARAM_KEYS,
    SETTING_KEYS,
    OutputSettings,
    Settings,
    Style,
)
from daemon.configchecks import STYLE_NAME
from daemon.confignodes import INVALID, Fields, SchemaReader
from daemon.schema import STYLE_PARAMS, Range, fields_of
from engine.metadata import Credit
from engine.params import PRESETS, StyleImage, StyleParams, StyleSpec

_STYLE_KEYS = ("image", "images", "credit")
# Every setting of `defaults`, a style or a rule but `preset`, which the loader reads first.
SETTINGS = {**fields_of(StyleParams, STYLE_PARAMS), **fields_of(OutputSettings)}


@dataclass(frozen=True)
class Given:
    """A parsed setting override and where it was written, to blame it when the engine refuses."""

    value: object
    node: yaml.Node
    key: str


class SettingsReader(SchemaReader):
    def overrides(self, fields: Fields, key: str) -> dict[str, Given]:
        """The setting keys of a mapping (defaults, a style, a rule), as the engine's types."""
        values = self.read_fields(fields, key, SETTINGS)
        layer = {
            name: Given(value, fields[name][1], f"{key}.{name}") for name, value in values.items()
        }
        if "preset" in fields:
            preset = self.choice(fields["preset"][1], f"{key}.preset", tuple(PRESETS))
            if preset is not INVALID:
                for name, value in PRESETS[str(preset)].items():
                    layer.setdefault(name, Given(value, fields["preset"][1], f"{key}.preset"))
        return layer

    def resolve(
        self, layers: Sequence[dict[str, Given]], node: yaml.Node, key: str
    ) -> Settings | None:
        """Defaults, then a style's overrides, then a rule's, built into the engine's objects."""
        merged: dict[str, Given] = {}
        for layer in layers:
            # A step count and a time budget answer one question: the more specific layer's
            # answer wins over an earlier one's (a preset's steps are not an answer).
            if "steps" in layer and not layer["steps"].key.endswith(".preset"):
                merged.pop("seconds", None)
            elif "seconds" in layer and layer["seconds"].value is not None:
                merged.pop("steps", None)
            merged.update(layer)
        budgeted = "seconds" in merged and merged["seconds"].value is not None
        if budgeted and "steps" in merged and merged["steps"].key.endswith(".preset"):
            del merged["steps"]  # the budget plans the steps; the preset gives the shape
        params_args = {k: s.value for k, s in merged.items() if k in PARAM_KEYS}
        try:
            params = StyleParams(**params_args)  # type: ignore[arg-type]
            params.layer_weights()
            params.schedule()
        except ValueError as exc:
            # The engine names the field it refuses (SettingError); blame where it was written.
            blamed = merged.get(getattr(exc, "field", ""))
            if blamed is None:
                self.problem(node, key, str(exc))
            else:
                self.problem(blamed.node, blamed.key, str(exc))
            return None
        output_args = {k: s.value for k, s in merged.items() if k in OUTPUT_KEYS}
        return Settings(params, OutputSettings(**output_args))  # type: ignore[arg-type]


class StyleReader(SettingsReader):
    def __init__(self, shown: Path, base: Path, *, require_input: bool = True) -> None:
        super().__init__(shown, base, require_input=require_input)
        self.broken_styles: set[str] = set()  # defined, but with problems of their own

    def styles(
        self,
        entry: tuple[yaml.Node, yaml.Node] | None,
        root: yaml.Node,
        defaults: dict[str, Given],
    ) -> tuple[dict[str, Style], dict[str, dict[str, Given]]]:
        styles: dict[str, Style] = {}
        layers: dict[str, dict[str, Given]] = {}
        if entry is None:
            self.problem(root, "styles", "missing: name at least one style")
            return styles, layers
        fields = self.mapping(entry[1], "styles")
        if fields is None:
            return styles, layers
        if not fields:
            self.problem(entry[1], "styles", "name at least one style")
        for name, (name_node, node) in fields.items():
            key = f"styles.{name}"
            valid_name = bool(STYLE_NAME.fullmatch(name))
            if not valid_name:
                self.problem(
                    name_node,
                    key,
                    "a style name may only use letters, digits, '-' and '_' (it becomes part of "
                    "output file names)",
                )
            style_fields = self.mapping(node, key)
            if style_fields is None:
                self.broken_styles.add(name)
                continue
            self.check_keys(style_fields, _STYLE_KEYS + SETTING_KEYS, key)
            images = self.style_images(style_fields, node, key)
            credit = self.credit(style_fields.get("credit"), f"{key}.credit")
            layer = self.overrides(style_fields, key)
            layers[name] = layer
            # Settings are checked once per style here, so an unused style still gets checked.
            self.resolve([defaults, layer], node, key)
            if not (images and valid_name) or credit is INVALID:
                self.broken_styles.add(name)
            else:
                styles[name] = Style(
                    name=name,
                    spec=StyleSpec(tuple(images), name=name),
                    overrides=MappingProxyType({k: s.value for k, s in layer.items()}),
                    credit=credit if isinstance(credit, Credit) else None,
                )
        return styles, layers

    def credit(self, entry: tuple[yaml.Node, yaml.Node] | None, key: str) -> object:
        """A style's `credit:` mapping (artist, title, year, licence; all optional texts)."""
        if entry is None:
            return None
        fields = self.mapping(entry[1], key)
        if fields is None:
            return INVALID
        self.check_keys(fields, CREDIT_KEYS, key)
        values: dict[str, str] = {}
        ok = True
        for name in CREDIT_KEYS:
            if name not in fields:
                continue
            node = fields[name][1]
            value = self.scalar(node)
            # YAML reads `year: 1889` as a number; a credit is text either way.
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                self.problem(node, f"{key}.{name}", f"expected text, got {self.describe(node)}")
                ok = False
            elif any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > 500:
                self.problem(
                    node,
                    f"{key}.{name}",
                    "must be one line of at most 500 characters, without control characters",
                )
                ok = False
            elif value.strip():
                values[name] = value.strip()
        if not ok:
            return INVALID
        return Credit(**values) if values else None

    def style_images(self, fields: Fields, node: yaml.Node, key: str) -> list[StyleImage]:
        if ("image" in fields) == ("images" in fields):
            self.problem(node, key, "give either `image: path` or `images: [path, ...]`")
            return []
        if "image" in fields:
            path = self.existing_file(fields["image"][1], f"{key}.image")
            return [] if path is None else [StyleImage(path)]
        list_node = fields["images"][1]
        if not isinstance(list_node, yaml.SequenceNode) or not list_node.value:
            self.problem(list_node, f"{key}.images", "expected a list of paintings")
            return []
        images: list[StyleImage] = []
        for index, item in enumerate(list_node.value):
            item_key = f"{key}.images[{index}]"
            weight: object = 1.0
            if isinstance(item, yaml.MappingNode):
                item_fields = self.mapping(item, item_key) or {}
                self.check_keys(item_fields, ("path", "weight"), item_key)
                if "path" not in item_fields:
                    self.problem(item, item_key, "missing: path")
                    continue
                path = self.existing_file(item_fields["path"][1], f"{item_key}.path")
                if "weight" in item_fields:
                    weight = self.real(item_fields["weight"][1], f"{item_key}.weight", Range(gt=0))
            else:
                path = self.existing_file(item, item_key)
            if path is not None and isinstance(weight, float):
                images.append(StyleImage(path, weight))
        return images if len(images) == len(list_node.value) else []
