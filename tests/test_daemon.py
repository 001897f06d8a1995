"""The real daemon as a subprocess: real engine (random weights, tiny sizes), real folders."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from harness import CONFIG, OUTPUT_MARKER, STYLEWATCH, Daemon, photo, wait_until
from PIL import Image

from engine.stylizer import resolve_precision


@pytest.fixture
def make_daemon(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path]
) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(steps: int = 2, settle: float = 0.3) -> Daemon:
        (tmp_path / "inbox").mkdir(exist_ok=True)
        config = tmp_path / "config.yaml"
        config.write_text(
            CONFIG.format(
                settle=settle,
                weights=vgg_checkpoint,
                style_a=style_files[0],
                style_b=style_files[1],
                steps=steps,
            )
        )
        daemon = Daemon(tmp_path, config)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def outputs(root: Path) -> list[str]:
    """Every file under the output folder but its record of the journal (OUTPUT_MARKER)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() != OUTPUT_MARKER
    )


def test_a_nested_tree_comes_out_mirrored_including_files_there_before_start(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    daemon = make_daemon()
    photo(inbox / "booth1" / "night" / "a.jpg", (200, 30, 30))  # there before the start
    photo(inbox / "top.png", (30, 200, 30), size=(32, 48))
    daemon.start()
    photo(inbox / "deep" / "er" / "b.jpg", (30, 30, 200))  # arrives while it runs
    expected = ["booth1/night/a.blend.jpg", "booth1/night/a.starry.jpg", "deep/er/b.jpg", "top.png"]
    wait_until(lambda: outputs(tmp_path / "outbox") == expected, "the mirrored outputs")
    with Image.open(tmp_path / "outbox" / "top.png") as im:
        assert im.size == (21, 32)
    assert daemon.saw("job_done", source="deep/er/b.jpg", style="starry", result="done")
    # The start line says where the model runs, and how.
    # precision: auto is the default: bf16 where this CPU runs it natively.
    native = resolve_precision("auto", torch.device("cpu"))
    assert daemon.saw("service_ready", device="cpu", precision=native, cuda_graphs=False)
    assert daemon.stop() == 0
    assert daemon.saw("service_stopped")
    assert daemon.status()["counts"] == {"done": 4}


def test_a_slowly_written_file_is_processed_once_after_it_is_complete(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(settle=1.0).start()
    buffer = tmp_path / "slow-source.jpg"
    photo(buffer, (120, 80, 200), size=(64, 48))
    data = buffer.read_bytes()
    target = tmp_path / "inbox" / "slow.jpg"
    with target.open("wb") as out:  # a copy over a slow link: chunks with pauses under settle
        for i in range(0, len(data), max(1, len(data) // 8)):
            out.write(data[i : i + max(1, len(data) // 8)])
            out.flush()
            time.sleep(0.3)
    wait_until((tmp_path / "outbox" / "slow.jpg").exists, "the slow file's output")
    status = daemon.status()
    assert status["counts"] == {"done": 1}, status
    assert status["failures"] == []
    assert daemon.stop() == 0
    done = [e for e in daemon.events() if e.get("event") == "job_queued"]
    assert len(done) == 1  # queued once, after the last chunk
    jobs = subprocess.run(
        ["sqlite3", str(tmp_path / "state" / "journal.sqlite3"), "SELECT fingerprint FROM jobs"],
        capture_output=True,
        text=True,
        check=False,
    )
    if jobs.returncode == 0:  # the sqlite3 shell is optional on the machine
        assert jobs.stdout.strip() == hashlib.sha256(data).hexdigest()


def test_bad_files_are_recorded_and_the_rest_goes_on(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    daemon = make_daemon().start()
    good = photo(inbox / "good.jpg", (10, 20, 30))
    (inbox / "notes.jpg").write_text("this is not a photo")
    (inbox / "empty.jpg").write_bytes(b"")
    truncated = photo(inbox / "cut-source.png", (1, 2, 3), size=(64, 64)).read_bytes()
    (inbox / "cut-source.png").unlink()
    (inbox / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    wait_until(lambda: len(daemon.status()["failures"]) == 3, "three recorded failures")
    wait_until((tmp_path / "outbox" / "good.jpg").exists, "the good photo's output")
    failures = {f["source"]: f for f in daemon.status()["failures"]}
    assert failures["notes.jpg"]["kind"] == "bad_image:not_an_image"
    assert failures["empty.jpg"]["kind"] == "bad_image:empty"
    assert failures["cut.png"]["kind"] in ("bad_image:truncated", "bad_image:corrupt")
    assert all(f["attempts"] == 1 for f in failures.values())  # recorded once, not retried
    assert daemon.exited() is False
    assert good.read_bytes()  # sources untouched
    assert (inbox / "notes.jpg").read_text() == "this is not a photo"
    assert daemon.stop() == 0


def test_kill_9_mid_job_then_restart_gives_one_output_per_photo(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    daemon = make_daemon(steps=300)  # long enough to be killed while running
    for i in range(3):
        photo(inbox / f"p{i}.jpg", (40 * i, 100, 150))
    daemon.start()
    wait_until(
        lambda: daemon.saw("job_progress") or daemon.status()["counts"].get("running"),
        "a running job",
    )
    daemon.kill()
    restarted = Daemon(tmp_path, daemon.config).start()
    wait_until(lambda: restarted.status()["counts"].get("done") == 3, "all three done")
    assert outputs(tmp_path / "outbox") == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert not [p for p in (tmp_path / "outbox").rglob("*") if ".stylewatch-tmp" in p.name]
    assert restarted.stop() == 0


def test_sighup_with_a_broken_config_keeps_the_old_one(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon().start()
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace("rules:", "rulez:"))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.saw("reload_refused"), "the reload to be refused")
    photo(tmp_path / "inbox" / "after.jpg", (90, 90, 90))
    wait_until((tmp_path / "outbox" / "after.jpg").exists, "a photo after the reload")
    assert daemon.stop() == 0


def test_a_reused_name_with_new_content_yields_a_second_output(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon().start()
    first = photo(tmp_path / "inbox" / "IMG_0001.jpg", (250, 250, 0))
    wait_until((tmp_path / "outbox" / "IMG_0001.jpg").exists, "the first output")
    earlier = (tmp_path / "outbox" / "IMG_0001.jpg").read_bytes()
    os.utime(first)  # a metadata-only touch: not processed again
    photo(tmp_path / "inbox" / "IMG_0002.jpg", (0, 0, 250))
    wait_until((tmp_path / "outbox" / "IMG_0002.jpg").exists, "a later photo")
    photo(first, (0, 250, 250))  # the camera's counter was reset: same name, new picture
    wait_until((tmp_path / "outbox" / "IMG_0001~2.jpg").exists, "the second output")
    assert (tmp_path / "outbox" / "IMG_0001.jpg").read_bytes() == earlier
    assert daemon.status()["counts"] == {"done": 3}
    assert daemon.stop() == 0


def test_a_broken_config_exits_78_with_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("input: inbox\noutput: outbox\nstate: state\nstyles: {}\nrulez: []\n")
    (tmp_path / "inbox").mkdir()
    done = subprocess.run(
        [str(STYLEWATCH), "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78
    assert "config.yaml:5" in done.stderr
    assert "rulez" in done.stderr
