"""The fault suite stops the machine's PostgreSQL: it runs after every other test of its session.

`make test` runs it in a pytest invocation of its own, after the other suites; should it be
collected together with other tests anyway (`pytest tests`), this moves it to the very end, so no
other test of that session is running while the database is down.
"""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stops_database: stops and restarts the shared PostgreSQL; runs last")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    outage = [item for item in items if item.get_closest_marker("stops_database")]
    if outage:
        items[:] = [item for item in items if not item.get_closest_marker("stops_database")] + outage
