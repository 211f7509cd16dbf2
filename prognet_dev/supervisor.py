"""Restart the stack's components when they crash, with exponential backoff, until one of them crash-loops.

`prognet dev` runs `supervise(...)` next to its Ctrl-C handler: a worker, API, PostgreSQL, Redis or Temporal that
dies is started again on the same port and data dir (so its data survives), and the log says so. Only a crash loop
(more than `max_restarts` restarts of one component within `window` seconds) ends supervision, with one line saying
why; the caller then stops the whole stack.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .components import Component
from .process import LogSink


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 0.5  # first wait before a restart; doubles with every crash ...
    max_delay: float = 30.0  # ... up to this
    stable_after: float = 60.0  # a component up this long is healthy again: the delay starts over
    max_restarts: int = 5  # more restarts than this within `window` seconds is a crash loop
    window: float = 60.0
    poll_interval: float = 0.2  # how often a component is checked


async def supervise(components: Sequence[Component], log: LogSink, policy: RestartPolicy | None = None) -> str:
    """Watch `components` (all started) until one crash-loops; returns the one-line reason. Cancel it to stop."""
    policy = policy or RestartPolicy()
    watchers = [asyncio.create_task(_watch(c, log, policy), name=f"supervise-{c.name}") for c in components]
    if not watchers:
        await asyncio.Event().wait()
    try:
        done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def _watch(component: Component, log: LogSink, policy: RestartPolicy) -> str:
    delay = policy.initial_delay
    recent: collections.deque[float] = collections.deque()  # when the recent restarts happened
    restarts = 0
    up_since = time.monotonic()
    reason = ""
    while True:
        if not reason:
            await asyncio.sleep(policy.poll_interval)
            if not component.crashed():
                continue
            reason = component.exit_reason()
        now = time.monotonic()
        if now - up_since >= policy.stable_after:
            delay = policy.initial_delay
        while recent and now - recent[0] > policy.window:
            recent.popleft()
        if len(recent) >= policy.max_restarts:
            tail = component.process.tail(3) if component.process is not None else ""
            return (
                f"{component.name} crashed {len(recent) + 1} times within {policy.window:.0f} s "
                f"(last: {reason}{': ' + tail if tail else ''}); stopping everything"
            )
        recent.append(now)
        restarts += 1
        log("devstack", f"{component.name} {reason}; restarting in {delay:.1f} s (restart {restarts})")
        with contextlib.suppress(Exception):  # reap what is left of it (orphaned children, the log pump)
            await component.stop()
        await asyncio.sleep(delay)
        delay = min(delay * 2, policy.max_delay)
        up_since = time.monotonic()
        reason = ""
        try:
            await component.start()
        except Exception as exc:
            reason = f"failed to restart: {exc}"
            continue
        log("devstack", f"{component.name} is back")
