"""config.example.yaml against the schema (daemon/schema.py, the fields of daemon/config.py):
every setting the schema knows is shown, no key it does not know, and the defaults agree."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml

from daemon.config import (
    BrokerConfig,
    EngineSettings,
    HooksConfig,
    LoggingSettings,
    MetricsConfig,
    OutputSettings,
    RetrySettings,
    Settings,
    WatchConfig,
    WebConfig,
    load_config,
)
from daemon.configload import _TOP_KEYS, SCHEMA
from daemon.schema import ENGINE_CONFIG, STYLE_PARAMS, Field, Range
from engine.params import DEFAULT_STEPS, EngineConfig, StyleParams

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config.example.yaml").read_text(encoding="utf-8")
KEY_LINE = re.compile(r"^  (# )?([a-z_]+):(?: |$)")


def documented(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> the comment lines above the key (set or commented out), from the text."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    comments: list[str] = []
    shared: list[str] = []  # examples commented out one under the other share the words above
    for line in text.splitlines():
        if top := re.match(r"^([a-z_]+):", line):
            section, comments, shared = top.group(1), [], []
            sections[section] = {}
        elif (key := KEY_LINE.match(line)) and section:
            commented = bool(key.group(1))
            block = comments or (shared if commented else [])
            sections[section][key.group(2)] = block
            comments, shared = [], block if commented else []
        elif line.startswith("  #") and section:
            comments.append(line.strip("# "))
            shared = []
        else:
            comments, shared = [], []
    return sections


def _stated_default(block: str) -> str | None:
    """The default a comment states: `(default 300; ...)` or `auto (default)`."""
    after = re.search(r"\(default ([^\s,;)]+)", block)
    if after:
        return after.group(1).rstrip(":")
    before = re.search(r"(\S+) \(default[):;]", block)
    return before.group(1).lstrip("(") if before else None


# How the example says that a setting is unset by default, and what that means.
UNSET = ("unset (default", "(default:", "default: none", "null (default", "(default null")


def _same(stated: str, default: object) -> bool:
    value = yaml.safe_load(stated)
    if isinstance(default, bool | str):
        return bool(value == default)
    if isinstance(default, int | float):
        return float(value) == float(default)
    if default == ():
        return stated in ("none", "[]")
    if isinstance(default, tuple) and isinstance(value, str):
        return (value,) == default  # `devices: auto` is ("auto",)
    return isinstance(default, tuple) and tuple(value) == default


def _settings() -> list[tuple[str, str, Field]]:
    return [(section, name, f) for section, fields in SCHEMA.items() for name, f in fields.items()]


def test_every_setting_has_one_line_of_doc() -> None:
    for section, name, f in _settings():
        assert f.setting.doc.strip(), f"{section}.{name} has no doc"
        assert "\n" not in f.setting.doc, f"{section}.{name}: the doc is one line"


def test_the_engine_tables_describe_every_field_of_the_engine() -> None:
    # A new engine setting must be described (and so readable from the config) or left out here
    # on purpose.
    assert set(ENGINE_CONFIG) == {f.name for f in dataclasses.fields(EngineConfig)}
    assert set(STYLE_PARAMS) == {f.name for f in dataclasses.fields(StyleParams)}


def test_the_example_shows_every_setting_and_no_other() -> None:
    shown = documented(EXAMPLE)
    assert set(shown) <= set(_TOP_KEYS)
    for section, fields in SCHEMA.items():
        assert section in shown, f"config.example.yaml has no {section}: section"
        extra = {"preset"} if section == "defaults" else set()
        assert set(shown[section]) == set(fields) | extra, section


@pytest.mark.parametrize(("section", "name"), [(s, n) for s, n, _ in _settings()])
def test_the_defaults_in_the_example_comments_are_the_schemas(section: str, name: str) -> None:
    f = SCHEMA[section][name]
    block = " ".join(documented(EXAMPLE)[section][name])
    stated = _stated_default(block)
    if name == "steps":
        assert stated == str(DEFAULT_STEPS)  # unset: planned by `seconds`, else DEFAULT_STEPS
    elif f.default is None:
        assert any(words in block.lower() for words in UNSET), f"{section}.{name}: {block}"
    elif stated is not None:
        assert _same(stated, f.default), f"{section}.{name}: example {stated}, schema {f.default}"
    else:
        # No default in words: the example sets it, and the values test below compares.
        assert re.search(rf"^  {name}:", EXAMPLE, re.MULTILINE), f"{section}.{name}"
    bounds = re.search(r"\b(\d[\d.e-]*)\.\.(\d[\d.e-]*)\b", block)
    if bounds and isinstance(f.setting.check, Range):
        low = f.setting.check.ge if f.setting.check.ge is not None else f.setting.check.gt
        high = f.setting.check.le if f.setting.check.le is not None else f.setting.check.lt
        assert (float(bounds.group(1)), float(bounds.group(2))) == (low, high), name


def test_the_values_the_example_sets_are_the_defaults(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "run" / "inbox").mkdir(parents=True)
    shutil.copytree(REPO / "samples", site / "samples")
    shutil.copyfile(REPO / "config.example.yaml", site / "config.yaml")

    config = load_config(site / "config.yaml")

    assert config.watch == WatchConfig()
    assert config.engine == EngineSettings()
    assert config.engine.engine == EngineConfig()
    assert config.logging == LoggingSettings()
    assert config.retry == RetrySettings()
    assert config.defaults == Settings(StyleParams(), OutputSettings())
    assert config.web == WebConfig()
    assert config.hooks == HooksConfig()
    assert config.metrics == MetricsConfig()
    assert config.broker == BrokerConfig()


def test_an_optional_setting_takes_null_as_unset(tmp_path: Path) -> None:
    # The schema reads every `X | None` field alike: `null` is its default, unset. (The hand-written
    # sections refused it for engine.weights, memory_budget_mb, threads and broker.url.)
    site = tmp_path / "site"
    (site / "run" / "inbox").mkdir(parents=True)
    shutil.copytree(REPO / "samples", site / "samples")
    text = EXAMPLE.replace("  # threads: 2", "  threads: null\n  weights: null")
    (site / "config.yaml").write_text(text.replace("  # url: redis", "  url: null\n  # url: redis"))

    config = load_config(site / "config.yaml")

    assert config.engine.threads is None
    assert config.engine.engine.weights is None
    assert config.broker.url is None
