"""Named presets (engine, CLI, config) and the `auto` precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import one_rule_config

from daemon.config import load_config
from daemon.errors import ConfigError
from engine.params import PRESETS, StyleParams, with_preset
from engine.stylizer import resolve_precision


def test_presets_fix_scales_and_steps_and_fast_is_cheapest() -> None:
    fast = with_preset(StyleParams(), "fast")
    best = with_preset(StyleParams(), "best")
    assert (fast.steps, fast.scales) == (120, 3)
    assert with_preset(StyleParams(), "balanced").schedule() == StyleParams().schedule()
    # Cost grows ~4x per doubling of the edge: weigh each scale's steps by its pixel count.
    cost = lambda p: sum(steps * (size / p.size) ** 2 for size, steps in p.schedule())  # noqa: E731
    assert cost(fast) < cost(StyleParams()) < cost(best)
    with pytest.raises(ValueError, match="preset must be one of"):
        with_preset(StyleParams(), "ludicrous")


def test_a_config_preset_expands_and_keys_beside_it_win(tmp_path: Path) -> None:
    config = load_config(one_rule_config(tmp_path, "{preset: fast, steps: 90, size: 256}"))
    params = config.rules[0].outputs[0].settings.params
    assert params.steps == 90  # explicit beats the preset in the same mapping
    assert params.scale_step_ratio == PRESETS["fast"]["scale_step_ratio"]
    assert params.size == 256


def test_a_rules_preset_overrides_the_defaults_steps(tmp_path: Path) -> None:
    config = load_config(one_rule_config(tmp_path, "{steps: 500}", "    preset: best\n"))
    assert config.rules[0].outputs[0].settings.params.steps == PRESETS["best"]["steps"]


def test_an_unknown_preset_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(one_rule_config(tmp_path, "{preset: fats}"))
    assert "c.yaml:5" in str(info.value)
    assert "'fast'" in str(info.value)


def test_auto_precision_takes_bf16_where_the_cpu_has_it() -> None:
    cpu = torch.device("cpu")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("fp16", cpu) == "fp16"
    assert resolve_precision("fp32", cpu) == "fp32"
