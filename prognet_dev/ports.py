"""Small helpers about TCP ports: pick a free one, tell whether one is busy, wait for a listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from pathlib import Path

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, below the kernel's ephemeral range.

    Ports the OS hands out for bind(0) come from the ephemeral range, which outgoing connections also use:
    between picking such a port and a server binding it, a client socket (Temporal opens many) can take it.
    Ports below that range are only ever taken by explicit binds. Never the same port twice per process.
    """
    low = max(1024, min(_ephemeral_range()[0], 65536) - 20000)
    high = _ephemeral_range()[0] - 1
    slot, slots = _worker_slot()
    for _ in range(200):
        port = random.randint(low, high)
        if port % slots != slot:
            continue
        if port not in _handed_out and port_is_free(host, port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # fall back to the OS's choice
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _worker_slot() -> tuple[int, int]:
    """(i, n): the residue class mod n this process picks ports from. Test processes running side by side
    (pytest-xdist's `gwI`, of PYTEST_XDIST_WORKER_COUNT) draw from disjoint classes, so a port one of them
    frees for a moment (a service stopped and started again on the same port, or a port a server derives
    from another, such as Temporal's HTTP port) is never handed to the other."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1:
        return int(worker[2:]) % int(count), int(count)
    return 0, 1


def port_is_free(host: str, port: int) -> bool:
    """True when a listener could bind host:port now.

    SO_REUSEADDR is set so sockets lingering in TIME_WAIT do not count as busy; on Linux a bind still fails
    while another socket listens on the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def tcp_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
