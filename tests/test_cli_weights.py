"""`stylewatch weights path|fetch|verify`: where the checkpoint goes, fetching it, checking it.

The download itself is replaced by a local copy: tests never reach the network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daemon.cli import main
from engine.vgg import TORCHVISION_VGG19


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["weights", *args])
    return int(info.value.code or 0)


def test_path_names_the_hub_cache_file_under_torch_home(
    torch_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = torch_home / "hub" / "checkpoints" / TORCHVISION_VGG19.filename
    assert run("path") == 66  # not there yet
    assert capsys.readouterr().out.strip() == str(expected)
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"x")
    assert run("path") == 0


def test_verify_rejects_a_file_whose_checksum_is_not_the_published_one(
    hub_cached: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("verify") == 65  # random weights under the published name: not the real file
    err = capsys.readouterr().err
    assert "SHA-256" in err
    assert TORCHVISION_VGG19.sha256_prefix in err


def test_fetch_puts_the_file_where_the_config_says_and_verifies_it(
    tmp_path: Path,
    vgg_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "models" / "vgg19-local.pth"
    config = _config(tmp_path, f"weights: {target}")
    fetched: list[str] = []

    def fake_download(
        url: str, dst: str, hash_prefix: str | None = None, progress: bool = True
    ) -> None:
        fetched.append(url)
        shutil.copyfile(vgg_checkpoint, dst)

    monkeypatch.setattr("torch.hub.download_url_to_file", fake_download)
    assert run("fetch", "-c", str(config)) == 0
    assert fetched == [TORCHVISION_VGG19.url]
    assert target.is_file()
    assert "VGG19 weights OK" in capsys.readouterr().out
    assert run("fetch", "-c", str(config)) == 0  # already there: verified, not fetched again
    assert fetched == [TORCHVISION_VGG19.url]


def test_fetch_without_network_says_where_to_copy_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    target = tmp_path / "vgg.pth"
    assert run("fetch", "-c", str(_config(tmp_path, f"weights: {target}"))) == 75
    err = capsys.readouterr().err
    assert str(target) in err
    assert "Network is unreachable" in err


def test_verify_refuses_a_file_that_is_not_vgg19(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "vgg.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    assert run("verify", "-c", str(_config(tmp_path, f"weights: {garbage}"))) == 65
    assert "cannot read VGG19 weights" in capsys.readouterr().err


def _config(folder: Path, engine_line: str) -> Path:
    (folder / "inbox").mkdir(exist_ok=True)
    (folder / "paint.jpg").write_bytes(b"painting")
    config = folder / "config.yaml"
    config.write_text(
        f"input: inbox\noutput: outbox\nstate: state\nengine: {{{engine_line}}}\n"
        "styles: {s: {image: paint.jpg}}\nrules: [{match: '**/*', styles: [s]}]\n"
    )
    return config
