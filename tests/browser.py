"""Drives Debian's Chromium (headless) through the DevTools protocol: open a page, run JavaScript, move the mouse,
take screenshots. Tests that need it skip without Chromium (``apt-get install -y chromium``, as ``.ci/run`` does).

    with Browser(tmp_path) as browser:
        browser.goto("http://127.0.0.1:8089/?tab=dg_rows")
        browser.wait_for("document.querySelector('#dg-chart-rows canvas')")
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    pass


class Browser:
    """One headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, workdir: Path, width: int = 1400, height: int = 1000):
        self.profile = Path(workdir) / "chromium-profile"
        self.width, self.height = width, height
        self.proc: subprocess.Popen | None = None
        self.socket: websocket.WebSocket | None = None
        self._ids = itertools.count(1)

    def start(self) -> Browser:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Browser:
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed")
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a profile used before holds the port of a Chromium long gone
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
        command += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
        command += ["--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}"]
        command += [f"--window-size={self.width},{self.height}", "about:blank"]
        # a session of its own: stop() ends Chromium's helper processes too, whatever its wrapper script does
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 60  # a busy 2-core machine: Chromium can take its time
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BrowserError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [target for target in json.loads(response.read()) if target["type"] == "page"]
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def send(self, method: str, **params) -> dict:
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def goto(self, url: str, timeout: float = 30) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.location.href !== 'about:blank'", timeout)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.25):
        """Evaluate until the value is truthy; return it (or fail with the last value)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                if not value:
                    raise BrowserError(f"timed out waiting for {expression!r} (last value {value!r})")
                return value
            time.sleep(interval)

    def move_mouse(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def screenshot(self, path: Path, clip: dict | None = None) -> Path:
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
            params["captureBeyondViewport"] = True
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
        return Path(path)

    def element_box(self, selector: str) -> dict:
        """The page coordinates of an element: x, y, width, height."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height}; })()"
        )
        if not box:
            raise BrowserError(f"no element {selector!r}")
        return box

    def stop(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(BrowserError, OSError, websocket.WebSocketException):
                self.send("Browser.close")
            self.socket.close()
            self.socket = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
