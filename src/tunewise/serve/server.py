"""Running the app with uvicorn: in the foreground for `tunewise serve`, or in a background thread
(tests, benchmarks) on a port the system picks."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from tunewise.errors import TunewiseError


def _config(app, host: str, port: int, log_level: str) -> uvicorn.Config:
    # Headers (and so API keys) are never logged: the access log holds the method, path and status.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                          timeout_graceful_shutdown=5, server_header=False)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: one the system picks), or a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise TunewiseError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                            "pick another --port (or stop what is using this one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, sock: socket.socket, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` on ``sock``: ``server.run(sockets=[sock])`` serves until Ctrl-C
    (or until ``server.should_exit`` is set)."""
    host, port = sock.getsockname()[:2]
    return uvicorn.Server(_config(app, host, port, log_level))


class ServerThread:
    """``with ServerThread(app) as srv: srv.url`` — the app served on a loopback port in a thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = make_server(app, self.sock, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="tunewise-serve")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
