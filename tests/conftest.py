"""Shared fixtures: a VGG19 with random weights saved as a real checkpoint, small test images.

Nothing here downloads: the checkpoint is made locally and loaded through the same code path that
users use (an explicit path, or torch's hub cache under a temporary TORCH_HOME).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import torch
from harness import Fleet
from PIL import Image
from redisharness import RedisServer, redis_server_binary
from webharness import Web

from engine.params import EngineConfig
from engine.stylizer import Stylizer
from engine.vgg import TORCHVISION_VGG19, build_vgg19_features

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


@pytest.fixture(autouse=True)
def _structlog_reset_after_each_test() -> Iterator[None]:
    """A test that runs the CLI in-process configures structlog onto pytest's captured stderr,
    which is closed after it: the next test must not log there, whatever the order."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def vgg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's VGG19 `features` with seeded random weights, saved with the real key layout."""
    torch.manual_seed(1234)
    features = build_vgg19_features()
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vgg19-random.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME: torch's hub cache lives under it."""
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def hub_cached(torch_home: Path, vgg_checkpoint: Path) -> Path:
    """The random checkpoint placed where torch's hub cache keeps torchvision's VGG19."""
    target = torch_home / "hub" / "checkpoints" / TORCHVISION_VGG19.filename
    target.parent.mkdir(parents=True)
    shutil.copyfile(vgg_checkpoint, target)
    return target


@pytest.fixture
def fleet(tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path]) -> Iterator[Fleet]:
    """Real daemons on one set of folders (tests/harness.py), stopped after the test."""
    crew = Fleet(tmp_path, vgg_checkpoint, style_files)
    yield crew
    crew.close()


@pytest.fixture(scope="session")
def stylizer(vgg_checkpoint: Path) -> Stylizer:
    """One resident CPU Stylizer for the session, as the daemon keeps one."""
    return Stylizer(EngineConfig(device="cpu", weights=vgg_checkpoint, download=False))


@pytest.fixture(scope="session")
def style_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small paintings made from the bundled samples (fast to decode at test sizes)."""
    folder = tmp_path_factory.mktemp("styles")
    out = []
    for name in ("starry_night.jpg", "the_scream.jpg"):
        with Image.open(SAMPLES / name) as im:
            small = im.convert("RGB")
            small.thumbnail((96, 96))
        path = folder / name
        small.save(path, quality=95)
        out.append(path)
    return out[0], out[1]


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    with Image.open(SAMPLES / "chelsea.png") as im:
        picture = im.convert("RGB")
    picture.thumbnail((96, 96))
    return picture


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def webs() -> Iterator[list[Web]]:
    """`stylewatch web` processes a test started (tests/webharness.py), killed after it."""
    started: list[Web] = []
    yield started
    for web in started:
        web.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a Unix socket under tmp_path, persistence on (tests/redisharness.py).
    CI installs redis-server (.ci/run), so this skip only spares a local run without it."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
