"""Run the web application on uvicorn, on a socket the command line already bound."""

from __future__ import annotations

import signal
import socket
from types import FrameType

import structlog
import uvicorn

from daemon.config import Config
from daemon.web.app import create_app

log = structlog.get_logger()


def serve(config: Config, sock: socket.socket, listen: str) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn handles both and finishes open requests)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(config, listen=listen)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,  # our structlog set-up (daemon/logs.py) stays in charge
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    # The port actually bound: with port 0 (tests) it is the one place to learn it.
    log.info(
        "web_listening",
        url=f"http://{shown}:{port}",
        token=config.web.token is not None,
        show_sources=config.web.show_sources,
    )
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again for the handler
    # that was there before it. That one is ours and does nothing, so a stop exits 0, like
    # `stylewatch run`.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stopped)
    server.run(sockets=[sock])
    log.info("web_stopped")


def _stopped(signum: int, frame: FrameType | None) -> None:
    """The signal, raised again by uvicorn after its graceful stop: nothing left to do."""
