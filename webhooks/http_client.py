"""The one HTTP client a webhook worker delivers through: keep-alive connections reused across deliveries.

A delivery still connects only to an address `webhooks.targets.resolve` checked (SSRF protection): requests go to
the URL as written, so the pool is keyed by the receiver's name and TLS verifies that name (SNI), and the client's
network backend opens a new connection only to the address pinned for the current attempt (`pinned`), never by
its own DNS lookup. A kept-alive connection was opened to an address checked when it was opened.

Why not connect to the checked IP in the URL (as one client per attempt could): a pool keyed by IP would hand a
TLS connection verified for one name to a request for another name on the same address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import httpcore
import httpx

from webhooks.targets import Target

# Temporal's default activity slots per worker: every attempt the worker runs at once can have its connection.
MAX_CONNECTIONS = 100
# Below the idle timeout of common servers (Node's 5 s), so we rarely reuse a connection the receiver just closed.
KEEPALIVE_EXPIRY = 4.0


@dataclass(frozen=True)
class Pin:
    host: str  # as the request URL carries it (IDNA-encoded, IPv6 without brackets)
    port: int
    address: str  # the checked address to connect to


_pin: ContextVar[Pin | None] = ContextVar("webhook_pin", default=None)


def pin_for(target: Target) -> Pin:
    """Where new connections for the target go: its first checked address, for its host and port as the request
    URL names them (what the network backend is asked to connect to)."""
    url = httpx.URL(target.url)
    return Pin(url.raw_host.decode("ascii"), target.port, target.addresses[0])


@contextlib.contextmanager
def pinned(target: Target) -> Iterator[None]:
    """New connections made in this block for the target's host and port go to its first checked address."""
    token = _pin.set(pin_for(target))
    try:
        yield
    finally:
        _pin.reset(token)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to the pinned address of the request being sent; refuses anything else."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _pin.get()
        if pin is None or (pin.host, pin.port) != (host, port):
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        return await self._inner.connect_tcp(
            pin.address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def delivery_client(timeout: float) -> httpx.AsyncClient:
    """The worker's shared client. No redirects (a 3xx is a failed attempt, never a hop to an unchecked address);
    no proxy from the environment (it would connect to an address nobody checked)."""
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx takes no network backend: swap in a pool like the one it built (same TLS context and limits), with ours
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=PinnedBackend(),
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)
