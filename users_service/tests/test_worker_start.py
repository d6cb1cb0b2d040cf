"""Start-up's objects are kept out of the garbage collector's way while the worker runs, and given back at its end."""

import asyncio
import gc
import threading

import pytest
from fastapi.testclient import TestClient

from shared.settings import Settings
from users_service.app import create_app

# The threads a worker's start-up begins and its shutdown stops (shared/retention.py, shared/mail/sender.py).
LIFESPAN_THREADS = {"retention", "mail-sender"}


def test_start_up_freezes_what_it_made_so_full_collections_skip_it(settings: Settings) -> None:
    gc.unfreeze()
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
            # The app, its routes and schemas, the engine: all made before the first request, all frozen (a frozen
            # object is in no generation the collector walks).
            assert gc.get_freeze_count() > 10_000
            assert not any(tracked is client.app for tracked in gc.get_objects())
        # Shut down: collectable again, or each app a test suite builds would stay.
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_a_lifespan_ended_by_an_error_still_unfreezes_and_stops_its_threads(settings: Settings) -> None:
    """The server can end the lifespan with an exception (a cancelled task, say) instead of its shutdown message:
    the worker still gives start-up's objects back and stops the threads start-up began."""
    gc.unfreeze()
    app = create_app(settings)
    before = set(threading.enumerate())
    started_threads: list[threading.Thread] = []

    async def serve_then_fail() -> None:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 10_000
            started_threads.extend(
                thread for thread in set(threading.enumerate()) - before if thread.name in LIFESPAN_THREADS
            )
            raise RuntimeError("the server gave up")

    try:
        with pytest.raises(RuntimeError, match="gave up"):
            asyncio.run(serve_then_fail())
        assert gc.get_freeze_count() == 0
        assert started_threads
        assert [thread.name for thread in started_threads if thread.is_alive()] == []
    finally:
        gc.unfreeze()
