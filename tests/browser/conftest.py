"""The `browser` marker: tests that drive a real Chromium (see test_docs_in_browser.py and BROWSER.md)."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives Debian's headless Chromium through playwright-core")
