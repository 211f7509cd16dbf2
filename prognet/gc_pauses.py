"""Shorter garbage-collector pauses for long-running processes (`prognet api`, `prognet worker`).

A process that has imported FastAPI, SQLAlchemy, OpenTelemetry and temporalio holds some 200,000 objects made at
startup that live as long as it does. Every full collection walks them all: about 100 ms during which the event
loop answers nothing (a `/healthz` probe, a login whose hash is done). Moved to the permanent generation once
startup is over, they are never walked again; objects made later are collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    gc.collect()  # what startup left as garbage is freed, not frozen
    gc.freeze()
