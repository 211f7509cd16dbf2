"""Shorter garbage-collector pauses for long-running processes (`prognet api`, `prognet worker`).

A process that has imported FastAPI, SQLAlchemy, OpenTelemetry and temporalio holds some 200,000 objects made at
startup that live as long as it does. Every full collection walks them all: about 100 ms during which the event
loop answers nothing (a `/healthz` probe, a login whose hash is done). Moved to the permanent generation once
startup is over, they are never walked again; objects made later are collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    # No gc.collect() first: in the worker it collected what temporalio's sandbox left from validating the
    # workflow definitions, and afterwards tests/integration/test_faults.py[redis] failed 3 runs of 4 (a tenant
    # saga never finished); not understood yet. Freezing keeps that garbage (a few hundred objects) instead.
    gc.freeze()
