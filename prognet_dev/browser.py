"""Headless Chromium, for the offline-docs test and the README screenshots.

The browser is the system's (`apt-get install chromium`; `.ci/run` installs it). It may reach only 127.0.0.1
(unless told otherwise): every host name and every other address resolves to nothing, so a page that needs the
internet shows it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

# Every name and address but 127.0.0.1 fails to resolve (IP literals included, so localhost and 127.0.0.2 fail too).
LOOPBACK_ONLY = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
NAMES = ("chromium", "chromium-browser", "google-chrome")


class ChromiumError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _argv(binary: str, profile: str, window: tuple[int, int], loopback_only: bool) -> list[str]:
    argv = [
        binary,
        "--headless",
        "--no-sandbox",  # CI and containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers have a small /dev/shm
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
    ]
    if loopback_only:
        argv.append(f"--host-resolver-rules={LOOPBACK_ONLY}")
    return argv


def _binary() -> str:
    binary = find_chromium()
    if binary is None:
        raise ChromiumError(f"no Chromium found (looked for {', '.join(NAMES)}): apt-get install chromium")
    return binary


async def dump_dom(
    url: str,
    *,
    window: tuple[int, int] = (1400, 1000),
    budget_ms: int = 10_000,
    loopback_only: bool = True,
    timeout: float = 90.0,
) -> str:
    """Load `url`, let its scripts run for `budget_ms` of virtual time (until the page is idle), return the DOM."""
    with tempfile.TemporaryDirectory(prefix="prognet-chromium-") as profile:
        argv = [*_argv(_binary(), profile, window, loopback_only), f"--virtual-time-budget={budget_ms}", "--dump-dom"]
        proc = await asyncio.create_subprocess_exec(
            *argv, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ChromiumError(f"Chromium did not finish {url} within {timeout:.0f}s") from None
    if proc.returncode != 0:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        raise ChromiumError(f"Chromium exited with {proc.returncode} on {url}: {tail}")
    return out.decode(errors="replace")


def screenshot_when(
    url: str,
    path: Path,
    *,
    ready_js: str,
    window: tuple[int, int] = (1440, 900),
    settle_seconds: float = 1.5,
    timeout: float = 60.0,
) -> None:
    """Open `url`, wait (in real time) until the expression `ready_js` is true, and save a PNG of the viewport.

    For pages that never go idle (the Temporal UI long-polls a running workflow's history), which
    --virtual-time-budget would wait for forever. Blocking: run it in a thread from async code.
    """
    with (
        tempfile.TemporaryDirectory(prefix="prognet-chromium-") as profile,
        _DevTools([*_argv(_binary(), profile, window, True), "--remote-debugging-pipe", "about:blank"]) as devtools,
    ):
        target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
        session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        devtools.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=window[0],
            height=window[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        devtools.call("Page.navigate", session, url=url)
        deadline = time.monotonic() + timeout
        check = {"expression": f"!!({ready_js})", "returnByValue": True}
        while not devtools.call("Runtime.evaluate", session, **check)["result"].get("value"):
            if time.monotonic() > deadline:  # keep what the page did show, to see why
                failed = path.with_suffix(".failed.png")
                failed.write_bytes(
                    base64.b64decode(devtools.call("Page.captureScreenshot", session, format="png")["data"])
                )
                raise ChromiumError(
                    f"{url} did not show what was expected ({ready_js}) within {timeout:.0f}s; it showed {failed}"
                )
            time.sleep(0.25)
        time.sleep(settle_seconds)  # fonts, icons and the last render
        png = devtools.call("Page.captureScreenshot", session, format="png")["data"]
        path.write_bytes(base64.b64decode(png))


class _DevTools:
    """Chromium under the DevTools protocol over a pipe (fd 3: commands in, fd 4: answers out; NUL-terminated)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> _DevTools:
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()

        def onto_3_and_4() -> None:  # the fds --remote-debugging-pipe expects; runs in the child before exec
            os.dup2(commands_r, 3)
            os.dup2(answers_w, 4)

        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=onto_3_and_4,
        )
        os.close(commands_r)
        os.close(answers_w)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._send({"id": 0, "method": "Browser.close"})
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        os.close(self._answers)

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._commands, json.dumps(message).encode() + b"\0")

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._send(message)
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._answers, 1 << 16)
                if not chunk:
                    raise ChromiumError(f"Chromium exited during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:  # anything else is an event
                if "error" in answer:
                    raise ChromiumError(f"{method}: {answer['error']}")
                return answer.get("result", {})
