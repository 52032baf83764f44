"""The HTML report in a real headless Chromium (Debian's ``chromium``), driven over the DevTools
protocol with the standard library only: the page loads with no console errors, requests
nothing but itself and its inline images, shows the verdict above the plots, and its screenshot
is not blank.

Chromium is installed with ``apt-get install -y chromium``; without it these tests are skipped.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from test_report_cases import ALL_CASES, verified_report

from tuneproof.report.files import write_html
from tuneproof.report.html import VERDICT_COLOURS
from tuneproof.report.schema import Report

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH = 1200


class DevTools:
    """A minimal DevTools-protocol client over one WebSocket (RFC 6455, text frames only)."""

    def __init__(self, ws_url: str, timeout: float = 20.0) -> None:
        url = urlsplit(ws_url)
        assert url.hostname and url.port
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv_some()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        self.events: list[dict[str, Any]] = []
        self.next_id = 0

    def _recv_some(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("chromium closed the DevTools connection")
        return chunk

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._recv_some()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _message(self) -> dict[str, Any]:
        parts: list[bytes] = []
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)
            if opcode == 0x8:
                raise ConnectionError("chromium closed the DevTools connection")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            parts.append(payload)
            if first & 0x80:
                message: dict[str, Any] = json.loads(b"".join(parts))
                return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command; return its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        self._send_frame(
            0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        )
        while True:
            message = self._message()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.events:
                if message.get("method") == event:
                    return message
            self.events.append(self._message())
        raise TimeoutError(f"no {event} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageLoad:
    """What happened while a page loaded."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    screenshot: Image.Image | None = None


_FACTS_JS = """(() => {
  const verdict = document.getElementById('verdict');
  const images = [...document.images];
  return {
    headline: verdict?.querySelector('h1')?.innerText ?? null,
    verdictBottom: verdict ? verdict.getBoundingClientRect().bottom : null,
    firstImageTop: images.length ? images[0].getBoundingClientRect().top : null,
    images: images.length,
    imagesDecoded: images.every(i => i.complete && i.naturalWidth > 0),
    height: document.documentElement.scrollHeight,
    width: document.documentElement.scrollWidth,
  };
})()"""


class Browser:
    """One headless Chromium with one page, reused across tests."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.log = (profile.parent / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (see {self.log.name})")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        page = next(t for t in targets if t["type"] == "page")
        self.page = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.page.call(f"{domain}.enable")
        self.page.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=2000,
            deviceScaleFactor=1,
            mobile=False,
        )

    def load(self, path: Path, *, screenshot: bool = True) -> PageLoad:
        """Open ``path``, wait for the load event, collect errors, requests and a screenshot."""
        page = self.page
        page.events.clear()
        page.call("Page.navigate", url=path.as_uri())
        page.wait_for("Page.loadEventFired")
        page.call(  # let layout, image decoding and late console messages settle
            "Runtime.evaluate",
            expression="new Promise(r => setTimeout(() => requestAnimationFrame(r), 200))",
            awaitPromise=True,
        )
        result = PageLoad()
        facts = page.call("Runtime.evaluate", expression=_FACTS_JS, returnByValue=True)
        result.facts = facts["result"]["value"]
        for event in page.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                result.errors.append(str(params["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                result.errors.append(str(params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                result.errors.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                result.requests.append(params["request"]["url"])
        if screenshot:
            shot = page.call(
                "Page.captureScreenshot",
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": WIDTH, "height": result.facts["height"], "scale": 1},
            )
            result.screenshot = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
        return result

    def close(self) -> None:
        self.page.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    profile = tmp_path_factory.mktemp("chromium") / "profile"
    profile.mkdir()
    instance = Browser(profile)
    try:
        yield instance
    finally:
        instance.close()


def not_blank(image: Image.Image) -> tuple[int, float]:
    """(distinct colours, fraction of pixels unlike the most common colour)."""
    rgb = image.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 24) or []
    commonest = max(count for count, _ in colours)
    return len(colours), 1.0 - commonest / (rgb.width * rgb.height)


def near(rgb: Any, hex_colour: str, tolerance: int = 12) -> bool:
    target = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, target, strict=True))


def render(report: Report, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name.replace(' ', '_')}.html"
    write_html(report, path)
    return path


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_page_loads_cleanly_and_is_not_blank(browser: Browser, tmp_path: Path, case: str) -> None:
    """Each verdict's page: no console errors, no request beyond the file itself, every inline
    plot decodes, the verdict sits above the first plot, and the screenshot is a real page."""
    report = ALL_CASES[case]()
    path = render(report, tmp_path, case)
    load = browser.load(path)

    assert load.errors == []
    assert [url for url in load.requests if not url.startswith("data:")] == [path.as_uri()]
    facts = load.facts
    assert facts["headline"].lower() == str(report.verdict)
    assert facts["images"] >= 2 and facts["imagesDecoded"]
    assert facts["verdictBottom"] <= facts["firstImageTop"]
    assert facts["width"] <= WIDTH  # nothing overflows sideways

    assert load.screenshot is not None
    colours, inked = not_blank(load.screenshot)
    assert colours > 500 and inked > 0.2
    # the verdict's colour is painted, big, near the top of the page
    accent = VERDICT_COLOURS[report.verdict][0]
    top = load.screenshot.convert("RGB").crop((0, 0, WIDTH, 300))
    accent_pixels = sum(n for n, rgb in top.getcolors(1 << 24) or [] if near(rgb, accent))
    assert accent_pixels > 2000


def test_revealed_page_with_html_in_answers_runs_no_script(
    browser: Browser, tmp_path: Path
) -> None:
    """Signatures hold ``<script>alert(..)</script>``: escaped, so nothing runs or errors."""
    load = browser.load(render(verified_report(revealed=True), tmp_path, "revealed"))
    assert load.errors == []
    assert load.facts["imagesDecoded"]


def test_harness_catches_errors_and_external_requests(browser: Browser, tmp_path: Path) -> None:
    """The checks above can fail: a page with a script error and an external image trips them."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><header id="verdict"><h1>x</h1></header>'
        '<img src="http://127.0.0.1:9/plot.png"><script>undefinedFunction();</script>'
        "</body></html>"
    )
    load = browser.load(bad, screenshot=False)
    assert any("undefinedFunction" in error for error in load.errors)
    assert "http://127.0.0.1:9/plot.png" in load.requests


def test_command_line_screenshot(tmp_path: Path) -> None:
    """The plain ``chromium --headless --screenshot`` command renders a non-blank page."""
    assert CHROMIUM is not None
    page = render(verified_report(), tmp_path, "verified")
    png = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={png}",
            f"--window-size={WIDTH},2000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    colours, inked = not_blank(Image.open(png))
    assert colours > 500 and inked > 0.2
