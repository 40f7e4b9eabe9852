"""The demo's server in a background thread (tests and the screenshot script drive it with
a browser in the same process): ``BackgroundServer(port=0)`` picks a free port."""
from __future__ import annotations

import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving ``diffinfer.web.create_app()`` on ``host:port`` in a daemon thread:
    ``with BackgroundServer() as url: ...`` (``url`` like ``http://127.0.0.1:PORT``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        self.host, self.port, self.timeout = host, port or free_port(host), timeout
        self.server = self.thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        import uvicorn

        from . import create_app
        config = uvicorn.Config(create_app(), host=self.host, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="diffinfer-web")
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the demo server did not start on {self.url}")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=self.timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
