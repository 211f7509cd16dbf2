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

`RoundTrips(own_process=True)` answers from a process of its own instead (nothing else in it): run during the
login storm, it measures what the storm's load alone does to two bare wake-ups, with nothing of the API's own
work in them.

The client and that answering process run this file as a script (`python roundtrip.py FD INTERVAL`,
`python roundtrip.py answer FD`): standard library only, so they start in moments and import nothing of the bench.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

PING_INTERVAL = 0.02
TIMEOUT = 10.0  # no single round trip or shutdown waits longer: a stuck peer fails the measurement, not the run
PING, STOP = b"p", b"s"
READY = b"ready\n"


class RoundTrips:
    def __init__(self, interval: float = PING_INTERVAL, own_process: bool = False) -> None:
        self.interval = interval
        self.own_process = own_process
        self._answering: subprocess.Popen[bytes] | None = None
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> RoundTrips:
        ours, theirs = socket.socketpair()
        ours.settimeout(TIMEOUT)
        if self.own_process:
            with ours:
                self._answering = self._start([__file__, "answer", str(ours.fileno())], ours)
            # it says so once a SIGTERM makes it answer "stop" (before that, the signal would just kill it)
            assert self._answering.stdout is not None
            if self._answering.stdout.readline() != READY:
                self._answering.kill()
                raise RuntimeError("round trips: the answering process did not start")
        else:
            self._sock = ours
            self._answerer = threading.Thread(target=self._answer, name="round-trips", daemon=True)
            self._answerer.start()
        with theirs:
            self._client = self._start([__file__, str(theirs.fileno()), str(self.interval)], theirs)
        return self

    @staticmethod
    def _start(args: list[str], sock: socket.socket) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, *args], pass_fds=[sock.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def _answer(self) -> None:
        try:
            while byte := self._sock.recv(1):
                self._sock.sendall(STOP if self._stop.is_set() else byte)
        except BaseException as exc:  # re-raised by __exit__: a broken measurement must not pass as a figure
            self._error = exc

    def __exit__(self, *exc: object) -> None:
        if self._answering is not None:
            self._exit_own_process()
            return
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

    def _exit_own_process(self) -> None:
        assert self._answering is not None
        self._answering.send_signal(signal.SIGTERM)  # its next answer is "stop"
        try:
            out, err = self._client.communicate(timeout=TIMEOUT + 5)
            _, answering_err = self._answering.communicate(timeout=TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self._client.kill()
            self._answering.kill()
            raise RuntimeError("round trips: a process did not stop") from None
        # the answering process first: when it dies, the client fails too (a reset) or sees the end, by timing
        for name, process, errors in (
            ("answering process", self._answering, answering_err),
            ("client", self._client, err),
        ):
            if process.returncode != 0:
                raise RuntimeError(f"round trips: the {name} exited {process.returncode}: {errors.decode()[-500:]}")
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


def answer(fd: int) -> None:
    """The answering process: echo every ping until SIGTERM, then answer the next one "stop" and exit."""
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    with socket.socket(fileno=fd) as sock:
        sock.settimeout(TIMEOUT)
        while byte := sock.recv(1):  # a signal interrupts the wait; the wait goes on (PEP 475)
            sock.sendall(STOP if stopping else byte)
            if stopping:
                return


if __name__ == "__main__":
    if sys.argv[1] == "answer":
        answer(int(sys.argv[2]))
    else:
        print(json.dumps(ping(int(sys.argv[1]), float(sys.argv[2]))))
