"""Shorter garbage-collector pauses for the API process (`prognet api`), whose event loop answers every request.

A process that has imported FastAPI, SQLAlchemy, OpenTelemetry and temporalio holds some 200,000 objects made at
startup that live as long as it does. Every full collection walks them all: about 100 ms during which the event
loop answers nothing (a `/healthz` probe, a login whose hash is done). Moved to the permanent generation once
startup is over, they are never walked again; objects made later are collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    # Not in the worker: its benefit there was never measured. (A gc.collect() + freeze at worker start once
    # seemed to make tests/integration/test_faults.py[redis] fail; on a quiet machine that test passed 6 runs of 6
    # with it. The failures came on a busy machine, where the test is known to be sensitive.)
    gc.freeze()
