"""Webhook signing (Standard Webhooks), sealed secrets, event filters and SSRF target checks: pure functions."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from cryptography.exceptions import InvalidTag

from webhooks import secret_box, signing, targets
from webhooks.event_filter import invalid_filters, matches
from webhooks.http_client import Pin, pin_for
from webhooks.targets import Target, TargetRefused, check_url, forbidden_reason, resolve

# The specification's published test vector (standard-webhooks, libraries' shared tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_specifications_known_vector():
    assert signing.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    headers = signing.headers([SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert signing.verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 10) == SPEC_ID


def test_during_a_rotation_either_secret_verifies_and_a_third_does_not():
    old, new, other = signing.new_secret(), signing.new_secret(), signing.new_secret()
    assert old.startswith("whsec_") and old != new
    headers = signing.headers([new, old], "d1", 1_700_000_000, b"{}")
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        assert signing.verify(secret, headers, b"{}", now=1_700_000_000) == "d1"
    with pytest.raises(signing.InvalidSignature):
        signing.verify(other, headers, b"{}", now=1_700_000_000)


@pytest.mark.parametrize(
    ("body", "now"),
    [(b'{"test": 2432232315}', SPEC_TIMESTAMP), (SPEC_BODY, SPEC_TIMESTAMP + 301), (SPEC_BODY, SPEC_TIMESTAMP - 301)],
)
def test_a_changed_body_or_a_stale_or_future_timestamp_fails(body, now):
    headers = signing.headers([SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(SPEC_SECRET, headers, body, now=now)


def test_a_sealed_secret_opens_only_with_its_key_and_its_endpoint():
    key, endpoint = b"k" * 32, uuid.uuid4()
    sealed = secret_box.seal(key, endpoint, SPEC_SECRET)
    assert SPEC_SECRET.encode() not in sealed
    assert secret_box.open_(key, endpoint, sealed) == SPEC_SECRET
    with pytest.raises(InvalidTag):
        secret_box.open_(key, uuid.uuid4(), sealed)  # copied onto another endpoint's row
    with pytest.raises(InvalidTag):
        secret_box.open_(b"x" * 32, endpoint, sealed)


def test_event_filters_match_exact_types_and_prefixes():
    assert matches(None, "invoice.paid")
    assert matches(["invoice.*"], "invoice.paid") and not matches(["invoice.*"], "invitation.created")
    assert matches(["member.added"], "member.added") and not matches(["member.added"], "member.removed")
    assert invalid_filters(["invoice.*", "member.added", "webhook_endpoint.disabled"]) == []
    assert invalid_filters(["invoice.nope", "nope.*", "*", ".*", "invoice"]) == [
        "invoice.nope",
        "nope.*",
        "*",
        ".*",
        "invoice",
    ]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
    ],
)
def test_private_and_special_addresses_are_forbidden(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


def test_public_addresses_are_allowed():
    assert forbidden_reason(ipaddress.ip_address("93.184.216.34")) is None
    assert forbidden_reason(ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946")) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # not https
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/hook",
        "https://user:pw@example.com/hook",
        "ftp://example.com/",
        "https:///nohost",
    ],
)
def test_production_refuses_these_urls_before_any_dns(url):
    with pytest.raises(TargetRefused):
        check_url(url, allow_private=False)


async def test_a_name_resolving_to_a_private_address_is_refused_after_dns(monkeypatch):
    """A public-looking name whose DNS answer is private (e.g. rebinding) is refused once resolved."""

    async def fake_dns(host: str, port: int) -> tuple[str, ...]:
        return {"rebind.example": ("93.184.216.34", "10.0.0.7")}.get(host, ("93.184.216.34",))

    monkeypatch.setattr(targets, "lookup", fake_dns)
    with pytest.raises(TargetRefused, match=r"resolves to 10\.0\.0\.7, a private"):
        await resolve("https://rebind.example/hook", allow_private=False)
    target = await resolve("https://public.example:8443/p?q=1", allow_private=False)
    assert target.addresses == ("93.184.216.34",)
    # the delivery sends to the URL as written (Host and SNI keep the name) and connects to the checked address
    assert target.url == "https://public.example:8443/p?q=1"
    assert pin_for(target) == Pin("public.example", 8443, "93.184.216.34")


async def test_development_lets_a_local_http_receiver_through():
    target = await resolve("http://localhost:8080/x", allow_private=True)
    assert set(target.addresses) & {"127.0.0.1", "::1"}
    assert pin_for(target) == Pin("localhost", 8080, target.addresses[0])
    # a literal IPv6 host is pinned as the connection is asked for it: without brackets, on the default port
    assert pin_for(Target("http://[::1]/", "http", "::1", 80, ("::1",))) == Pin("::1", 80, "::1")
