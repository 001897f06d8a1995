"""`stylewatch stylize` run as a new user runs it: the installed script, real photo and painting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.vgg import TORCHVISION_VGG19

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
STYLEWATCH = Path(sys.executable).parent / "stylewatch"


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STYLEWATCH), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_stylizes_a_real_photo_with_a_real_painting(vgg_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cat.webp"
    done = _run(
        "stylize",
        SAMPLES / "chelsea.png",
        "-s",
        SAMPLES / "starry_night.jpg",
        "-s",
        SAMPLES / "the_scream.jpg",
        "--blend",
        "0.7,0.3",
        "-o",
        out,
        "--size",
        "64",
        "--steps",
        "4",
        "--seed",
        "3",
        "--weights",
        vgg_checkpoint,
        "--device",
        "cpu",
        "--preserve-colors",
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as result:
        assert result.format == "WEBP"
        assert max(result.size) == 64
        assert result.size == (64, 43)  # chelsea.png is 451 x 300
    assert "64x43" in done.stdout
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside it


def test_missing_weights_say_where_to_put_them(torch_home: Path, tmp_path: Path) -> None:
    done = _run(
        "stylize",
        SAMPLES / "chelsea.png",
        "-s",
        SAMPLES / "starry_night.jpg",
        "-o",
        tmp_path / "out.jpg",
        "--no-download",
        env={"TORCH_HOME": str(torch_home)},
    )
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(torch_home / "hub" / "checkpoints" / TORCHVISION_VGG19.filename) in lines[0]
    assert TORCHVISION_VGG19.url in lines[0]
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize(
    ("content", "extra", "code", "words"),
    [
        ("text.jpg", (), 65, "not an image"),
        ("missing.jpg", (), 66, "no such file"),
        ("photo.png", ("--size", "0"), 64, "size must be"),
        ("photo.png", ("--device", "cuda:7"), 64, "cuda:7"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    vgg_checkpoint: Path,
    tmp_path: Path,
    content: str,
    extra: tuple[str, ...],
    code: int,
    words: str,
) -> None:
    (tmp_path / "text.jpg").write_text("hello, I am not a photo\n")
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "photo.png")
    done = _run(
        "stylize",
        tmp_path / content,
        "-s",
        SAMPLES / "starry_night.jpg",
        "-o",
        tmp_path / "out.png",
        "--weights",
        vgg_checkpoint,
        "--device",
        "cpu",
        "--steps",
        "1",
        *extra,
    )
    assert done.returncode == code, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert words in done.stderr.lower()
    assert not (tmp_path / "out.png").exists()


def test_unknown_output_format_is_refused_before_any_work(tmp_path: Path) -> None:
    done = _run(
        "stylize",
        SAMPLES / "chelsea.png",
        "-s",
        SAMPLES / "starry_night.jpg",
        "-o",
        tmp_path / "out.gif",
    )
    assert done.returncode == 64
    assert "out.gif" in done.stderr


def test_an_output_folder_that_does_not_exist_is_refused_and_not_created(
    vgg_checkpoint: Path, tmp_path: Path
) -> None:
    target = tmp_path / "no" / "such" / "dir" / "x.jpg"
    done = _run(
        "stylize",
        SAMPLES / "chelsea.png",
        "-s",
        SAMPLES / "starry_night.jpg",
        "-o",
        target,
        "--weights",
        vgg_checkpoint,
        "--device",
        "cpu",
        "--steps",
        "1",
    )
    assert done.returncode == 73, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"stylewatch: error: cannot write {target}: the folder {target.parent} does not exist"
    ]
    assert not (tmp_path / "no").exists()
