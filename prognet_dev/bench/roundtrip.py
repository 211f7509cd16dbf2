"""The machine's own floor under a request's latency: a one-byte round trip between two processes.

`with RoundTrips() as trips: <load>` pings an echo process over a socket pair every 20 ms from a thread of this
process and keeps each round trip's seconds in `trips.latencies`. Nothing runs in between but the two wake-ups
(the echo's, then the pinger's), so its p99 under a load is what the load does to any process's wake-up: a
`/healthz` probe is the same round trip plus HTTP and the handler, so its p99 under that load cannot be lower.

Why it is in the logins section: while argon2 fills every core (64 MiB per hash, memory-bound), a woken process
waits for a core far more often than at rest, whatever priority the hashing runs at (measured here: argon2 at
nice 0, nice 10 and SCHED_IDLE, in the same process or another session, gave the round trip's p99 2–4.6 ms
against 0.2–0.35 at rest). The round trip's p99 under raw argon2, over `/healthz`'s idle p99, is the floor of
the storm's `/healthz` p99 ratio.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

PING_INTERVAL = 0.02


class RoundTrips:
    def __init__(self, interval: float = PING_INTERVAL) -> None:
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._ours, theirs = socket.socketpair()
        self._echo = subprocess.Popen(
            [sys.executable, "-m", "prognet_dev.bench.roundtrip", str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
        theirs.close()
        self._pinger = threading.Thread(target=self._ping, name="round-trips", daemon=True)

    def _ping(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self._ours.sendall(b"x")
            if not self._ours.recv(1):
                raise RuntimeError("the echo process went away")
            self.latencies.append(time.perf_counter() - start)
            self._stop.wait(self.interval)

    def __enter__(self) -> RoundTrips:
        self._ours.sendall(b"x")  # the echo process is up and answering before the first timed round trip
        self._ours.recv(1)
        self._pinger.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._pinger.join()
        self._ours.close()  # the echo process reads end-of-file and exits
        self._echo.wait(timeout=10)


def echo(fd: int) -> None:
    with socket.socket(fileno=fd) as sock:
        while byte := sock.recv(1):
            sock.sendall(byte)


if __name__ == "__main__":
    echo(int(sys.argv[1]))
