"""`sidestep serve`'s start-up errors: one line each, before anything listens (no process, no browser)."""

from __future__ import annotations

import socket

import pytest

from sidestep_tui.__main__ import main


def test_a_busy_port_is_one_line_naming_the_port_and_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: port {port} on 127.0.0.1 is in use (pick another with --port)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "error: --port 70000 is not a port number (1-65535)\n"),
        (["--host", "no-such-host.invalid"], "error: --host no-such-host.invalid: unknown address"),
    ],
)
def test_a_bad_port_or_host_is_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
