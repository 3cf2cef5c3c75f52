"""``sidestep serve``: the same TUI in a browser tab, through textual-serve.

Each browser tab that opens the page gets its own ``sidestep`` process (the terminal app, driven by
Textual's web driver), so it spawns, attaches and leaves runs exactly as in a terminal; the server
itself only relays bytes and costs no GPU. By default it listens on 127.0.0.1 (reach it from another
machine with ``ssh -L 8000:localhost:8000 box``). With ``--host`` it listens where asked and every
request must carry a random token: the URL it prints has it (``?token=...``); the page then keeps it
in a cookie for the websocket it opens.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

LOCAL = "127.0.0.1"
COOKIE = "sidestep_token"


class ServeError(Exception):
    """Why the server cannot start, as one line."""


def served_command(argv: list[str] | None = None) -> str:
    """The shell command each browser tab runs: this Python's ``sidestep`` TUI."""
    return shlex.join([sys.executable, "-m", "sidestep_tui", *(argv or [])])


def check_port(host: str, port: int) -> None:
    """Fail early, in one line, when the address cannot be listened on."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port} is not a port number (1-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: unknown address ({exc.strerror})") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is in use (pick another with --port)") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ServeError(f"port {port} on {host} needs more privileges (use a port above 1023)") from None
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def make_server(host: str, port: int, token: str | None, command: str) -> Any:
    """A textual-serve ``Server`` for ``command``; with a token, every request must carry it."""
    try:
        from aiohttp import web
        from textual_serve.server import Server
    except ImportError:
        raise ServeError("textual-serve is not installed (pip install textual-serve)") from None

    @web.middleware
    async def require_token(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        given = request.query.get("token") or request.cookies.get(COOKIE, "")
        if token is not None and not secrets.compare_digest(given, token):
            return web.Response(status=403, text="Side-Step: this address needs the token printed by `sidestep serve`\n")
        response = await handler(request)
        if token is not None and request.query.get("token") == token and isinstance(response, web.Response):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    @web.middleware
    async def same_origin_urls(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        # The page names its scripts and websocket by absolute URL: the one the browser used, not the
        # listening address (0.0.0.0 is not an address a browser can open).
        if request.path == "/":
            server.public_url = f"{request.scheme}://{request.host}"
        return await handler(request)

    class SidestepServer(Server):
        def initialize_logging(self) -> None:
            pass  # the one line below says where it serves; errors still reach stderr

        async def on_startup(self, app: web.Application) -> None:
            pass  # textual-serve's logo; the line below is printed once the port listens

        def serve(self, debug: bool = False) -> None:
            # textual-serve's serve(), with the one line printed by aiohttp once the site listens
            # (on_startup runs before the port is bound: a client reading the line could be refused).
            self.debug = debug
            loop = asyncio.new_event_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.request_exit)
            ready = f"Serving Side-Step on {url(host, port, token)}  (Ctrl+C stops)"
            web.run_app(
                self._make_app(),
                host=self.host,
                port=self.port,
                handle_signals=False,
                loop=loop,
                print=lambda _text: print(ready, flush=True),
            )

        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            app.middlewares.extend([require_token, same_origin_urls])
            return app

    server = SidestepServer(command, host=host, port=port, title="Side-Step")
    return server


def url(host: str, port: int, token: str | None) -> str:
    shown = "localhost" if host in (LOCAL, "localhost") else ("<this machine's address>" if host in ("0.0.0.0", "::") else host)
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def run_serve(host: str | None, port: int, argv: list[str] | None = None) -> int:
    """``sidestep serve``: localhost without a token; any ``--host`` given, with one."""
    token = None if host is None else secrets.token_urlsafe(16)
    host = host or LOCAL
    try:
        check_port(host, port)
        server = make_server(host, port, token, served_command(argv))
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server.serve()
    except OSError as exc:  # lost the port between the check and the start
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
