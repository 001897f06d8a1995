"""`stylewatch web` beside the real service: /readyz follows the service's life, and /metrics,
the service's own metrics textfile and the journal agree after a burst with failures."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import Fleet, photo, wait_until
from prometheus_client.parser import text_string_to_metric_families
from webharness import Web, add_config


def outcomes(text: str) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {s.labels["outcome"]: s.value for s in families["stylewatch_jobs"].samples}


def test_readyz_turns_503_when_the_service_stops_or_is_stuck_and_200_after(
    fleet: Fleet, webs: list[Web]
) -> None:
    daemon = fleet.daemon()
    web = Web(fleet.root, daemon.config).start()
    webs.append(web)
    status, body = web.json("/readyz")
    assert status == 503  # never ran: no live state yet
    assert body["ready"] is False
    assert web.get("/api/state")[0] == 503
    assert not (fleet.root / "state").exists()  # the web never creates the journal
    daemon.start()
    wait_until(lambda: web.get("/readyz")[0] == 200, "ready once the service is")
    assert web.json("/readyz")[1] == {"ready": True, "reasons": []}

    daemon.signal(signal.SIGSTOP)  # stuck: alive, but its main loop makes no heartbeat
    try:
        wait_until(lambda: web.get("/readyz")[0] == 503, "not ready while stuck")
        assert "no heartbeat" in web.json("/readyz")[1]["reasons"][0]
    finally:
        daemon.signal(signal.SIGCONT)
    wait_until(lambda: web.get("/readyz")[0] == 200, "ready again once it runs")

    assert daemon.stop() == 0
    status, body = web.json("/readyz")
    assert status == 503
    assert body["reasons"][0] == "the service has stopped"
    assert web.get("/healthz")[0] == 200  # the web process itself lives on
    fleet.again(daemon).start()
    wait_until(lambda: web.get("/readyz")[0] == 200, "ready after a restart")
    assert web.stop() == 0  # SIGTERM: a clean stop


def test_metrics_match_the_journal_after_a_burst_with_failures(
    fleet: Fleet, webs: list[Web], tmp_path: Path
) -> None:
    textfile = tmp_path / "textfile" / "stylewatch.prom"
    textfile.parent.mkdir()
    daemon = fleet.daemon(batch=3)
    add_config(daemon, f"metrics: {{textfile: {textfile}, interval_seconds: 1}}\n")
    daemon.start()
    web = Web(fleet.root, daemon.config).start()
    webs.append(web)
    good = [photo(fleet.inbox / f"p{n}.jpg", (20 * n, 100, 200 - 10 * n)) for n in range(5)]
    for name in ("broken1.jpg", "broken2.jpg"):
        (fleet.inbox / name).write_bytes(b"\xff\xd8\xff not a jpeg at all")
    expected = {"done": len(good), "failed": 2}
    daemon.wait(lambda: daemon.status()["counts"] == expected, "the burst to settle")

    status, body = web.get("/metrics")
    assert status == 200
    counts = daemon.status()["counts"]
    assert outcomes(body.decode()) == {
        "done": counts["done"],
        "failed": counts["failed"],
        "cancelled": 0,
        "retry": 0,
    }
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    histogram = {s.name: s.value for s in families["stylewatch_latency_seconds"].samples}
    assert histogram["stylewatch_latency_seconds_count"] == counts["done"]
    duration = {s.name: s.value for s in families["stylewatch_job_duration_seconds"].samples}
    assert duration["stylewatch_job_duration_seconds_count"] == counts["done"]
    assert (
        0
        < duration["stylewatch_job_duration_seconds_sum"]
        <= histogram["stylewatch_latency_seconds_sum"]
    )
    (up,) = families["stylewatch_worker_up"].samples
    assert (up.labels["device"], up.value) == ("cpu", 1.0)

    # The service's textfile says the same (it is rewritten every second).
    wait_until(
        lambda: textfile.exists() and outcomes(textfile.read_text()) == outcomes(body.decode()),
        "the textfile to agree",
    )
    assert daemon.stop() == 0
    final = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    (up,) = final["stylewatch_worker_up"].samples
    assert up.value == 0.0  # written once more at stop
    assert [p.name for p in textfile.parent.iterdir()] == ["stylewatch.prom"]
