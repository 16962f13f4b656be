"""Open a page in Debian's headless Chromium and ask it what a user would see, over the DevTools
protocol (a websocket; no server, no download): console errors and uncaught exceptions, the
result of a JavaScript expression, and a screenshot."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

# What a reader of the board sees: the methods of each ranked table, and every image with its
# decoded width (0 = it did not load).
BOARD = (
    "{methods: Array.from(document.querySelectorAll('table.board tbody tr'))"
    ".map(r => r.cells[1].textContent), images: Array.from(document.images)"
    ".map(i => [i.getAttribute('src'), i.naturalWidth])}"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


def artefact(tmp_path_factory, name: str) -> Path:
    """Where a screenshot is kept after a passing test (pytest removes a passing test's
    tmp_path): beside the numbered pytest folders, under the pytest temp root."""
    folder = tmp_path_factory.getbasetemp().parent / "forgetbench-artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def chromium_or_skip() -> str:
    """The browser binary; a skip, or a failure when FORGETBENCH_REQUIRE_CHROMIUM=1 (CI installs
    it: `apt-get install -y chromium chromium-driver`)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("FORGETBENCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail(
                "chromium is not installed (FORGETBENCH_REQUIRE_CHROMIUM=1): "
                "apt-get install -y chromium chromium-driver"
            )
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return binary


def inspect_page(
    url: str, expression: str, screenshot: Path, profile: Path, timeout: float = 60
) -> dict:
    """Load ``url``; returns {"value": the expression's JSON value, "errors": console errors and
    exceptions}, and writes a PNG screenshot."""
    from websockets.sync.client import connect

    binary = chromium_or_skip()
    process = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + timeout
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {process.returncode}")
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(found.group(1)) if found else None
        if port is None:
            raise RuntimeError("chromium did not open its DevTools port")
        targets = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read()
        )
        page = next(t for t in targets if t["type"] == "page")
        errors = []
        with connect(page["webSocketDebuggerUrl"], max_size=2**26) as socket:
            counter = iter(range(1, 10**6))

            def call(method: str, **params):
                number = next(counter)
                socket.send(json.dumps({"id": number, "method": method, "params": params}))
                while True:
                    message = json.loads(socket.recv(timeout=timeout))
                    _collect(message, errors)
                    if message.get("id") == number:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return message.get("result", {})

            for domain in ("Page", "Runtime", "Log"):
                call(f"{domain}.enable")
            call("Page.navigate", url=url)
            while True:  # until the load event: every image has loaded or failed by then
                message = json.loads(socket.recv(timeout=timeout))
                _collect(message, errors)
                if message.get("method") == "Page.loadEventFired":
                    break
            result = call(
                "Runtime.evaluate", expression=f"JSON.stringify({expression})", returnByValue=True
            )
            shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            call("Runtime.evaluate", expression="1")  # drain late console messages
        return {"value": json.loads(result["result"]["value"]), "errors": errors}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _collect(message: dict, errors: list) -> None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Runtime.exceptionThrown":
        errors.append(params["exceptionDetails"].get("text", "exception"))
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        errors.append(
            f"{params['entry'].get('source')}: {params['entry'].get('text')} "
            f"{params['entry'].get('url', '')}"
        )
