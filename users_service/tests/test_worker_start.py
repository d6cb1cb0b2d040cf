"""Start-up's objects are kept out of the garbage collector's way while the worker runs, and given back at its end."""

import gc

from fastapi.testclient import TestClient

from shared.settings import Settings
from users_service.app import create_app


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
