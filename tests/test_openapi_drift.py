"""The committed OpenAPI schemas (docs/openapi/) are what the code serves: an API change shows in the diff."""

import importlib.util
from pathlib import Path

import pytest

EXPORTER = Path(__file__).resolve().parent.parent / "deploy" / "export-openapi.py"


def load_exporter():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("export_openapi", EXPORTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["auth.json", "users.json"])
def test_the_committed_schema_is_the_one_the_code_serves(name: str) -> None:
    exporter = load_exporter()
    committed = exporter.OPENAPI_DIR / name
    assert committed.exists(), f"{committed} is missing: run `make openapi` and commit it"
    assert committed.read_text() == exporter.schemas()[name], (
        f"the API changed but {committed.name} did not: run `make openapi` and commit the diff"
    )
