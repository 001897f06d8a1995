"""`stylewatch web`: the booth page, the admin dashboard, /metrics, /healthz and /readyz.

A separate process from the stylizing service, which keeps its no-network sandbox: this one reads
the journal (never creating or migrating it) and the live state the service publishes in its
state folder (daemon/live.py). It writes one thing, a retry from the dashboard, through the
journal like `stylewatch retry` does.

Files are served by job id only: the path comes from the journal, never from the request, and is
opened without following a symlink and only when it lies inside its folder. So `..`, absolute
paths, planted symlinks and encoded tricks have nothing to act on and get 404.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.config import Config, is_loopback, parse_listen, safe_relpath
from daemon.journal import Job, JobState, Journal, JournalError
from daemon.live import read_live
from daemon.metrics import STALE_SECONDS, readiness, render_jobs

__all__ = ["TOKEN_COOKIE", "create_app"]

log = structlog.get_logger()

TOKEN_COOKIE = "stylewatch_token"
STATIC = Path(__file__).parent / "static"
# The only files under /static/: a fixed table, so no name from a request reaches the disk.
STATIC_FILES = {
    "style.css": "text/css; charset=utf-8",
    "booth.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
PAGES = {"booth": "booth.html", "dashboard": "dashboard.html"}
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
RECENT = 12  # artworks in the booth's strip
FAILURES = 20  # failures on the dashboard
HOURS = 24  # photos per hour, over the last this many hours
# Security headers on every answer: no framing by other sites, no sniffing, nothing from
# elsewhere (the pages use only their own files).
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'",
}

Endpoint = Callable[[Request], Awaitable[Response]]


class _Journal:
    """The journal opened read-mostly, on first use and again after a failure: the web may start
    before the service has ever created it."""

    def __init__(self, state: Path) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._journal: Journal | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[Journal]:
        with self._lock:
            if self._journal is not None and self._journal.lost() is not None:
                # The state folder was reset under us: read the new journal, not the old file.
                self._journal.close()
                self._journal = None
            if self._journal is None:
                self._journal = Journal.open(self._state, exclusive=False)
            journal = self._journal
        try:
            yield journal
        except JournalError:
            with self._lock:
                if self._journal is journal:
                    self._journal = None
                    journal.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None


def create_app(
    config: Config, *, listen: str | None = None, wall: Callable[[], float] = time.time
) -> Starlette:
    """The web application for `config`. `listen` (HOST:PORT) decides which Host headers are
    accepted without a token: on loopback, only loopback names (against DNS rebinding)."""
    journal = _Journal(config.state)
    web = config.web
    host, _ = parse_listen(listen or web.listen)
    loopback_only = web.token is None and is_loopback(host)

    def job_or_none(job_id: int) -> Job | None:
        try:
            with journal.use() as j:
                return j.job(job_id)
        except (KeyError, JournalError):
            return None

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        reasons = readiness(read_live(config.state), wall())
        body: dict[str, Any] = {"ready": not reasons, "reasons": reasons}
        return JSONResponse(body, status_code=200 if not reasons else 503)

    async def metrics(request: Request) -> Response:
        try:
            with journal.use() as j:
                jobs = j.jobs()
        except JournalError:
            jobs = []  # no journal yet: the service is down, which worker_up says
        data = render_jobs(jobs, read_live(config.state), wall())
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        name = PAGES["booth" if request.url.path == "/booth" else "dashboard"]
        html = (STATIC / name).read_text(encoding="utf-8")
        html = html.replace("{{show_sources}}", "true" if web.show_sources else "false")
        return Response(html, media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return _not_found()
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    async def state(request: Request) -> Response:
        live = read_live(config.state)
        now = wall()
        folder = request.query_params.get("folder", "").strip("/")
        rule = request.query_params.get("rule", "")
        try:
            with journal.use() as j:
                jobs = j.jobs()
        except JournalError as exc:
            return JSONResponse(
                {"journal": str(exc), "live": _live_summary(live, now), "running": []},
                status_code=503,
            )

        def shown(job: Job) -> bool:
            in_folder = not folder or job.source.startswith(folder + "/")
            return in_folder and (not rule or str(job.rule) == rule)

        by_id = {job.id: job for job in jobs}
        counts = {s.value: 0 for s in JobState}
        for job in jobs:
            counts[job.state.value] += 1
        done = sorted(
            (job for job in jobs if job.state is JobState.DONE and shown(job)),
            key=lambda job: (job.updated, job.id),
            reverse=True,
        )
        queued = [job.created for job in jobs if job.state is JobState.QUEUED]
        # Queued after trouble that can pass (a full disk, a share away): shown with the reason.
        waiting = [job for job in jobs if job.state is JobState.QUEUED and job.last_error][
            :FAILURES
        ]
        failures = sorted(
            (job for job in jobs if job.state is JobState.FAILED),
            key=lambda job: (job.updated, job.id),
            reverse=True,
        )[:FAILURES]
        running = []
        for item in (live or {}).get("running", []) if _alive(live, now) else []:
            current = by_id.get(int(item.get("job", -1)))
            if current is None or current.state is not JobState.RUNNING or not shown(current):
                continue
            running.append({**_job_summary(current, web.show_sources), **_progress(item)})
        hour = 3600.0
        start = (now // hour - (HOURS - 1)) * hour
        per_hour = [0] * HOURS
        for job in done:
            if job.updated >= start:
                per_hour[min(HOURS - 1, int((job.updated - start) // hour))] += 1
        return JSONResponse(
            {
                "now": now,
                "live": _live_summary(live, now),
                "counts": counts,
                "oldest_queued_seconds": round(now - min(queued), 1) if queued else 0.0,
                "running": running,
                "recent": [_job_summary(job, web.show_sources) for job in done[:RECENT]],
                "failures": [
                    {
                        **_job_summary(job, False),
                        "kind": job.error_kind,
                        "error": job.last_error,
                        "attempts": job.attempts,
                    }
                    for job in failures
                ],
                "waiting": [
                    {
                        **_job_summary(job, False),
                        "kind": job.error_kind,
                        "error": job.last_error,
                        "retry_in": round(max(0.0, job.not_before - now), 1),
                    }
                    for job in waiting
                ],
                "per_hour": {"start": start, "counts": per_hour},
            },
            headers={"Cache-Control": "no-store"},
        )

    async def artwork(request: Request) -> Response:
        job = job_or_none(request.path_params["job"])
        if job is None or job.state is not JobState.DONE:
            return _not_found()
        return _serve_file(config.output, job.output)

    async def source(request: Request) -> Response:
        if not web.show_sources:
            return _not_found()
        job = job_or_none(request.path_params["job"])
        if job is None or job.state not in (JobState.DONE, JobState.RUNNING):
            return _not_found()
        return _serve_file(config.input, job.source)

    async def retry(request: Request) -> Response:
        if not _same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        job_id = request.path_params["job"]
        try:
            with journal.use() as j:
                queued = j.retry_job(job_id)
        except JournalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        if not queued:
            return JSONResponse({"error": f"job {job_id} is not failed"}, status_code=409)
        log.info("job_retry_requested", job=job_id, by="web")
        return JSONResponse({"queued": True, "job": job_id})

    routes = [
        Route("/", page),
        Route("/booth", page),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/api/state", state),
        Route("/api/retry/{job:int}", retry, methods=["POST"]),
        Route("/artwork/{job:int}", artwork),
        Route("/source/{job:int}", source),
        Route("/static/{name:str}", static),
    ]

    async def guard(request: Request, call_next: Endpoint) -> Response:
        if loopback_only and not _loopback_host(request.headers.get("host", "")):
            # Another name resolving to 127.0.0.1 (DNS rebinding): a page elsewhere could read
            # the dashboard through this browser. A token lifts this (it is then needed anyway).
            response: Response = JSONResponse({"error": "unknown host"}, status_code=421)
        elif web.token is not None and request.url.path != "/healthz":
            response = await _authorised(request, call_next, web.token)
        else:
            response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        journal.close()

    return Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
        lifespan=lifespan,
    )


async def _authorised(request: Request, call_next: Endpoint, token: str) -> Response:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    candidates = [
        value.strip() if scheme.lower() == "bearer" else "",
        request.cookies.get(TOKEN_COOKIE, ""),
        request.query_params.get("token", ""),
    ]
    if not any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates):
        return JSONResponse(
            {"error": "a token is needed: Authorization: Bearer TOKEN, or ?token=TOKEN once"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    response = await call_next(request)
    if request.query_params.get("token"):
        # The kiosk browser opens the page once with ?token=; its own requests then use this.
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


def _loopback_host(header: str) -> bool:
    host = urlsplit(f"//{header}").hostname or ""
    return is_loopback(host)


def _same_origin(request: Request) -> bool:
    """The request comes from a page of this server: Origin (or Referer) names its Host."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return False
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    parts = urlsplit(origin)
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc == host


def _not_found() -> Response:
    return JSONResponse({"error": "not found"}, status_code=404)


def _serve_file(root: Path, relative: str) -> Response:
    """`root/relative` when it is a regular file inside `root`, reached without a symlink."""
    try:
        rel = safe_relpath(relative)
    except ValueError:
        return _not_found()
    path = root / rel
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path.parent)]) != real_root:
        return _not_found()  # a folder on the way is a symlink out of the tree
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return _not_found()  # missing, or a symlink (ELOOP)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _not_found()
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    # A done job's file never changes under its id.
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def _alive(live: dict[str, Any] | None, now: float) -> bool:
    if live is None or live.get("stopping"):
        return False
    return now - float(live.get("heartbeat", 0)) < STALE_SECONDS


def _live_summary(live: dict[str, Any] | None, now: float) -> dict[str, Any]:
    reasons = readiness(live, now)
    return {
        "ready": not reasons,
        "reasons": reasons,
        "device": (live or {}).get("device") or "unknown",
        "precision": (live or {}).get("precision") or "",
        "pid": (live or {}).get("pid"),
        "heartbeat_age": None if live is None else round(now - float(live.get("heartbeat", 0)), 1),
    }


def _job_summary(job: Job, show_sources: bool) -> dict[str, Any]:
    return {
        "job": job.id,
        "source": job.source,
        "style": job.style,
        "rule": job.rule,
        "name": Path(job.output).name,
        "updated": job.updated,
        "artwork": f"artwork/{job.id}" if job.state is JobState.DONE else None,
        "photo": f"source/{job.id}" if show_sources else None,
    }


def _progress(item: dict[str, Any]) -> dict[str, Any]:
    keys = ("scale", "scales", "step", "steps", "percent", "seconds")
    return {key: item.get(key) for key in keys}
