"""Headless Chromium, for the offline-docs test and the README screenshots.

The browser is the system's (`apt-get install chromium`; `.ci/run` installs it). By default it may reach only
127.0.0.1: every host name and every other address resolves to nothing, so a page that needs the internet shows it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

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


async def chromium(
    url: str,
    *,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1400, 1000),
    budget_ms: int = 10_000,
    loopback_only: bool = True,
    timeout: float = 90.0,
) -> str:
    """Load `url`, let its scripts run for `budget_ms` of virtual time, and return the DOM (or write a PNG)."""
    binary = find_chromium()
    if binary is None:
        raise ChromiumError(f"no Chromium found (looked for {', '.join(NAMES)}): apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="prognet-chromium-") as profile:
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
            f"--virtual-time-budget={budget_ms}",
        ]
        if loopback_only:
            argv.append(f"--host-resolver-rules={LOOPBACK_ONLY}")
        argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
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
