"""Renders HTML pages in headless Chromium (the distribution's ``chromium`` package) through the DevTools protocol:
every request the page makes, its output areas of zero height and its images that did not load."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# JupyterLab's and the classic template's output areas, and the index page's figures
MEASURE = """(() => {
  const areas = [...document.querySelectorAll('.jp-OutputArea-output, .output_subarea')];
  const zero = areas.filter(e => e.getBoundingClientRect().height < 1).map(e => e.outerHTML.slice(0, 300));
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 200));
  return JSON.stringify({title: document.title, areas: areas.length, zero: zero, broken: broken,
                         height: document.body ? document.body.scrollHeight : 0});
})()"""


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless Chromium for several pages (``with Browser() as b: b.render(path)``)."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError("chromium is not installed")
        self.timeout = timeout

    def __enter__(self) -> Browser:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="histlib-chromium-")
        port = _free_port()
        self.proc = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", f"--user-data-dir={self.profile}",
             f"--remote-debugging-port={port}", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + self.timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        self.call("Network.enable")
        self.call("Page.enable")
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def _wait_for(self, method: str) -> None:
        deadline = time.time() + self.timeout
        while not any(e.get("method") == method for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def render(self, page: Path) -> dict:
        """Loads ``page`` (a local file) and returns ``{title, areas, zero, broken, height, requests}``: the output
        areas found, those of zero height, the images that did not load and every non-local URL requested."""
        self.events = []
        self.call("Page.navigate", url=Path(page).resolve().as_uri())
        self._wait_for("Page.loadEventFired")
        time.sleep(0.2)  # late requests (fonts, lazy images) show up as events before the measurement returns
        result = json.loads(self.call("Runtime.evaluate", expression=MEASURE, returnByValue=True)["result"]["value"])
        urls = [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        result["requests"] = [u for u in urls if not u.startswith(("file:", "data:", "about:", "blob:"))]
        return result
