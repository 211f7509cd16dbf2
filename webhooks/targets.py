"""Where a webhook may be sent (SSRF protection).

Production: `https` only, and every address the host resolves to must be a public one: not loopback, private
(RFC 1918, ULA), link-local, CGNAT (100.64.0.0/10), multicast, reserved, unspecified, nor a cloud metadata
address. Checked when an endpoint is saved and again at each delivery, after DNS: the delivery then connects to
the very address that was checked (the Host header and TLS SNI keep the name), so a DNS answer that changes
between the check and the connection (rebinding) cannot redirect it.
WEBHOOK_ALLOW_PRIVATE_TARGETS (the default in development) lets `http` and any address through, for a local receiver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
CGNAT = ipaddress.ip_network("100.64.0.0/10")
MAX_URL_LENGTH = 2000


class TargetRefused(Exception):
    """The URL is not an acceptable webhook target; the message says why (shown to the tenant)."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # as written in the URL (a name or a literal address)
    port: int
    addresses: tuple[str, ...]  # what the host resolved to; all of them passed the check


def forbidden_reason(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_private or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "a private or reserved address"
    return None


def check_url(url: str, *, allow_private: bool) -> tuple[str, str, int]:
    """The URL's scheme, host and port, if its form is acceptable (no DNS yet)."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused("the URL is not valid") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        raise TargetRefused("the URL must use https" if not allow_private else "the URL must use http or https")
    host = parts.hostname
    if not host:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("the URL must not carry credentials (put a token in the path or query instead)")
    if not allow_private:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            if host.endswith((".localhost", ".local", ".internal")) or host == "localhost":
                raise TargetRefused(f"the host {host} is not a public name") from None
        else:
            reason = forbidden_reason(literal)
            if reason:
                raise TargetRefused(f"the host {host} is {reason}")
    return scheme, host, port or (443 if scheme == "https" else 80)


async def lookup(host: str, port: int) -> tuple[str, ...]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve(url: str, *, allow_private: bool) -> Target:
    """Check the URL, resolve its host, and check every address it resolves to."""
    scheme, host, port = check_url(url, allow_private=allow_private)
    try:
        addresses = await lookup(host, port)
    except (socket.gaierror, UnicodeError) as err:
        raise TargetRefused(f"the host {host} does not resolve ({err})") from None
    if not addresses:
        raise TargetRefused(f"the host {host} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address.split("%")[0]))
            if reason:
                raise TargetRefused(f"the host {host} resolves to {address}, {reason}")
    return Target(url=url, scheme=scheme, host=host, port=port, addresses=addresses)
