"""A time budget per photo: the engine on a fake clock, and `seconds` in the config and the CLI."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import pytest
from harness import one_rule_config
from PIL import Image
from structlog.testing import capture_logs

from daemon import cli, clistylize, rules
from daemon.config import load_config
from daemon.errors import ConfigError
from daemon.journal import Journal
from daemon.worker import Worker
from engine.params import (
    PRESETS,
    EngineConfig,
    LossTerms,
    Progress,
    Snapshot,
    StyleParams,
    StyleSpec,
)
from engine.stylizer import Stylized, Stylizer, working_size

BUDGETED = StyleParams(size=48, scales=2, min_scale_size=24, seconds=1.0)


class FakeClock:
    """Time that moves only when the engine looks at it (a millisecond) or takes a step."""

    def __init__(self, step_seconds: float) -> None:
        self.now = 0.0
        self.step_seconds = step_seconds

    def __call__(self) -> float:
        self.now += 1e-3
        return self.now

    def step(self) -> bool:
        """Passed as should_stop, which the engine asks before every step."""
        self.now += self.step_seconds
        return False


@pytest.fixture
def clocked(vgg_checkpoint: Path) -> tuple[Stylizer, FakeClock]:
    # The calibration measures 1 ms a pass (two clock reads); steps then take 50 ms each: a
    # machine much slower than it measured.
    clock = FakeClock(step_seconds=0.05)
    config = EngineConfig(device="cpu", weights=vgg_checkpoint, download=False)
    return Stylizer(config, clock=clock), clock


def test_a_run_slower_than_planned_stops_at_its_budget(
    clocked: tuple[Stylizer, FakeClock], photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer, clock = clocked
    seen: list[Progress] = []
    result = stylizer.stylize(
        photo,
        StyleSpec.of(style_files[0]),
        BUDGETED,
        progress=seen.append,
        should_stop=clock.step,
    )
    # Planned for far more steps than there was time for.
    assert max(p.steps for p in seen) > len(seen)
    # Between steps the clock is read, so at most one step runs past the end.
    assert result.optimise_seconds <= BUDGETED.seconds + clock.step_seconds
    assert clock.now <= BUDGETED.seconds + clock.step_seconds + 0.05
    assert result.budget_seconds == pytest.approx(BUDGETED.seconds, abs=0.01)
    # It used its time: the last scale ran on while its steps fitted.
    assert result.optimise_seconds >= BUDGETED.seconds - 2 * clock.step_seconds
    assert result.image.size == working_size(photo.size, 48)
    assert result.schedule[-1][0] == 48
    assert result.steps == sum(steps for _, steps in result.schedule) == len(seen)
    assert result.upsampled_from is None


def test_what_a_step_costs_is_kept_and_the_next_plan_fits(
    clocked: tuple[Stylizer, FakeClock], photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer, clock = clocked
    style = StyleSpec.of(style_files[0])
    stylizer.stylize(photo, style, BUDGETED, should_stop=clock.step)
    # Each scale that ran two steps or more measured them: 50 ms plus the clock's reads.
    assert len(stylizer.step_costs.points) >= 1
    assert all(0.04 < s < 0.06 for _, s in stylizer.step_costs.points[1:])
    seen: list[Progress] = []
    result = stylizer.stylize(photo, style, BUDGETED, progress=seen.append, should_stop=clock.step)
    assert result.optimise_seconds <= BUDGETED.seconds + clock.step_seconds
    # Now measured, the plan's step count is about what ran (within the clock's reads).
    assert abs(seen[-1].steps - len(seen)) <= 3


def test_a_batch_shares_its_budget_between_its_groups(
    clocked: tuple[Stylizer, FakeClock], photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer, clock = clocked
    tall = photo.rotate(90, expand=True)
    results = stylizer.stylize_batch(
        [photo, tall], StyleSpec.of(style_files[0]), BUDGETED, should_stop=clock.step
    )
    # The first group is planned to half the time (the same pixels), the second to what is left.
    assert results[0].budget_seconds == pytest.approx(BUDGETED.seconds / 2, abs=0.01)
    second = results[1].budget_seconds
    assert second is not None
    assert second == pytest.approx(BUDGETED.seconds - results[0].optimise_seconds, abs=0.01)
    assert sum(r.optimise_seconds for r in results) <= BUDGETED.seconds + 2 * clock.step_seconds


def test_a_budgeted_run_resumes_from_its_snapshot_in_its_last_scale(
    clocked: tuple[Stylizer, FakeClock], photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer, clock = clocked
    style = StyleSpec.of(style_files[0])
    taken: list[Snapshot] = []
    first = stylizer.stylize(
        photo, style, BUDGETED, should_stop=clock.step, snapshot=taken.append, snapshot_every=0
    )
    last_scale = [s for s in taken if s.scale == len(s.schedule)]
    assert len(last_scale) >= 2
    saved = last_scale[0]
    seen: list[Progress] = []
    with capture_logs() as logs:
        result = stylizer.stylize(
            photo,
            style,
            BUDGETED,
            progress=seen.append,
            should_stop=clock.step,
            resume={0: saved},
        )
    assert not [e for e in logs if e["event"] == "snapshot_ignored"]
    assert seen[0].step == saved.step + 1
    assert len(seen) < first.steps
    assert result.image.size == working_size(photo.size, 48)


def test_an_explicit_step_count_wins_over_the_budget_with_a_warning(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    params = BUDGETED.replace(steps=5, seconds=1e-6)
    seen: list[Progress] = []
    with capture_logs() as logs:
        result = stylizer.stylize(photo, StyleSpec.of(style_files[0]), params, progress=seen.append)
    assert len(seen) == 5
    assert result.budget_seconds is None
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["budget_ignored"]
    assert warnings[0]["steps"] == 5


# -- the config and the CLI -------------------------------------------------------------------


def _params(path: Path) -> StyleParams:
    return load_config(path).rules[0].outputs[0].settings.params


def test_seconds_in_a_rule_beats_steps_in_the_defaults(tmp_path: Path) -> None:
    params = _params(one_rule_config(tmp_path, "{steps: 200}", "    seconds: 12.5\n"))
    assert (params.seconds, params.steps, params.budgeted) == (12.5, None, True)


def test_steps_in_a_rule_beat_seconds_in_the_defaults(tmp_path: Path) -> None:
    params = _params(one_rule_config(tmp_path, "{seconds: 5}", "    steps: 40\n"))
    assert (params.seconds, params.steps) == (None, 40)


def test_steps_beside_seconds_are_kept_for_the_engine_to_warn_about(tmp_path: Path) -> None:
    params = _params(one_rule_config(tmp_path, "{seconds: 5, steps: 40}"))
    assert (params.seconds, params.steps, params.budgeted) == (5.0, 40, False)


def test_a_preset_beside_a_budget_gives_the_shape_not_the_steps(tmp_path: Path) -> None:
    params = _params(one_rule_config(tmp_path, "{preset: fast}", "    seconds: 8\n"))
    assert (params.seconds, params.steps) == (8.0, None)
    assert params.scale_step_ratio == PRESETS["fast"]["scale_step_ratio"]


@pytest.mark.parametrize("value", ["0", "-3", "fast", ".nan"])
def test_a_bad_budget_is_a_config_error_naming_its_key_and_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(one_rule_config(tmp_path, "{size: 64}", f"    seconds: {value}\n"))
    message = str(info.value)
    assert "c.yaml:9" in message
    assert "rules[0].seconds" in message


def test_the_cli_takes_seconds_and_a_preset_shapes_it() -> None:
    def parse(*extra: str) -> StyleParams:
        args = cli.build_parser().parse_args(
            ["stylize", "a.jpg", "-s", "p.jpg", "-o", "o.jpg", *extra]
        )
        return clistylize.style_params(args)

    budget = parse("--seconds", "5", "--preset", "fast")
    assert (budget.seconds, budget.steps, budget.scale_step_ratio) == (5.0, None, 3.0)
    both = parse("--seconds", "5", "--steps", "30")
    assert (both.seconds, both.steps, both.budgeted) == (5.0, 30, False)
    assert parse("--preset", "fast").steps == PRESETS["fast"]["steps"]
    with pytest.raises(cli.CliError, match="seconds must be a positive number"):
        parse("--seconds", "-1")


# -- the daemon's summary line ------------------------------------------------------------------


class BudgetEngine:
    """Returns each photo resized, as a budgeted run that ended at a smaller size would."""

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
        # The worker's hand-over and snapshot hooks (daemon.worker.Engine); results come at the end.
        on_result: Callable[[int, Stylized], None] | None = None,
        snapshot: Callable[[Snapshot], None] | None = None,
        snapshot_every: float = 10.0,
        resume: Mapping[int, Snapshot] | None = None,
    ) -> list[Stylized]:
        return [
            Stylized(
                image=c.resize((params.size, params.size)),
                loss=LossTerms(0, 0, 0),
                steps=7,
                seconds=0.5,
                device="fake",
                budget_seconds=params.seconds,
                optimise_seconds=0.456,
                schedule=((8, 6), (12, 1)),
                upsampled_from=12,
            )
            for c in contents
        ]

    def close(self) -> None:
        pass

    def shrink_memory_budget(self) -> bool:
        return False


def test_job_done_reports_the_budget_the_time_used_and_the_schedule(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "paint.jpg").write_bytes(b"fake painting; the fake engine never reads it")
    (tmp_path / "c.yaml").write_text(
        "input: inbox\noutput: outbox\nstate: state\n"
        "styles: {s: {image: paint.jpg}}\ndefaults: {size: 16, seconds: 0.5}\n"
        "rules: [{match: '**/*', styles: [s]}]\n"
    )
    config = load_config(tmp_path / "c.yaml")
    config.state.mkdir(parents=True)
    journal = Journal.open(config.state)
    try:
        path = config.input / "p.png"
        Image.new("RGB", (20, 10), (200, 0, 0)).save(path)
        decision = rules.decide(config, PurePosixPath("p.png"))
        assert isinstance(decision, rules.Plan)
        journal.enqueue(
            rules.orders(decision, "p.png", hashlib.sha256(path.read_bytes()).hexdigest())[0]
        )
        worker = Worker(journal, BudgetEngine(), lambda: config)
        with capture_logs() as logs:
            assert worker.run_once()
    finally:
        journal.close()
    (done,) = [e for e in logs if e["event"] == "job_done"]
    assert done["budget_seconds"] == 0.5
    assert done["optimise_seconds"] == 0.46
    assert done["schedule"] == [[8, 6], [12, 1]]
    assert done["upsampled_from"] == 12
    assert (done["steps"], done["size"], done["result"]) == (7, "16x16", "done")
