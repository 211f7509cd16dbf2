"""The SMTP sink and the Stripe sandbox as child processes of the bench (`prognet smtp-sink`, `prognet
stripe-sandbox`), given to the embedded stack as external services.

The stack runs both inside its own event loop, which in the bench is the bench client's: their CPU would count as
the client's. In processes of their own, the CPU accounting (prognet_dev/bench/cpu.py) shows what a journey costs
each of them, as a production SMTP relay or Stripe would be elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prognet.settings import DEV_STRIPE_SECRET_KEY, DEV_STRIPE_WEBHOOK_SECRET
from prognet_dev.ports import free_port, tcp_accepts

HOST = "127.0.0.1"


class ServiceProcesses:
    def __init__(self, data_dir: Path, api_port: int) -> None:
        self.data_dir = data_dir.resolve()
        self.maildir = self.data_dir / "mail"  # where the stack looks (EmbeddedStack.maildir)
        self.smtp_port, self.stripe_port = free_port(HOST), free_port(HOST)
        self.webhook_url = f"http://{HOST}:{api_port}/v1/webhooks/stripe"
        self._procs: list[subprocess.Popen] = []

    def settings(self) -> dict[str, Any]:
        """`stack_settings` values that make the stack use these two processes."""
        return {
            "smtp_host": HOST,
            "smtp_port": self.smtp_port,
            "stripe_api_base": f"http://{HOST}:{self.stripe_port}",
            "stripe_secret_key": DEV_STRIPE_SECRET_KEY,
            "stripe_webhook_secret": DEV_STRIPE_WEBHOOK_SECRET,
        }

    def env(self) -> dict[str, str]:
        """For the stack's children: the sandbox's keys (the stack passes them only for a sandbox of its own)."""
        return {"STRIPE_SECRET_KEY": DEV_STRIPE_SECRET_KEY, "STRIPE_WEBHOOK_SECRET": DEV_STRIPE_WEBHOOK_SECRET}

    async def start(self, timeout: float = 60) -> None:
        cli = [sys.executable, "-m", "prognet.cli"]
        env = os.environ | {"STRIPE_WEBHOOK_URL": self.webhook_url, "STRIPE_WEBHOOK_SECRET": DEV_STRIPE_WEBHOOK_SECRET}
        state_file = self.data_dir / "stripe" / "state.json"  # where the stack's own sandbox keeps it
        commands = {
            "smtp-sink": (self.smtp_port, ["--maildir", str(self.maildir)]),
            "stripe-sandbox": (self.stripe_port, ["--state-file", str(state_file)]),
        }
        for name, (port, extra) in commands.items():
            argv = [*cli, name, "--host", HOST, "--port", str(port), *extra]
            # returns at once; the loop below waits for the port without blocking
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
            self._procs.append(proc)
        deadline = time.monotonic() + timeout
        for (name, (port, _)), proc in zip(commands.items(), self._procs, strict=True):
            while not await tcp_accepts(HOST, port, timeout=0.5):
                if proc.poll() is not None:
                    raise RuntimeError(f"prognet {name} exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prognet {name}: nothing listens on {HOST}:{port} after {timeout:.0f}s")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
