"""`stylewatch web` at the HTTP level (Starlette's TestClient): routes, tokens, files by job id
only, same-origin retry, /readyz from the live state, /metrics against the journal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import STYLEWATCH, order, photo
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from daemon import events
from daemon.config import Config, load_config
from daemon.errors import ConfigError
from daemon.journal import Job, JobState, Journal
from daemon.live import LiveState
from daemon.web.app import TOKEN_COOKIE, create_app

TOKEN = "0123456789abcdef-test-token"
BASE = "http://127.0.0.1:8750"

CONFIG = """\
input: inbox
output: outbox
state: state
styles:
  starry: {{image: {style}}}
rules:
  - match: "**/*"
    styles: [starry]
{extra}
"""


class Setup:
    """A config, a journal with jobs in it, outputs on disk, and a client for the web app."""

    def __init__(self, root: Path, style: Path) -> None:
        self.root = root
        self.style = style
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.state = root / "state"
        self.inbox.mkdir()
        self.outbox.mkdir()
        self.journal = Journal.open(self.state)
        self._n = 0

    def config(self, extra: str = "") -> Config:
        path = self.root / "config.yaml"
        path.write_text(CONFIG.format(style=self.style, extra=extra))
        return load_config(path)

    def job(self, source: str, *, outcome: str = "done") -> Job:
        self._n += 1
        src = photo(self.inbox / source, (10 * self._n % 255, 90, 160))
        job = self.journal.enqueue(order(source, f"fp{self._n}", output=source))
        assert job is not None
        if outcome == "queued":
            return job
        (taken,) = self.journal.take(1, time.time() + 1)
        assert taken.id == job.id
        if outcome == "running":
            return taken
        if outcome == "done":
            target = self.outbox / source
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
            return self.journal.mark_done(job.id, source)
        if outcome == "failed":
            return self.journal.mark_failed(
                job.id,
                "cannot identify image file",
                "bad_image:undecodable",
                permanent=True,
                retry_at=None,
            )
        assert outcome == "cancelled"
        self.journal.cancel(job.id, "source removed before it was processed")
        return self.journal.job(job.id)

    def live(self, *, wall: Callable[[], float] = time.time, ready: bool = True) -> LiveState:
        live = LiveState(self.state, input_dir=self.inbox, wall=wall)
        if ready:
            live(events.ServiceReady(pid=1, device="cpu", precision="fp32", input="", output=""))
            live(events.ServiceHeartbeat(healthy=True))
        live.publish()
        return live

    def client(self, extra: str = "", **kwargs: object) -> TestClient:
        app = create_app(self.config(extra), **kwargs)  # type: ignore[arg-type]
        return TestClient(app, base_url=BASE)


@pytest.fixture
def setup(tmp_path: Path, style_files: tuple[Path, Path]) -> Iterator[Setup]:
    made = Setup(tmp_path, style_files[0])
    yield made
    made.journal.close()


def test_pages_health_and_static_files(setup: Setup) -> None:
    with setup.client() as client:
        assert client.get("/healthz").json() == {"ok": True}
        booth = client.get("/booth")
        assert booth.status_code == 200
        assert 'src="static/booth.js"' in booth.text
        assert booth.headers["content-security-policy"].startswith("default-src 'self'")
        assert "dashboard.js" in client.get("/").text
        assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_files_only_by_job_id_of_finished_work(setup: Setup, tmp_path: Path) -> None:
    done = setup.job("booth1/a.jpg")
    failed = setup.job("c.jpg", outcome="failed")
    queued = setup.job("b.jpg", outcome="queued")  # last: job() takes the oldest queued one
    (tmp_path / "secret.txt").write_text("secret")
    with setup.client() as client:
        answer = client.get(f"/artwork/{done.id}")
        assert answer.status_code == 200
        assert answer.content == (setup.outbox / "booth1/a.jpg").read_bytes()
        assert answer.headers["content-type"] == "image/jpeg"
        for path in (
            f"/artwork/{queued.id}",
            f"/artwork/{failed.id}",
            "/artwork/999",
            "/artwork/-1",
            "/artwork/..%2f..%2fsecret.txt",
            "/artwork/%2e%2e/secret.txt",
            "/artwork/booth1/a.jpg",
            "/artwork//etc/passwd",
            "/static/..%2fapp.py",
            "/static/%2e%2e%2fapp.py",
            "/static/app.py",
            "/static/booth.html",
            f"/source/{done.id}",  # web.show_sources is off
        ):
            assert client.get(path).status_code == 404, path


def test_a_symlink_at_an_output_path_is_not_followed(setup: Setup, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not for the booth")
    planted = setup.job("x.jpg")
    target = setup.outbox / "x.jpg"
    target.unlink()
    target.symlink_to(secret)
    folder = setup.job("sub/y.jpg")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "y.jpg").write_bytes(b"not for the booth either")
    (setup.outbox / "sub" / "y.jpg").unlink()
    (setup.outbox / "sub").rmdir()
    (setup.outbox / "sub").symlink_to(outside)
    with setup.client() as client:
        assert client.get(f"/artwork/{planted.id}").status_code == 404
        assert client.get(f"/artwork/{folder.id}").status_code == 404


def test_sources_are_served_only_when_asked_for(setup: Setup) -> None:
    done = setup.job("p.jpg")
    queued = setup.job("q.jpg", outcome="queued")
    with setup.client("web: {show_sources: true}") as client:
        answer = client.get(f"/source/{done.id}")
        assert answer.status_code == 200
        assert answer.content == (setup.inbox / "p.jpg").read_bytes()
        assert client.get(f"/source/{queued.id}").status_code == 404
        state = client.get("/api/state").json()
        assert state["recent"][0]["photo"] == f"source/{done.id}"


def test_the_token_guards_every_route_but_healthz(setup: Setup) -> None:
    done = setup.job("a.jpg")
    with setup.client(f"web: {{token: {TOKEN}, listen: '0.0.0.0:8750'}}") as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/booth", "/metrics", "/readyz", "/api/state", f"/artwork/{done.id}"):
            answer = client.get(path)
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"] == "Bearer"
        assert (
            client.get("/", headers={"Authorization": "Bearer wrong-token-123456"}).status_code
            == 401
        )
        assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.post(f"/api/retry/{done.id}", headers={"Origin": BASE}).status_code == 401
        # The kiosk browser: ?token= once, then a cookie.
        first = client.get(f"/booth?token={TOKEN}")
        assert first.status_code == 200
        assert client.cookies.get(TOKEN_COOKIE) == TOKEN
        assert client.get(f"/artwork/{done.id}").status_code == 200
        client.cookies.clear()
        assert client.get(f"/artwork/{done.id}").status_code == 401


def test_loopback_without_token_answers_loopback_names_only(setup: Setup) -> None:
    with setup.client() as client:
        assert client.get("/api/state").status_code == 200
        assert client.get("/api/state", headers={"Host": "localhost:8750"}).status_code == 200
        # DNS rebinding: a foreign name that resolves to 127.0.0.1.
        assert client.get("/api/state", headers={"Host": "evil.example:8750"}).status_code == 421


def test_retry_needs_the_same_origin_and_queues_the_job(setup: Setup) -> None:
    failed = setup.job("bad.jpg", outcome="failed")
    done = setup.job("good.jpg")
    with setup.client() as client:
        assert client.post(f"/api/retry/{failed.id}").status_code == 403  # no Origin, no Referer
        crossed = {"Origin": "http://evil.example"}
        assert client.post(f"/api/retry/{failed.id}", headers=crossed).status_code == 403
        referer = {"Referer": "http://evil.example/page"}
        assert client.post(f"/api/retry/{failed.id}", headers=referer).status_code == 403
        assert client.get(f"/api/retry/{failed.id}").status_code == 405
        assert setup.journal.job(failed.id).state is JobState.FAILED
        ok = client.post(f"/api/retry/{failed.id}", headers={"Origin": BASE})
        assert ok.status_code == 200, ok.text
        assert setup.journal.job(failed.id).state is JobState.QUEUED
        assert (
            client.post(f"/api/retry/{done.id}", headers={"Referer": BASE + "/"}).status_code == 409
        )


def test_readyz_follows_the_live_state(setup: Setup) -> None:
    now = [time.time()]
    with setup.client(wall=lambda: now[0]) as client:
        missing = client.get("/readyz")
        assert missing.status_code == 503
        assert missing.json()["ready"] is False
        live = setup.live()
        assert client.get("/readyz").json() == {"ready": True, "reasons": []}
        setup.inbox.rename(setup.root / "inbox-away")  # a share unmounted
        live.publish()
        away = client.get("/readyz")
        assert away.status_code == 503
        assert away.json()["reasons"] == ["the input folder is not reachable"]
        (setup.root / "inbox-away").rename(setup.inbox)
        live.publish()
        assert client.get("/readyz").status_code == 200
        live(events.ServiceHeartbeat(healthy=False))  # the worker shows no progress
        live.publish()
        assert "stuck" in client.get("/readyz").json()["reasons"][0]
        live(events.ServiceHeartbeat(healthy=True))
        live.publish()
        now[0] += 60  # no heartbeat for a minute: stopped or stuck
        stale = client.get("/readyz")
        assert stale.status_code == 503
        assert "no heartbeat" in stale.json()["reasons"][0]


def test_state_shows_running_progress_and_filters(setup: Setup) -> None:
    setup.job("booth1/a.jpg")
    setup.job("booth2/b.jpg")
    running = setup.job("booth1/c.jpg", outcome="running")
    live = setup.live()
    live(
        events.JobStarted(
            job=running.id, source=running.source, style="starry", steps=100, scales=2
        )
    )
    live(events.JobProgress(jobs=(running.id,), scale=2, scales=2, step=75, steps=100, seconds=3.2))
    live.publish()
    with setup.client() as client:
        state = client.get("/api/state").json()
        assert [a["source"] for a in state["recent"]] == ["booth2/b.jpg", "booth1/a.jpg"]
        (progress,) = state["running"]
        assert progress["job"] == running.id
        assert (progress["scale"], progress["percent"], progress["seconds"]) == (2, 75.0, 3.2)
        assert state["counts"]["running"] == 1
        booth1 = client.get("/api/state?folder=booth1").json()
        assert [a["source"] for a in booth1["recent"]] == ["booth1/a.jpg"]
        assert len(booth1["running"]) == 1
        assert client.get("/api/state?folder=booth2").json()["running"] == []
        assert client.get("/api/state?rule=7").json()["recent"] == []


def test_metrics_parse_and_count_what_the_journal_holds(setup: Setup) -> None:
    for n in range(3):
        setup.job(f"d{n}.jpg")
    setup.job("f.jpg", outcome="failed")
    setup.job("c.jpg", outcome="cancelled")
    setup.job("q.jpg", outcome="queued")
    setup.live()
    with setup.client() as client:
        text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    outcomes = {s.labels["outcome"]: s.value for s in families["stylewatch_jobs"].samples}
    counts = setup.journal.counts()
    assert outcomes == {
        "done": counts[JobState.DONE],
        "failed": counts[JobState.FAILED],
        "cancelled": counts[JobState.CANCELLED],
        "retry": 0,
    }
    latency = {
        s.name: s.value
        for s in families["stylewatch_latency_seconds"].samples
        if s.labels.get("le") in (None, "+Inf")
    }
    assert latency["stylewatch_latency_seconds_count"] == 3
    duration = {s.name: s.value for s in families["stylewatch_job_duration_seconds"].samples}
    assert duration["stylewatch_job_duration_seconds_count"] == 3
    assert duration["stylewatch_job_duration_seconds_sum"] >= 0
    queue = {s.labels["state"]: s.value for s in families["stylewatch_queue_jobs"].samples}
    assert queue == {"queued": 1, "running": 0}
    (up,) = families["stylewatch_worker_up"].samples
    assert (up.labels, up.value) == ({"device": "cpu"}, 1.0)
    assert families["stylewatch_build_info"].samples[0].value == 1.0
    assert families["stylewatch_oldest_queued_age_seconds"].samples[0].value >= 0


def test_the_web_starts_without_torch_and_refuses_an_open_address_without_token(
    setup: Setup,
) -> None:
    code = (
        "import sys, daemon.cli, daemon.web.app, daemon.web.server, daemon.metrics, daemon.live;"
        " sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    setup.config()
    done = subprocess.run(
        [str(STYLEWATCH), "web", "-c", str(setup.root / "config.yaml"), "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert done.returncode == 78, done.stderr
    assert "without a token" in done.stderr
    assert "web.token" in done.stderr


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("web: {listen: '8750'}", "web.listen"),
        ("web: {listen: '::1:8750'}", "web.listen"),
        ("web: {token: short}", "web.token"),
        ("web: {shows_sources: true}", "did you mean 'show_sources'"),
        ("hooks: {on_done: 'lp {output}'}", "run without a shell"),
        ("hooks: {timeout_seconds: 0}", "hooks.timeout_seconds"),
        ("metrics: {textfile: /no/such/folder/x.prom}", "metrics.textfile"),
    ],
)
def test_bad_web_hooks_and_metrics_settings_are_refused_with_their_key(
    setup: Setup, extra: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        setup.config(extra)
    assert problem in str(caught.value)


def test_web_hooks_and_metrics_settings_are_read(setup: Setup) -> None:
    config = setup.config(
        f"web: {{listen: '[::1]:9000', token: {TOKEN}, show_sources: true}}\n"
        "hooks: {on_done: [lp, '{output}'], timeout_seconds: 5}\n"
        "metrics: {textfile: state.prom, interval_seconds: 60}\n"
    )
    assert (config.web.listen, config.web.token, config.web.show_sources) == (
        "[::1]:9000",
        TOKEN,
        True,
    )
    assert (config.hooks.on_done, config.hooks.on_failed) == (("lp", "{output}"), ())
    assert config.hooks.timeout_seconds == 5
    assert config.metrics.textfile == setup.root / "state.prom"
    assert config.metrics.interval_seconds == 60


def test_state_lists_photos_waiting_after_passing_trouble(setup: Setup) -> None:
    job = setup.job("booth1/w.jpg", outcome="running")
    setup.journal.mark_failed(
        job.id,
        "No space left on device",
        "io",
        permanent=False,
        retry_at=time.time() + 30,
        transient=True,
    )
    setup.job("booth1/plain.jpg", outcome="queued")  # queued, no trouble: not listed
    with setup.client() as client:
        (waiting,) = client.get("/api/state").json()["waiting"]
    assert (waiting["source"], waiting["kind"]) == ("booth1/w.jpg", "io")
    assert waiting["error"] == "No space left on device"
    assert 0 < waiting["retry_in"] <= 30
