"""The command line and the service's modules load without torch: `stylewatch --help`, `status`
and `retry` answer at once, and `run` installs its signal handlers before torch's seconds."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["daemon.cli", "daemon.service", "engine.params", "engine"])
def test_importing_leaves_torch_out(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False", done.stderr


def test_the_engine_package_still_offers_its_names_on_demand() -> None:
    import engine

    assert engine.StyleParams().size == 512
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = engine.Nope  # type: ignore[attr-defined]
