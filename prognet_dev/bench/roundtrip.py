"""The machine's own floor under a request's latency: a one-byte round trip between two processes.

`with RoundTrips() as trips: <load>` answers, from a thread of this process, the pings a small client process
sends over a socket pair every 20 ms, and `trips.latencies` holds each round trip's seconds once the block has
ended. Nothing runs in between but two wake-ups: this process's (the answering thread) and the client's. That is
the shape of a `/healthz` probe during a login storm, where the API (the answering process) is also the process
that hashes; so the load to measure it under is this process hashing as the API does (`hash_as_the_api_does` in
the bench). A probe adds HTTP and the handler to that round trip: its p99 under the same load is not expected to
be lower.

Why it is in the logins section: how argon2 is run decides what a woken thread waits. Hashed as argon2-cffi does
(a fresh 64 MiB mapping per hash, faulted in by the kernel, and libargon2 starting and joining a thread per lane
for every slice), the round trip's p99 was 5.4-8 ms against 0.2-0.35 at rest, whatever the hashing's priority
(nice 0, nice 10 or SCHED_IDLE); with the memory reused, 2.4-2.9 ms; with one thread per hash as well (the API
now), 0.13-0.19 ms, as at rest. The rest of a storm's slow probes is the API's own: see api/http_protocol.py.

The client runs this file as a script (`python roundtrip.py FD INTERVAL`): standard library only, so it starts
in moments and imports nothing of the bench.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

PING_INTERVAL = 0.02
TIMEOUT = 10.0  # no single round trip or shutdown waits longer: a stuck peer fails the measurement, not the run
PING, STOP = b"p", b"s"


class RoundTrips:
    def __init__(self, interval: float = PING_INTERVAL) -> None:
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> RoundTrips:
        ours, theirs = socket.socketpair()
        ours.settimeout(TIMEOUT)
        with theirs:
            self._client = subprocess.Popen(
                [sys.executable, __file__, str(theirs.fileno()), str(self.interval)],
                pass_fds=[theirs.fileno()],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        self._sock = ours
        self._answerer = threading.Thread(target=self._answer, name="round-trips", daemon=True)
        self._answerer.start()
        return self

    def _answer(self) -> None:
        try:
            while byte := self._sock.recv(1):
                self._sock.sendall(STOP if self._stop.is_set() else byte)
        except BaseException as exc:  # re-raised by __exit__: a broken measurement must not pass as a figure
            self._error = exc

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # the client's next ping is answered "stop": it sends its latencies and closes
        try:
            out, err = self._client.communicate(timeout=TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self._client.kill()
            out, err = self._client.communicate()
        finally:
            self._answerer.join(TIMEOUT)
            self._sock.close()
        # A client that died is the cause to report: the answering side then fails or sees the end, by timing.
        if self._client.returncode != 0:
            raise RuntimeError(
                f"round trips: the client exited {self._client.returncode}: {err.decode()[-500:]}"
            ) from self._error
        if self._error is not None:
            raise RuntimeError("round trips: answering failed") from self._error
        self.latencies = json.loads(out)

    @property
    def client_argv(self) -> list[str]:
        return list(self._client.args)  # type: ignore[arg-type]


def ping(fd: int, interval: float) -> list[float]:
    """The client: ping until answered "stop"; the seconds of every round trip answered with a ping."""
    latencies: list[float] = []
    with socket.socket(fileno=fd) as sock:
        sock.settimeout(TIMEOUT)
        while True:
            start = time.perf_counter()
            sock.sendall(PING)
            answer = sock.recv(1)
            if answer != PING:
                break  # STOP, or the answering side went away
            latencies.append(time.perf_counter() - start)
            time.sleep(interval)
    return latencies


if __name__ == "__main__":
    print(json.dumps(ping(int(sys.argv[1]), float(sys.argv[2]))))
