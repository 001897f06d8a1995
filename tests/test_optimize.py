"""The optimisation loop: deferred loss checks and the CUDA-graph policy, on the CPU."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import structlog
import torch
from PIL import Image

from engine import optimize
from engine.errors import NumericalError
from engine.images import resize_long_edge
from engine.optimize import GraphPolicy, Objective, StepReport, run_scale
from engine.params import Progress, StyleParams, StyleSpec
from engine.stylizer import Stylizer

PARAMS = StyleParams(size=64, steps=10, scales=1, optimizer="adam")


def _objective(
    stylizer: Stylizer, photo: Image.Image, style: StyleSpec, params: StyleParams
) -> tuple[Objective, torch.Tensor]:
    content = torch.cat([stylizer._to_tensor(resize_long_edge(photo, params.size))])
    return stylizer._objective(content, style, params, params.size), content


def _run(
    objective: Objective, content: torch.Tensor, steps: int, report_every: int
) -> tuple[torch.Tensor, list[Progress]]:
    records: list[Progress] = []
    report = StepReport(scale=1, scales=1, size=64, first_step=3, total_steps=3 + steps, started=0)
    torch.manual_seed(0)
    out = run_scale(
        objective, content, steps, report, progress=records.append, report_every=report_every
    )
    return out, records


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_losses_read_back_in_chunks_report_every_step_once(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[object, ...], optimizer: str
) -> None:
    params = PARAMS.replace(optimizer=optimizer)
    objective, content = _objective(stylizer, photo, StyleSpec.of(style_files[0]), params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical runs
    try:
        each, each_records = _run(objective, content, 10, report_every=1)
        chunked, chunked_records = _run(objective, content, 10, report_every=4)
    finally:
        torch.set_num_threads(threads)
    assert [r.step for r in chunked_records] == list(range(4, 14))  # after the 3 steps before
    assert [r.loss for r in chunked_records] == [r.loss for r in each_records]
    assert torch.equal(each, chunked)
    assert chunked_records[-1].loss < chunked_records[0].loss


class _TurnsNan(Objective):
    """The objective, except that its loss is NaN from the 5th evaluation on."""

    calls = 0

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        value = super().loss(image)
        return value * math.nan if type(self).calls >= 5 else value


def test_a_non_finite_loss_inside_a_chunk_names_its_own_step(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[object, ...]
) -> None:
    objective, content = _objective(stylizer, photo, StyleSpec.of(style_files[0]), PARAMS)
    poisoned = _TurnsNan(**{f: getattr(objective, f) for f in objective.__dataclass_fields__})
    # Step 5 of the scale (step 8 of the run) is read back with the chunk of steps 1..6.
    with pytest.raises(NumericalError, match=r"loss became nan at step 8 \(scale 1, 64 px\)"):
        _run(poisoned, content, 10, report_every=6)


def _closure() -> torch.Tensor:
    return torch.zeros(())


def test_graph_policy_off_returns_the_closure_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: object) -> Callable[[], torch.Tensor]:
        raise AssertionError("no capture when the policy is off")

    monkeypatch.setattr(optimize, "_capture", never)
    assert GraphPolicy(False).capture(_closure, torch.zeros(1)) is _closure


def test_a_failed_capture_is_logged_and_turns_graphs_off_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def refuse(*_: object) -> Callable[[], torch.Tensor]:
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(optimize, "_capture", refuse)
    policy = GraphPolicy(True)
    image = torch.zeros(1, requires_grad=True)
    image.grad = torch.ones(1)
    with structlog.testing.capture_logs() as logs:
        assert policy.capture(_closure, image) is _closure
        assert policy.capture(_closure, image) is _closure
    assert calls == [1]  # not tried again
    assert not policy.enabled
    assert policy.failure == "operation not permitted when stream is capturing"
    assert image.grad is None  # whatever the attempt left there is gone
    assert [e["event"] for e in logs] == ["cuda_graphs_off"]
    assert logs[0]["log_level"] == "warning"
    assert "engine.cuda_graphs: false" in logs[0]["hint"]


def test_running_out_of_memory_while_capturing_is_not_a_capture_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exhausted(*_: object) -> Callable[[], torch.Tensor]:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(optimize, "_capture", exhausted)
    policy = GraphPolicy(True)
    with pytest.raises(torch.OutOfMemoryError):
        policy.capture(_closure, torch.zeros(1))
    assert policy.enabled  # the stylizer shrinks its budget and tries again, with graphs


def test_a_short_scale_keeps_room_for_only_the_pairs_it_can_make(
    stylizer: Stylizer,
    photo: Image.Image,
    style_files: tuple[object, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The history is 1.2 KB per pixel at 50 pairs; a 3-step tile makes 2 pairs.
    sizes: list[int] = []

    class Recording(optimize.LBFGS):
        def __init__(self, param: torch.Tensor, lr: float, history_size: int) -> None:
            sizes.append(history_size)
            super().__init__(param, lr=lr, history_size=history_size)

    monkeypatch.setattr(optimize, "LBFGS", Recording)
    monkeypatch.setattr(optimize, "LBFGS_HISTORY", 4)  # the cap, made small to reach it fast
    params = PARAMS.replace(optimizer="lbfgs")
    objective, content = _objective(stylizer, photo, StyleSpec.of(style_files[0]), params)
    for steps in (1, 3, 8):
        _run(objective, content, steps, report_every=1)
    assert sizes == [1, 2, 4]
