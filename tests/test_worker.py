"""The worker's decisions with a fake engine: batching, failure classes, crash leftovers."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from daemon import rules
from daemon.config import Config, load_config
from daemon.journal import JobSpec, JobState, Journal
from daemon.worker import Worker, settings_hash
from engine import errors
from engine.params import LossTerms, Progress, StyleParams, StyleSpec
from engine.stylizer import Stylized


class FakeEngine:
    """Returns the photo resized to the asked size; or raises what the test asks for."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.fail_with: Exception | None = None
        self.shrunk = 0

    def prepare_style(self, style: StyleSpec, params: StyleParams) -> None:
        pass

    def stylize_batch(
        self,
        contents: Sequence[Image.Image],
        style: StyleSpec,
        params: StyleParams,
        *,
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Stylized]:
        self.batches.append(len(contents))
        if self.fail_with is not None:
            raise self.fail_with
        return [
            Stylized(
                image=c.resize((params.size, params.size)),
                loss=LossTerms(0, 0, 0),
                steps=params.steps,
                seconds=0.0,
                device="fake",
            )
            for c in contents
        ]

    def close(self) -> None:
        pass

    def shrink_memory_budget(self) -> bool:
        self.shrunk += 1
        return self.shrunk <= 1  # one halving, then nothing smaller is possible


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Config, Journal, FakeEngine, Worker]]:
    """A one-rule config, its journal, a fake engine, and a worker with a fixed clock."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "paint.jpg").write_bytes(b"fake painting; the fake engine never reads it")
    (tmp_path / "c.yaml").write_text(
        "input: inbox\noutput: outbox\nstate: state\nengine: {batch_size: 4}\n"
        "styles: {s: {image: paint.jpg}}\ndefaults: {size: 16, steps: 1}\n"
        "rules: [{match: '**/*', styles: [s]}]\n"
    )
    config = load_config(tmp_path / "c.yaml")
    config.state.mkdir(parents=True)
    journal = Journal.open(config.state)
    engine = FakeEngine()
    clock = [1000.0]
    worker = Worker(journal, engine, lambda: config, wall=lambda: clock[0])
    yield config, journal, engine, worker
    journal.close()


def enqueue(config: Config, journal: Journal, name: str, colour: tuple[int, int, int]) -> Path:
    path = config.input / name
    Image.new("RGB", (20, 10), colour).save(path)
    decision = rules.decide(config, PurePosixPath(name))
    assert isinstance(decision, rules.Plan)
    out = decision.outputs[0]
    journal.enqueue(
        JobSpec(
            source=name,
            fingerprint=hashlib.sha256(path.read_bytes()).hexdigest(),
            rule=decision.rule_index,
            style=out.style_name,
            settings_hash=settings_hash(out),
            output=str(out.relpath),
        )
    )
    return path


def states(journal: Journal) -> dict[str, str]:
    return {job.source: job.state.value for job in journal.jobs()}


def test_same_style_jobs_run_as_one_batch_and_are_written(setup) -> None:
    config, journal, engine, worker = setup
    for i in range(3):
        enqueue(config, journal, f"p{i}.png", (i * 50, 0, 0))
    assert worker.run_once()
    assert engine.batches == [3]
    assert states(journal) == {"p0.png": "done", "p1.png": "done", "p2.png": "done"}
    with Image.open(config.output / "p1.png") as im:
        assert im.size == (16, 16)
    assert not worker.run_once()


def test_out_of_memory_splits_the_batch_then_retries_alone(setup) -> None:
    config, journal, engine, worker = setup
    for i in range(4):
        enqueue(config, journal, f"p{i}.png", (i, 0, 0))
    engine.fail_with = errors.OutOfMemoryError("out of memory")
    worker.run_once()
    assert engine.batches == [4]
    assert set(states(journal).values()) == {"queued"}
    assert all(job.attempts == 0 for job in journal.jobs())  # released, not counted
    engine.fail_with = None
    worker.run_once()
    assert engine.batches == [4, 2]


def test_a_missing_painting_is_retried_with_backoff(setup) -> None:
    config, journal, engine, worker = setup
    enqueue(config, journal, "p.png", (1, 2, 3))
    engine.fail_with = errors.StyleError("style image gone")
    worker.run_once()
    (job,) = journal.jobs()
    assert job.state is JobState.QUEUED
    assert job.error_kind == "style"
    assert job.not_before == 1005.0  # 5 s after the first attempt
    assert not worker.run_once()  # not due yet


def test_a_nan_result_is_failed_for_good(setup) -> None:
    config, journal, engine, worker = setup
    enqueue(config, journal, "p.png", (1, 2, 3))
    engine.fail_with = errors.NumericalError("loss became nan")
    worker.run_once()
    (job,) = journal.jobs()
    assert (job.state, job.error_kind) == (JobState.FAILED, "numerical")


def test_removed_or_changed_sources_cancel_their_jobs_quietly(setup) -> None:
    config, journal, engine, worker = setup
    enqueue(config, journal, "gone.png", (1, 1, 1)).unlink()
    changed = enqueue(config, journal, "changed.png", (2, 2, 2))
    Image.new("RGB", (20, 10), (9, 9, 9)).save(changed)
    worker.run_once()
    worker.run_once()
    assert states(journal) == {"gone.png": "cancelled", "changed.png": "cancelled"}
    assert engine.batches == []


def test_an_output_written_before_a_crash_is_recognised_not_redone(setup) -> None:
    config, journal, _, worker = setup
    source = enqueue(config, journal, "p.png", (5, 5, 5))
    fingerprint = hashlib.sha256(source.read_bytes()).hexdigest()
    claimed = journal.claim_output("p.png", "p.png", fingerprint)
    (config.output).mkdir(parents=True, exist_ok=True)
    (config.output / claimed).write_bytes(b"written before the crash")
    worker.run_once()
    assert states(journal) == {"p.png": "done"}
    assert (config.output / "p.png").read_bytes() == b"written before the crash"


def test_a_full_disk_is_retried_and_the_output_folder_keeps_no_partial_file(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, journal, _, worker = setup
    enqueue(config, journal, "p.png", (5, 5, 5))

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("daemon.worker.write_atomic", full)
    worker.run_once()
    (job,) = journal.jobs()
    assert (job.state, job.error_kind) == (JobState.QUEUED, "io")
    assert "No space left" in (job.last_error or "")


def test_a_single_photo_out_of_memory_retries_in_smaller_tiles_then_backs_off(setup) -> None:
    config, journal, engine, worker = setup
    enqueue(config, journal, "big.png", (1, 2, 3))
    engine.fail_with = errors.OutOfMemoryError("out of memory")
    worker.run_once()
    (job,) = journal.jobs()
    assert (job.state, job.attempts, engine.shrunk) == (JobState.QUEUED, 0, 1)  # released
    worker.run_once()  # still too big, and the budget cannot shrink again: backoff
    (job,) = journal.jobs()
    assert (job.state, job.error_kind) == (JobState.QUEUED, "out_of_memory")
    assert job.not_before > 1000.0
