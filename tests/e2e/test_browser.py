"""`sidestep serve` in a real browser: headless Chromium (the system package) opens the page, the TUI
draws in it, key presses typed into the page reach the app (F5: the Runs screen, Enter: the monitor of
a recorded demo run, with its steps and loss), and a screenshot is taken.

Chromium is driven over the DevTools protocol (its websocket, with aiohttp): nothing is downloaded. The
terminal in the page draws on a canvas, so what the page shows is read from the websocket frames the
page received from the server (CDP Network events), and the screenshot is there to look at:
SIDESTEP_SCREENSHOT_UPDATE=1 writes it to tests/e2e/browser_monitor.png (committed), otherwise it goes
to the test's temp folder. Skips only when no Chromium can be found.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "ui"))
from ui_helpers import make_run_dir  # noqa: E402

from sidestep_tui.settings import Settings, save_settings  # noqa: E402

SHOT = Path(__file__).with_name("browser_monitor.png")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
KEYS = {"F5": 116, "Enter": 13}


def find_browser() -> str | None:
    wanted = os.environ.get("SIDESTEP_CHROMIUM")
    if wanted:
        return wanted
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Page:
    """One page of a Chromium over CDP: send commands, keep every websocket frame the page received."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.received = bytearray()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.replies:
                self.replies.pop(data["id"]).set_result(data)
            elif data.get("method") == "Network.webSocketFrameReceived":
                frame = data["params"]["response"]
                payload = frame["payloadData"]
                self.received += base64.b64decode(payload) if frame.get("opcode") == 2 else payload.encode()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self.next_id] = reply
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        result = await asyncio.wait_for(reply, 20)
        assert "error" not in result, result
        return dict(result.get("result", {}))

    async def wait_for_text(self, text: bytes, timeout: float, since: int = 0) -> int:
        """Where ``text`` first shows in what the page received after ``since``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (at := self.received.find(text, since)) < 0:
            if time.monotonic() > deadline:
                shown = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[^\[]", b"", bytes(self.received[since:]))
                raise AssertionError(f"{text!r} never reached the page; it got: {shown[-1500:]!r}")
            await asyncio.sleep(0.1)
        return at

    async def press(self, key: str) -> int:
        mark = len(self.received)
        code = KEYS[key]
        common = {"key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        await self.send("Input.dispatchKeyEvent", type="rawKeyDown", **common)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **common)
        return mark


async def open_page(browser: str, tmp: Path) -> AsyncIterator[Page]:
    import aiohttp

    port = free_port()
    proc = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         f"--user-data-dir={tmp / 'chromium'}", f"--remote-debugging-port={port}", "--window-size=1100,720", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        targets = [t for t in await r.json() if t.get("type") == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "Chromium did not open its DevTools port"
                await asyncio.sleep(0.2)
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                yield page
                page.reader.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.integration
async def test_the_tui_in_a_browser_tab(tmp_path: Path) -> None:
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no Chromium found ({', '.join(BROWSERS)} on PATH, or SIDESTEP_CHROMIUM): apt-get install chromium")
    config, runs = tmp_path / "config", tmp_path / "runs"
    save_settings(Settings(checkpoint_root=str(tmp_path), output_root=str(runs)), config / "settings.json")
    make_run_dir(runs, "demo-lora")  # a recorded demo run: 6 steps, its losses
    env = dict(os.environ, SIDESTEP_CONFIG_DIR=str(config), PYTHONUNBUFFERED="1")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sidestep_tui", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "Serving Side-Step on http://localhost:PORT/?token=...  (Ctrl+C stops)"
        assert "token=" in line, line + server.stdout.read()
        url = line.split()[3].replace("localhost", "127.0.0.1")
        # --host given: the page needs the token.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.split("?")[0], timeout=10)
        assert refused.value.code == 403

        async for page in open_page(browser, tmp_path):
            await page.send("Network.enable")
            await page.send("Page.enable")
            await page.send("Page.navigate", url=url)
            await page.wait_for_text(b"Models", 30)  # the TUI's first screen, drawn in the page
            await page.send("Input.dispatchMouseEvent", type="mousePressed", x=500, y=300, button="left", clickCount=1)
            await page.send("Input.dispatchMouseEvent", type="mouseReleased", x=500, y=300, button="left", clickCount=1)
            mark = await page.press("F5")  # typed into the page: the Runs screen lists the run
            await page.wait_for_text(b"demo-lora", 15, since=mark)
            mark = await page.press("Enter")  # the monitor replaying that run: its steps and loss
            await page.wait_for_text(b"REPLAY (read-only)", 15, since=mark)
            await page.wait_for_text(b"final loss", 5, since=mark)
            await page.wait_for_text(b"step", 5, since=mark)
            await asyncio.sleep(1.0)  # let the canvas draw the last frame
            shot = base64.b64decode((await page.send("Page.captureScreenshot", format="png"))["data"])
            assert shot.startswith(b"\x89PNG") and len(shot) > 20_000, len(shot)  # a drawn terminal, not a blank page
            target = SHOT if os.environ.get("SIDESTEP_SCREENSHOT_UPDATE") == "1" else tmp_path / SHOT.name
            target.write_bytes(shot)
    finally:
        server.terminate()
        server.wait(15)
