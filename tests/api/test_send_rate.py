"""The shared send-rate limit (prognet.send_rate) on the real Redis: slots across workers, tickets, Redis down
(the send activity then defers the message and sends nothing)."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email_delivery import EmailDeliveryActivities
from models.contracts import EmailRequest, SendEmail
from models.errors import SEND_RATE_UNAVAILABLE
from prognet.send_rate import LATE_GRACE_SECONDS, SendRateLimiter
from prognet_dev import read_messages


def limiter(redis: Redis, key: str, per_second: float = 10) -> SendRateLimiter:
    return SendRateLimiter(redis, per_second, key=key)


async def test_workers_sharing_the_key_get_slots_one_interval_apart(redis_url):
    key = f"send-rate:test-{uuid.uuid4().hex[:8]}"
    one, two = Redis.from_url(redis_url), Redis.from_url(redis_url)  # two workers' own connections
    try:
        a, b = limiter(one, key), limiter(two, key)
        slots = await asyncio.gather(*(x.reserve() for x in [a, b] * 20))
    finally:
        await one.aclose()
        await two.aclose()
    starts = sorted(s.slot_us for s in slots)
    assert len(set(starts)) == 40  # nobody shares a slot
    assert all(later - earlier == 100_000 for earlier, later in itertools.pairwise(starts))  # 10/s: 100 ms apart
    # so any one second holds at most 10 starts, and 40 reservations at once reach ~3.9 s ahead
    assert max(s.wait_seconds for s in slots) == pytest.approx(3.9, abs=0.2)


async def test_a_ticket_ahead_or_barely_late_is_kept_and_a_late_one_is_replaced(redis_url):
    key = f"send-rate:test-{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_url)
    try:
        rate = limiter(redis, key, per_second=4)  # 250 ms apart
        first, second = await rate.reserve(), await rate.reserve()
        held = await rate.reserve(second.slot_us)  # coming back with the ticket before its time
        assert held.slot_us == second.slot_us
        third = await rate.reserve()
        assert third.slot_us == second.slot_us + 250_000  # the kept ticket took no new slot
        await asyncio.sleep(third.wait_seconds + 0.05)
        behind = await rate.reserve(third.slot_us)  # a little late (a busy worker): still its own, sent at once
        assert behind.slot_us == third.slot_us and behind.wait_seconds == 0
        await asyncio.sleep(LATE_GRACE_SECONDS + 0.1)
        late = await rate.reserve(first.slot_us)  # later than the grace: a fresh slot, after everyone else's
        assert late.slot_us >= third.slot_us + 250_000
    finally:
        await redis.aclose()


async def test_an_unreachable_redis_raises_instead_of_letting_sends_through():
    redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens there
    try:
        with pytest.raises(RedisError):
            await limiter(redis, "send-rate:unreachable").reserve()
    finally:
        await redis.aclose()


async def test_a_send_while_the_limiter_is_unreachable_is_deferred_retryably_and_not_sent(
    app_engine, temporal_settings, services
):
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    activities = EmailDeliveryActivities(app_engine, temporal_settings, send_rate=SendRateLimiter(unreachable, 10))
    to = f"limited-{uuid.uuid4().hex[:8]}@example.com"
    req = EmailRequest(
        message_id=uuid.uuid4(), template="notice", to_address=to, params={"subject": "Hi", "body": "Hello"}
    )
    try:
        await ActivityEnvironment().run(activities.queue, req)
        with pytest.raises(ApplicationError) as failed:
            await ActivityEnvironment().run(activities.send, SendEmail(request=req, to_address=to))
    finally:
        await unreachable.aclose()
    assert failed.value.type == SEND_RATE_UNAVAILABLE and not failed.value.non_retryable  # the backoff retries it
    db = await asyncpg.connect(services.postgres_dsn)
    try:
        row = await db.fetchrow("select state, attempts, last_reply from email_messages where id = $1", req.message_id)
    finally:
        await db.close()
    assert row["state"] == "deferred" and row["attempts"] == 0  # no SMTP attempt was made
    assert "rate limiter unavailable" in row["last_reply"]
    assert not any(m["To"] == to for m in read_messages(services.maildir))
