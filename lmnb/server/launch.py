"""Running the app: `serve` (blocking, for `lmnb serve`) and `start_server` (a uvicorn
server in a background thread, for notebooks and tests)."""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable

import uvicorn

from lmnb.errors import LmnbError
from lmnb.server.app import create_app
from lmnb.server.config import ServerConfig


class _Uvicorn(uvicorn.Server):
    """Calls `on_ready` once the sockets accept connections; stopping (also by a
    signal) aborts the requests in flight so that open streams end at once."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.on_ready()

    def request_stop(self) -> None:
        self.should_exit = True
        self.config.app.state.service.abort_all()

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self.config.app.state.service.abort_all()


class ServerHandle:
    """A server running in a background thread: `.url` (ends in /v1), `.stop()`."""

    def __init__(self, server: _Uvicorn, thread: threading.Thread, host: str, port: int) -> None:
        self._server, self._thread = server, thread
        self.host, self.port, self.url = host, port, base_url(host, port)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (idempotent); running requests are aborted. The runtime stays."""
        self._server.request_stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> ServerHandle:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r}, running={self.running})"


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # a host name: it may resolve to any interface
        return False


def warn_if_exposed(host: str, api_key: str | None) -> None:
    """Serving beyond this machine without a key lets anyone who can reach it use the model."""
    if api_key is None and not is_loopback(host):
        logging.getLogger("lmnb.server").warning(
            "lmnb serve: listening on %s without an API key: anyone who can reach this address "
            "can use the model; set --api-key (or LMNB_API_KEY), or keep the default 127.0.0.1", host)


def bind(host: str, port: int) -> socket.socket:
    """A bound socket (port 0: a free port chosen by the OS)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LmnbError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port "
                        "(0 picks a free one)") from None
    return sock


def _uvicorn(runtime, config: ServerConfig, log_level: str, on_ready, quiet: bool) -> _Uvicorn:
    ucfg = uvicorn.Config(create_app(runtime, config), log_level=log_level,
                          access_log=not quiet, timeout_graceful_shutdown=5,
                          **({"log_config": None} if quiet else {}))
    return _Uvicorn(ucfg, on_ready)


def start_server(runtime, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 model_name: str | None = None, log_level: str = "warning",
                 **options) -> ServerHandle:
    """Serve `runtime` over HTTP from a background thread and return once it accepts
    connections. `options` are those of `ServerConfig` (max_body_bytes, body_timeout,
    max_tokens_limit, max_n, max_choices). Uvicorn's logging setup is left alone."""
    config = ServerConfig(model_name=model_name or runtime.spec, api_key=api_key, **options)
    warn_if_exposed(host, api_key)
    sock = bind(host, port)
    ready = threading.Event()
    server = _uvicorn(runtime, config, log_level, ready.set, quiet=True)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="lmnb-serve", daemon=True)
    thread.start()
    while not ready.wait(0.05):
        if not thread.is_alive():
            sock.close()
            raise LmnbError(f"the server on {host}:{port} failed to start (see the log)")
    return ServerHandle(server, thread, host, sock.getsockname()[1])


def serve(runtime, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None,
          model_name: str | None = None, log_level: str = "info",
          on_ready: Callable[[str], None] | None = None, **options) -> None:
    """Serve `runtime` in this thread until Ctrl-C / SIGTERM. `on_ready(url)` runs once
    the server accepts connections."""
    config = ServerConfig(model_name=model_name or runtime.spec, api_key=api_key, **options)
    warn_if_exposed(host, api_key)
    sock = bind(host, port)
    url = base_url(host, sock.getsockname()[1])
    server = _uvicorn(runtime, config, log_level, lambda: on_ready and on_ready(url), quiet=False)
    server.run(sockets=[sock])
