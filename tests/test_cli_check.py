"""`stylewatch check` says what `run` will meet: weights that cannot be fetched are an error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daemon.cli import main
from engine.vgg import TORCHVISION_VGG19

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def _config(folder: Path, engine: str) -> Path:
    (folder / "inbox").mkdir(exist_ok=True)
    shutil.copyfile(SAMPLES / "starry_night.jpg", folder / "paint.jpg")
    config = folder / "config.yaml"
    config.write_text(
        f"input: inbox\noutput: outbox\nstate: state\nengine: {{{engine}}}\n"
        "styles: {s: {image: paint.jpg}}\nrules: [{match: '**/*', styles: [s]}]\n"
    )
    return config


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    tried: list[str] = []

    def unreachable(url: str, *args: object, **kwargs: object) -> None:
        tried.append(url)
        raise OSError("Network is unreachable")

    monkeypatch.setattr("torch.hub.download_url_to_file", unreachable)
    return tried


def test_offline_without_weights_is_an_error_with_the_fetch_and_copy_hint(
    tmp_path: Path,
    torch_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tried = _offline(monkeypatch)
    config = _config(tmp_path, "download: false")
    assert run("check", "-c", str(config)) == 78
    out, err = capsys.readouterr()
    expected = torch_home / "hub" / "checkpoints" / TORCHVISION_VGG19.filename
    assert "config OK" not in out
    assert "engine.download is off" in err
    assert f"stylewatch weights fetch -c {config}" in err
    assert f"copy the file to {expected}" in err
    assert tried == []  # check never downloads


def test_a_named_weights_file_that_is_missing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _offline(monkeypatch)
    target = tmp_path / "models" / "vgg.pth"
    assert run("check", "-c", str(_config(tmp_path, f"weights: {target}"))) == 78
    err = capsys.readouterr().err
    assert "stylewatch weights fetch" in err
    assert f"copy the file to {target}" in err


def test_a_download_that_will_be_tried_is_a_warning_not_an_error(
    tmp_path: Path,
    torch_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tried = _offline(monkeypatch)
    assert run("check", "-c", str(_config(tmp_path, "download: true"))) == 0
    out, err = capsys.readouterr()
    assert "config OK" in out
    assert "warning:" in err
    assert "a download will be tried at start" in err
    assert "stylewatch weights fetch" in err
    assert tried == []


def test_weights_in_the_hub_cache_are_named(
    tmp_path: Path, hub_cached: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("check", "-c", str(_config(tmp_path, "download: false"))) == 0
    out, err = capsys.readouterr()
    assert f"weights: {hub_cached}" in out
    assert "warning" not in err
