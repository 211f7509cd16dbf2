"""The shared send-rate limit (prognet.send_rate) on the real Redis: a token bucket checked at the moment of
sending, with a line of tickets as a hint; callers waking together; Redis down (the send activity then defers
the message and sends nothing)."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
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
from prognet.send_rate import SendRateLimiter
from prognet_dev import read_messages


def limiter(redis: Redis, key: str, per_second: float = 10) -> SendRateLimiter:
    return SendRateLimiter(redis, per_second, key=key)


def fresh_key() -> str:
    return f"send-rate:test-{uuid.uuid4().hex[:8]}"


def assert_token_bucket_bound(grants_us: list[int], capacity: float, rate: float) -> None:
    """No window [a, b] of grants holds more than capacity + rate × (b - a) of them."""
    grants = sorted(grants_us)
    for i, j in itertools.combinations(range(len(grants)), 2):
        window = (grants[j] - grants[i]) / 1_000_000
        assert j - i + 1 <= capacity + rate * window + 1e-6, (j - i + 1, window)


def most_in_one_second(grants_us: list[int]) -> int:
    grants = sorted(grants_us)
    return max(bisect.bisect_left(grants, g + 1_000_000) - i for i, g in enumerate(grants))


async def test_callers_stalled_and_waking_together_never_exceed_capacity_plus_rate(redis_url):
    """A starved worker: 50 senders of two workers wait their turn, the event loop stalls for 2 s (every timer
    fires late, together), and they all ask at once. Only the bucket's tokens go out, then the rate."""
    rate, key = 8.0, fresh_key()
    one, two = Redis.from_url(redis_url), Redis.from_url(redis_url)  # two workers' own connections
    grants: list[int] = []

    async def sender(rate_limiter: SendRateLimiter) -> None:
        ticket = None
        while True:
            answer = await rate_limiter.acquire(ticket)
            if answer.granted:
                grants.append(answer.now_us)
                return
            ticket = answer.ticket_us
            await asyncio.sleep(answer.wait_seconds)  # no jitter: wake-ups bunch as much as they can

    try:
        a, b = limiter(one, key, rate), limiter(two, key, rate)
        await asyncio.sleep(0.5)  # (a fresh bucket is full: tokens accumulated while idle)
        senders = [asyncio.create_task(sender(x)) for x in [a, b] * 25]
        await asyncio.sleep(1.0)
        time.sleep(2.0)  # noqa: ASYNC251 - the stall itself: the event loop blocks, every wait ends late at once
        await asyncio.wait_for(asyncio.gather(*senders), timeout=30)
    finally:
        await one.aclose()
        await two.aclose()
    assert len(grants) == 50
    assert a.capacity == 2.0  # a quarter of a second of sends
    assert_token_bucket_bound(grants, a.capacity, rate)
    assert most_in_one_second(grants) <= a.capacity + rate  # 10, though ~16 callers woke together
    span = (max(grants) - min(grants)) / 1_000_000
    assert span >= (50 - a.capacity) / rate - 0.01  # the whole run kept the rate too
    assert span <= 50 / rate + 3  # and lost little of it: the stall, a wake-up or two


async def test_a_burst_gets_the_bucket_then_places_in_line_one_interval_apart(redis_url):
    rate, key = 8.0, fresh_key()
    redis = Redis.from_url(redis_url)
    try:
        rate_limiter = limiter(redis, key, rate)
        answers = await asyncio.gather(*(rate_limiter.acquire() for _ in range(20)))
    finally:
        await redis.aclose()
    assert sum(x.granted for x in answers) == 2  # the bucket's capacity, at once
    tickets = sorted(x.ticket_us for x in answers if not x.granted)
    assert len(tickets) == 18 and all(t is not None for t in tickets)
    assert all(later - earlier == 125_000 for earlier, later in itertools.pairwise(tickets))  # 1/rate apart
    assert max(x.wait_seconds for x in answers) == pytest.approx(18 / rate, abs=0.2)


async def test_a_ticket_is_a_place_in_line_never_a_permission(redis_url):
    key = fresh_key()
    redis = Redis.from_url(redis_url)
    try:
        rate_limiter = limiter(redis, key, per_second=4)  # capacity 1, 250 ms apart
        assert (await rate_limiter.acquire()).granted  # the bucket's one token
        first = await rate_limiter.acquire()
        assert not first.granted and first.ticket_us
        early = await rate_limiter.acquire(first.ticket_us)  # back before its time: waits, keeps its place
        assert not early.granted and early.ticket_us == first.ticket_us and early.wait_seconds > 0
        newcomer = await rate_limiter.acquire()  # queues behind the line, does not take the line's token
        assert not newcomer.granted and newcomer.ticket_us == first.ticket_us + 250_000
        await asyncio.sleep(first.wait_seconds + 0.6)  # late (a busy worker): still first, not sent to the back
        late = await rate_limiter.acquire(first.ticket_us)
        assert late.granted
        # its place has passed too but the bucket is empty: the next holder waits for a token, keeping its place
        again = await rate_limiter.acquire(newcomer.ticket_us)
        assert not again.granted and 0 < again.wait_seconds <= 0.25 and again.ticket_us == newcomer.ticket_us
        await asyncio.sleep(again.wait_seconds + 0.01)
        assert (await rate_limiter.acquire(newcomer.ticket_us)).granted
    finally:
        await redis.aclose()


async def test_an_unreachable_redis_raises_instead_of_letting_sends_through():
    redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens there
    try:
        with pytest.raises(RedisError):
            await limiter(redis, "send-rate:unreachable").acquire()
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
