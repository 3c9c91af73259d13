"""Headless Chromium over the DevTools protocol, for tests that look at a page as a person would.

:class:`Browser` starts ``chromium`` (Debian's package; ``make install-dev`` installs it
when apt is available) on a private profile folder, headless and offline (no sync,
component updates or background networking), with the DevTools protocol on a port of
127.0.0.1 that Chromium picks itself. It attaches to one page and records every console
error, uncaught exception and log error the page produces.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    """The Chromium executable, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium page, driven over the DevTools protocol (a context manager)."""

    def __init__(self, width: int = 1200, height: int = 900, timeout: float = 60) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self.errors: list[str] = []
        self._id = 0

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed")
        self._profile = tempfile.mkdtemp(prefix="chromium-test-")
        self._proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        return self

    def __exit__(self, *exc) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.errors.append("console: " + " ".join(map(str, args)))
        elif method == "Runtime.exceptionThrown":
            detail = params.get("exceptionDetails", {})
            text = detail.get("exception", {}).get("description") or detail.get("text", "")
            self.errors.append(f"exception: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text', '')}")

    def call(self, method: str, params: dict | None = None, wait_for: str | None = None) -> dict:
        """Send one command and return its result (events seen meanwhile are recorded).

        With ``wait_for``, also wait for that event after the answer.
        """
        self._id += 1
        me = self._id
        self._ws.send(json.dumps({"id": me, "method": method, "params": params or {}}))
        result, seen = None, wait_for is None
        deadline = time.monotonic() + self.timeout
        while result is None or not seen:
            msg = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result = msg.get("result", {})
            elif "method" in msg:
                self._event(msg)
                if msg["method"] == wait_for:
                    seen = True
        return result

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for its load event."""
        self.call("Page.navigate", {"url": url}, wait_for="Page.loadEventFired")

    def js(self, expression: str):
        """Evaluate ``expression`` in the page; returns its value (JSON-able)."""
        got = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in got:
            detail = got["exceptionDetails"]
            text = detail.get("exception", {}).get("description") or detail.get("text")
            raise RuntimeError(f"{expression[:60]}...: {text}")
        return got["result"].get("value")

    def screenshot(self, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole page by default)."""
        params: dict = {"format": "png"}
        if full_page:
            height = int(self.js("document.documentElement.scrollHeight"))
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
            )
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
