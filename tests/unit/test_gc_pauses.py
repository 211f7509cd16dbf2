"""`prognet api` and `prognet worker` leave what startup made out of the garbage collector's full passes."""

from __future__ import annotations

import gc

from api.app import create_served_app


def test_the_served_app_freezes_what_startup_made() -> None:
    gc.unfreeze()
    try:
        create_served_app()
        frozen = gc.get_freeze_count()
        # the app's routes, models and instrumentation are among them: a full pass no longer walks them
        assert frozen > 50_000
        assert len(gc.get_objects()) < frozen
    finally:
        gc.freeze()  # as tests/conftest.py leaves each module: frozen
