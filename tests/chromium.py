"""A real headless Chromium (Debian ``chromium``) for the tests, driven over the DevTools protocol.

The browser runs with a fresh profile in a temporary folder and speaks the
Chrome DevTools Protocol over a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, messages separated by NUL bytes), so no port is opened
and no client library is needed.  Only the few commands the tests use are
wrapped: open a page, evaluate JavaScript, wait for a condition, screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from waiting import wait_until

CHROMIUM = shutil.which("chromium")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian package chromium)")

#: The flags of every test browser: headless, no GPU, nothing that reaches the network by itself.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


class BrowserError(Exception):
    """A DevTools command failed, or the page did not get where a test waited for."""


class Page:
    """One tab; ``console`` collects its console messages and uncaught exceptions."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        self.console: list[str] = []

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str, timeout: float = 120) -> None:
        """Navigate and wait for the load event."""
        self.browser.clear_events(self.session, "Page.loadEventFired")
        self.send("Page.navigate", {"url": url})
        self.browser.wait_event(self.session, "Page.loadEventFired", timeout)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression (promises are awaited); JS errors raise."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in reply:
            raise BrowserError(f"JavaScript failed: {reply['exceptionDetails'].get('text')} "
                               f"{reply['exceptionDetails'].get('exception', {}).get('description', '')}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120, interval: float = 0.5) -> Any:
        """Poll ``expression`` until it is truthy: its value; the test fails naming it (and the
        page's console) when time runs out or the browser dies."""
        return wait_until(lambda: self.evaluate(expression), timeout, f"waiting for {expression}",
                          processes=[self.browser.process], log=lambda: "\n".join(self.console[-30:]),
                          interval=interval)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def html(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def picture(self) -> np.ndarray:
        """The page as an RGB array (a screenshot, decoded)."""
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                            cv2.COLOR_BGR2RGB)

    def keep_screenshot(self, name: str, folder: Path) -> Path:
        """Save a screenshot as ``folder/name.png``, and also in ``$XIQA_SCREENSHOTS`` if set."""
        path = self.screenshot(folder / f"{name}.png")
        extra = os.environ.get("XIQA_SCREENSHOTS")
        if extra and Path(extra).is_dir():
            shutil.copyfile(path, Path(extra) / path.name)
        return path


class Browser:
    """A Chromium process and its DevTools pipe."""

    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.process = process
        self._to, self._from = os.fdopen(to_browser, "wb"), os.fdopen(from_browser, "rb")
        self._ids = itertools.count(1)
        self._replies: dict[int, queue.Queue] = {}
        self._events: list[dict] = []
        self._lock = threading.Condition()
        self._pages: dict[str, Page] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := self._from.read1(65536):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    self._replies.pop(message["id"]).put(message)
                    continue
                page = self._pages.get(message.get("sessionId", ""))
                if page is not None and message["method"] == "Runtime.consoleAPICalled":
                    page.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                                 for a in message["params"]["args"]))
                elif page is not None and message["method"] == "Runtime.exceptionThrown":
                    page.console.append(str(message["params"]["exceptionDetails"]))
                with self._lock:
                    self._events.append(message)
                    self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        reply: queue.Queue = queue.Queue()
        self._replies[number] = reply
        self._to.write(json.dumps(message).encode() + b"\0")
        self._to.flush()
        try:
            answer = reply.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"no answer to {method} within {timeout:g} s") from None
        if "error" in answer:
            raise BrowserError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    def clear_events(self, session: str, method: str) -> None:
        with self._lock:
            self._events = [e for e in self._events
                            if not (e.get("sessionId") == session and e["method"] == method)]

    def wait_event(self, session: str, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for event in self._events:
                    if event.get("sessionId") == session and event["method"] == method:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"no {method} within {timeout:g} s")
                self._lock.wait(left)

    def new_page(self, width: int = 1400, height: int = 900) -> Page:
        # each page in its own browser context (like a fresh profile): what one test's page kept in
        # local storage (OHIF's viewer state) does not change what the next one sees
        context = self.send("Target.createBrowserContext")["browserContextId"]
        target = self.send("Target.createTarget", {"url": "about:blank",
                                                   "browserContextId": context})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Page.enable", "Runtime.enable"):
            page.send(domain)
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page


@contextmanager
def running_chromium(extra_flags: tuple[str, ...] = ()) -> Iterator[Browser]:
    """Start headless Chromium with a fresh profile; yield it; stop it and remove the profile."""
    profile = tempfile.mkdtemp(prefix="xiqa-chromium-")
    # the browser reads commands on fd 3 and writes replies on fd 4
    commands_read, commands_write = os.pipe()
    replies_read, replies_write = os.pipe()

    def child_fds() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
        os.dup2(high[0], 3)  # dup2 makes them inheritable, so they survive the exec
        os.dup2(high[1], 4)

    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, *extra_flags, f"--user-data-dir={profile}", "--remote-debugging-pipe",
         "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=False, preexec_fn=child_fds)  # other fds are not inheritable (PEP 446)
    os.close(commands_read)
    os.close(replies_write)
    browser = Browser(process, commands_write, replies_read)
    try:
        # the pipe answers: the browser is up (each try waits 2 s; a dead browser fails at once)
        wait_until(lambda: browser.send("Target.getTargets", timeout=2) is not None, 60,
                   "Chromium's DevTools pipe", processes=[process], not_yet=(BrowserError,))
        yield browser
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
