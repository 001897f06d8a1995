"""The worker's decisions with a fake engine: batching, failure classes, crash leftovers."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import pytest
import structlog
from PIL import Image
from structlog.testing import capture_logs

from daemon import rules
from daemon.config import Config, load_config
from daemon.journal import JobState, Journal
from daemon.snapshots import SnapshotStore
from daemon.worker import Worker
from engine import errors
from engine.params import LossTerms, Progress, Snapshot, StyleParams, StyleSpec
from engine.stylizer import Stylized


class FakeEngine:
    """Returns the photo resized to the asked size; or raises what the test asks for."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.fail_with: Exception | None = None
        self.fail_after: dict[int, Exception] = {}  # raised once this photo was handed over
        self.shrunk = 0
        self.resumed: list[dict[int, Snapshot]] = []
        # The outputs on disk right after each photo was handed over.
        self.handed_over: list[list[str]] = []
        self.written: Callable[[], set[str]] = set

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
        on_result: Callable[[int, Stylized], None] | None = None,
        snapshot: Callable[[Snapshot], None] | None = None,
        snapshot_every: float = 10.0,
        resume: Mapping[int, Snapshot] | None = None,
    ) -> list[Stylized]:
        self.batches.append(len(contents))
        self.resumed.append(dict(resume or {}))
        if self.fail_with is not None:
            raise self.fail_with
        results = []
        for index, c in enumerate(contents):
            if snapshot is not None:
                snapshot(Snapshot(index, ((params.size, params.steps),), 1, 1, c.convert("RGB")))
            result = Stylized(
                image=c.resize((params.size, params.size)),
                loss=LossTerms(0, 0, 0),
                steps=params.steps,
                seconds=0.0,
                device="fake",
            )
            if on_result is not None:
                on_result(index, result)
            self.handed_over.append(sorted(self.written()))
            results.append(result)
            if index in self.fail_after:
                raise self.fail_after[index]
        return results

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
    journal.enqueue(rules.orders(decision, name, hashlib.sha256(path.read_bytes()).hexdigest())[0])
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

    monkeypatch.setattr("daemon.outputs.write_atomic", full)
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


def test_each_photo_is_written_as_soon_as_it_is_done_not_when_the_batch_ends(setup) -> None:
    config, journal, engine, worker = setup
    for i in range(3):
        enqueue(config, journal, f"p{i}.png", (i * 50, 0, 0))
    engine.written = lambda: {p.name for p in config.output.glob("*.png")}
    assert worker.run_once()
    assert engine.batches == [3]
    # Right after each photo was handed over, its output was already on disk (and only its).
    assert engine.handed_over == [["p0.png"], ["p0.png", "p1.png"], ["p0.png", "p1.png", "p2.png"]]
    assert states(journal) == {"p0.png": "done", "p1.png": "done", "p2.png": "done"}


def test_a_batch_that_breaks_after_its_first_photo_keeps_that_photo_done(setup) -> None:
    config, journal, engine, worker = setup
    for i in range(2):
        enqueue(config, journal, f"p{i}.png", (i * 50, 0, 0))
    engine.fail_after = {0: errors.NumericalError("loss became nan")}
    worker.run_once()
    assert states(journal) == {"p0.png": "done", "p1.png": "failed"}
    assert (config.output / "p0.png").is_file()


class StoppingEngine(FakeEngine):
    """Takes a snapshot of each photo, then is stopped before any result (a service stop)."""

    stop = True

    def stylize_batch(self, contents, style, params, **kwargs):  # type: ignore[no-untyped-def]
        if not self.stop:
            return super().stylize_batch(contents, style, params, **kwargs)
        self.resumed.append(dict(kwargs.get("resume") or {}))
        for index, c in enumerate(contents):
            image = c.convert("RGB").resize((8, 4))
            kwargs["snapshot"](Snapshot(index, ((8, 5), (16, 5)), 1, 3 + index, image))
        raise errors.Cancelled("stopping")


def test_a_stopped_job_resumes_from_its_snapshot_which_goes_once_it_is_done(
    setup, tmp_path: Path
) -> None:
    config, journal, _, _ = setup
    engine = StoppingEngine()
    store = SnapshotStore(config.state / "snapshots")
    worker = Worker(journal, engine, lambda: config, wall=lambda: 1000.0, snapshots=store)
    for i in range(2):
        enqueue(config, journal, f"p{i}.png", (i * 50, 0, 0))
    worker.run_once()
    assert set(states(journal).values()) == {"queued"}  # released, to be taken again
    assert sorted(p.suffix for p in store.folder.iterdir()) == [".json", ".json", ".png", ".png"]
    engine.stop = False
    structlog.reset_defaults()  # a CLI test before may have left warning-level filtering
    with capture_logs() as logs:
        worker.run_once()
    resumed = engine.resumed[-1]
    assert sorted(resumed) == [0, 1]
    assert [(s.index, s.scale, s.step, s.schedule) for s in resumed.values()] == [
        (0, 1, 3, ((8, 5), (16, 5))),
        (1, 1, 4, ((8, 5), (16, 5))),
    ]
    assert resumed[0].image.size == (8, 4)
    assert [e["step"] for e in logs if e["event"] == "job_resumed"] == [3, 4]
    assert states(journal) == {"p0.png": "done", "p1.png": "done"}
    assert list(store.folder.iterdir()) == []  # done: nothing left to resume


def test_a_snapshot_of_other_content_or_settings_is_ignored_and_removed(setup) -> None:
    config, journal, _, _ = setup
    store = SnapshotStore(config.state / "snapshots")
    enqueue(config, journal, "p.png", (1, 2, 3))
    (job,) = journal.jobs()
    store.save(job, Snapshot(0, ((16, 1),), 1, 1, Image.new("RGB", (16, 8))))
    assert store.load(job, 0) is not None
    other = dataclasses.replace(job, fingerprint="0" * 64)
    structlog.reset_defaults()
    with capture_logs() as logs:
        assert store.load(other, 0) is None
    assert logs[0]["event"] == "snapshot_ignored"
    assert list(store.folder.iterdir()) == []
    store.save(job, Snapshot(0, ((16, 1),), 1, 1, Image.new("RGB", (16, 8))))
    (store.folder / f"{job.id}.png").write_bytes(b"a torn write")
    assert store.load(job, 0) is None
    store.save(job, Snapshot(0, ((16, 1),), 1, 1, Image.new("RGB", (16, 8))))
    assert store.prune({job.id}) == 0
    assert store.prune(set()) == 2
