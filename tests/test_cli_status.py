"""`stylewatch status` and `retry` read the journal: an input folder that is away is no refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from harness import MINIMAL

from daemon.cli import main
from daemon.config import load_config
from daemon.errors import ConfigError
from daemon.journal import Journal

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The issue's config with its paintings and an empty journal, and no input folder."""
    (tmp_path / "styles").mkdir()
    for name in ("starry_night.jpg", "the_scream.jpg", "shipwreck.jpg"):
        shutil.copyfile(SAMPLES / name, tmp_path / "styles" / name)
    Journal.open(tmp_path / "state").close()
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL)
    return path


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def test_status_and_retry_answer_while_the_input_folder_is_away(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("status", "-c", str(config), "--json") == 0
    out, err = capsys.readouterr()
    status = json.loads(out)
    assert status["failures"] == []
    assert not any(status["counts"].values())  # an empty journal, read
    assert f"the input folder {config.parent / 'inbox'} is missing" in err
    assert run("retry", "-c", str(config)) == 0
    assert "0 failed job(s) queued again" in capsys.readouterr().out


def test_check_and_run_still_refuse_a_missing_input_folder(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("check", "-c", str(config)) == 78
    assert "inbox does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="inbox does not exist"):
        load_config(config)
    assert load_config(config, require_input=False).input == config.parent / "inbox"


def test_an_input_that_is_a_file_is_refused_even_for_status(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (config.parent / "inbox").write_text("not a folder")
    assert run("status", "-c", str(config)) == 78
    assert "inbox is not a folder" in capsys.readouterr().err
