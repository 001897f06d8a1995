"""Hooks: run after the output is in place, without a shell, with a timeout, never delaying or
failing a job."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from harness import Fleet, photo, wait_until
from structlog.testing import capture_logs
from webharness import add_config

from daemon import events, hooks
from daemon.config import Config, HooksConfig

# Records its argv and environment, then (with a gate file given) waits until the gate exists.
RECORDER = """\
import json, os, sys, time
record, gate = sys.argv[1], sys.argv[2]
with open(record, "a") as f:
    env = {k: v for k, v in os.environ.items() if k.startswith("STYLEWATCH_")}
    f.write(json.dumps({"argv": sys.argv[3:], "env": env}) + "\\n")
while gate != "-" and not os.path.exists(gate):
    time.sleep(0.05)
"""


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def fake_config(tmp_path: Path, **settings: Any) -> Config:
    return cast(
        Config,
        SimpleNamespace(
            input=tmp_path / "inbox", output=tmp_path / "outbox", hooks=HooksConfig(**settings)
        ),
    )


def done_event(n: int) -> events.JobDone:
    return events.JobDone(
        job=n, source=f"a/p{n}.jpg", output=f"a/p{n}.jpg", rule=0, style="starry", seconds=1.0
    )


def test_placeholders_are_filled_in_each_argument_never_through_a_shell() -> None:
    argv = hooks.render(
        ("lp", "-d", "booth", "{output}; rm -rf /", "--title={style}", "{unknown}"),
        {"output": "/out/a b.jpg", "style": "starry"},
    )
    assert argv == ("lp", "-d", "booth", "/out/a b.jpg; rm -rf /", "--title=starry", "{unknown}")


def test_a_hanging_hook_is_killed_a_failing_one_logged_and_the_emitter_never_waits(
    tmp_path: Path,
) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "record.jsonl"
    gate = tmp_path / "never"  # the first hook waits for this forever: only the timeout ends it
    config = fake_config(
        tmp_path,
        on_done=(sys.executable, str(script), str(record), str(gate), "{output}"),
        on_failed=("sh", "-c", "echo 'printer on fire' >&2; exit 3"),
        timeout_seconds=1.0,
    )
    runner = hooks.HookRunner(lambda: config)
    with capture_logs() as logs:
        runner.start()
        runner(done_event(1))
        wait_until(lambda: len(records(record)) == 1, "the first hook to start")
        # The hook hangs; emitting more returns at once (they queue behind it).
        emitted = threading.Event()

        def emit_more() -> None:
            runner(done_event(2))
            runner(
                events.JobFailed(
                    job=3,
                    source="b.jpg",
                    output="b.jpg",
                    rule=0,
                    style="starry",
                    kind="bad_image",
                    error="broken",
                )
            )
            emitted.set()

        threading.Thread(target=emit_more).start()
        assert emitted.wait(5.0)
        assert len(records(record)) == 1
        wait_until(lambda: runner.failed == 3, "the hooks to end")  # 2 timeouts, 1 exit 3
        runner.stop()
    failed = [e for e in logs if e["event"] == "hook_failed"]
    assert [e.get("reason") for e in failed] == ["timeout", "timeout", None]
    assert failed[2]["exit_code"] == 3
    assert failed[2]["stderr"] == "printer on fire\n"
    assert [r["argv"] for r in records(record)] == [
        [str(tmp_path / "outbox" / "a/p1.jpg")],
        [str(tmp_path / "outbox" / "a/p2.jpg")],
    ]


def test_a_full_queue_drops_hooks_and_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hooks, "QUEUE_SIZE", 2)
    config = fake_config(tmp_path, on_done=("true",))
    runner = hooks.HookRunner(lambda: config)  # not started: nothing takes from the queue
    with capture_logs() as logs:
        for n in range(5):
            runner(done_event(n))
    assert runner.dropped == 3
    assert [e["event"] for e in logs] == ["hook_dropped"] * 3


def test_hooks_of_the_real_service_run_after_the_output_and_never_hold_up_jobs(
    fleet: Fleet, tmp_path: Path
) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "record.jsonl"
    gate = tmp_path / "gate"
    daemon = fleet.daemon(batch=1)
    add_config(
        daemon,
        "hooks:\n"
        f"  on_done: [{sys.executable}, {script}, {record}, {gate}, '{{output}}', '{{rule}}']\n"
        # A placeholder as an argument of its own ("$1"), never pasted into the script's text.
        "  on_failed: [sh, -c, 'echo \"$1\" >&2; exit 3', hook, '{error}']\n",
    )
    daemon.start()
    names = [f"p{n}.jpg" for n in range(3)]
    for n, name in enumerate(names):
        photo(fleet.inbox / name, (50 * n, 90, 120))
    (fleet.inbox / "broken.jpg").write_bytes(b"\xff\xd8\xff not a photo")
    # Every job ends while the first hook still waits at its gate.
    daemon.wait(lambda: daemon.status()["counts"] == {"done": 3, "failed": 1}, "the jobs to end")
    assert all((fleet.outbox / name).is_file() for name in names)
    assert len(records(record)) == 1
    gate.touch()
    daemon.wait(lambda: len(records(record)) == 3, "the other hooks to run")
    daemon.wait(lambda: daemon.saw("hook_failed", hook="on_failed", exit_code=3), "on_failed")
    first = records(record)[0]
    output = Path(first["argv"][0])
    assert output.is_absolute()
    assert output.parent == fleet.outbox
    assert output.is_file()  # in place before its hook ran
    assert first["argv"][1] == "starry"  # the rule's name, derived from `**/*` -> starry
    assert first["env"]["STYLEWATCH_OUTPUT"] == str(output)
    assert first["env"]["STYLEWATCH_SOURCE"] == str(fleet.inbox / output.name)
    assert first["env"]["STYLEWATCH_STYLE"] == "starry"
    assert first["env"]["STYLEWATCH_EVENT"] == "on_done"
    failed = next(e for e in daemon.events() if e.get("event") == "hook_failed")
    (failure,) = daemon.status()["failures"]
    assert failed["stderr"] == failure["error"] + "\n"  # {error} reached the command whole
    assert daemon.stop() == 0
    assert daemon.status()["counts"] == {"done": 3, "failed": 1}
