"""The `browser` marker: tests that drive a real Chromium (test_docs_in_browser.py; docs/testing.md)."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives Debian's headless Chromium through playwright-core")
