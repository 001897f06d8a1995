"""A test-only engine for `stylewatch worker` (STYLEWATCH_TEST_ENGINE=hostsengine:killer_engine,
with tests/ on PYTHONPATH): the real engine, except that a photo of exactly POISON's colour kills
the process on the spot (SIGKILL), as a decoder crash or the kernel's OOM killer would. Used by
tests/test_hosts.py's poison test; never set outside tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

from PIL import Image

from daemon.executor import Engine
from daemon.process import real_engine
from engine.params import EngineConfig

POISON = (255, 0, 255)


class _Killer:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def stylize_batch(self, contents: Sequence[Image.Image], *args: Any, **kwargs: Any) -> Any:
        if any(image.convert("RGB").getpixel((0, 0)) == POISON for image in contents):
            os.kill(os.getpid(), signal.SIGKILL)
        return self._engine.stylize_batch(contents, *args, **kwargs)


def killer_engine(config: EngineConfig) -> Engine:
    return _Killer(real_engine(config))  # type: ignore[return-value]
