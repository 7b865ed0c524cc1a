"""Drive a real headless Chromium over the DevTools protocol (reusable by other tests).

    from tests.dashboards.browser import ensure_chromium, running_server, page_check

    chromium = ensure_chromium()            # path; skips (fails when CI=true) when Chromium is missing
    with running_server(app) as base:       # uvicorn on 127.0.0.1:<free port> in a thread
        r = page_check(base + "/", "test-artifacts/screenshots/overview.png")
        assert r["broken_images"] == 0 and r["status"] == 200

`page_check` loads the URL (http:// or file://), waits for the load event and
for every <img> to settle, saves a full-page PNG screenshot and returns
dict(title, broken_images, broken, n_images, text, status, screenshot).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:                  # system_services.py, also when run as a script
    sys.path.insert(0, str(TESTS_DIR))

from system_services import find_chromium, service_missing  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--disable-extensions",
    "--disable-default-apps", "--no-default-browser-check", "--window-size=1400,1000",
]

_CHECK_JS = r"""
(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => (i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 8000); }))));
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src);
  return {title: document.title, n_images: imgs.length, broken: broken,
          text: document.body ? document.body.innerText : ''};
})()
"""


def ensure_chromium() -> str:
    """The Chromium binary. Not installed here (`make system-deps` does that): when it is missing the
    calling test is skipped, or failed when CI=true (tests/system_services.py)."""
    return find_chromium() or service_missing("chromium is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a background thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Chromium:
    """One headless Chromium process, driven over the DevTools protocol (one tab)."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise RuntimeError("chromium not found (`make system-deps` installs it)")
        self.timeout = timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="na-chromium-")
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self._id = 0
        self._events: list[dict] = []

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Chromium":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        import httpx
        from websockets.sync.client import connect

        udd = Path(self._tmp.name)
        self.proc = subprocess.Popen(
            [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={udd}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = udd / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
            try:
                first = port_file.read_text().splitlines()[0]
                port = int(first)
                break
            except (OSError, IndexError, ValueError):
                time.sleep(0.1)
        if port is None:
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        ws_url = None
        with httpx.Client(trust_env=False, timeout=5) as http:
            while time.monotonic() < deadline and ws_url is None:
                try:
                    targets = http.get(f"http://127.0.0.1:{port}/json/list").json()
                    ws_url = next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if ws_url is None:
                    time.sleep(0.1)
        if ws_url is None:
            self.close()
            raise RuntimeError("no page target in chromium")
        self.ws = connect(ws_url, max_size=None, open_timeout=self.timeout, proxy=None)
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Runtime.enable")

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        with contextlib.suppress(Exception):
            self._tmp.cleanup()

    # ----------------------------------------------------------------- protocol
    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method}")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._events.append(msg)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, e in enumerate(self._events):
                if e["method"] == method:
                    return self._events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event")
            msg = json.loads(self.ws.recv(timeout=left))
            if "method" in msg:
                self._events.append(msg)

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page (promises awaited); returns the value."""
        res = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: str | Path, max_height: int = 8000) -> Path:
        """Full-page PNG of the current page."""
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        w = max(400, min(int(size[0] or 1400), 4000))
        h = max(300, min(int(size[1] or 1000), max_height))
        data = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "fromSurface": True,
            "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}, timeout=60)["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    # ----------------------------------------------------------------- the check
    def check(self, url: str, screenshot_path: str | Path | None = None, max_height: int = 8000) -> dict:
        self._events.clear()
        nav = self.send("Page.navigate", {"url": url})
        if nav.get("errorText"):
            raise RuntimeError(f"navigation to {url} failed: {nav['errorText']}")
        self.wait_event("Page.loadEventFired")
        status = None
        for e in self._events:
            if e["method"] == "Network.responseReceived" and e["params"].get("type") == "Document":
                status = e["params"]["response"].get("status")
        val = self.evaluate(_CHECK_JS)
        shot = self.screenshot(screenshot_path, max_height) if screenshot_path is not None else None
        return {"title": val["title"], "n_images": val["n_images"], "broken_images": len(val["broken"]),
                "broken": val["broken"], "text": val["text"], "status": status,
                "screenshot": str(shot) if shot else None}


def page_check(url: str, screenshot_path: str | Path | None = None, *, chromium: str | None = None,
               timeout: float = 30.0) -> dict:
    """Load `url` in a fresh headless Chromium; see the module docstring for the result."""
    with Chromium(chromium, timeout=timeout) as browser:
        return browser.check(url, screenshot_path)
