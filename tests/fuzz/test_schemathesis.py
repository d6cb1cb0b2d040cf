"""Schemathesis against each service's own OpenAPI schema, sent to real gunicorn processes.

Every operation of both services is fuzzed with schema-valid and schema-invalid data (bounded by
FUZZ_MAX_EXAMPLES per operation), the users service three times: without a token, with a valid
user's token and with a valid admin's token. Each case with a token gets a user of its own, so a
fuzzed DELETE or PATCH cannot spoil the next case.

The schema the cases are generated from is built by each service's `create_app(settings)`; a test
checks it is exactly what the running process serves at /openapi.json. (Schemathesis' lazy
`from_fixture` loader, which could load it from the process, breaks on pytest 9.)
"""

import os
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from auth_service.app import create_app as create_auth_app
from shared.settings import Settings
from shared.testing import new_test_secret
from tests.fuzz.conftest import FuzzStack, unhandled_lines
from users_service.app import create_app as create_users_app

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
# Reproducible by default (CI must not flake on a new seed every run); FUZZ_RANDOM=1 explores afresh.
DERANDOMIZE = os.environ.get("FUZZ_RANDOM") != "1"
REQUEST_TIMEOUT_SECONDS = 20

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

# What is enforced: no 5xx; status code, content type, headers and body as documented; invalid input
# refused; a 405 that says which methods the path does support; a token that is really checked.
ENFORCED_CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
    st_checks.unsupported_method,
    st_checks.allow_header_conformance,
    st_checks.ignored_auth,
]
# FUZZ_SKIP_CHECKS=name,name leaves checks out, to see what else a run finds while one is known to fail.
_skipped = {name.strip() for name in os.environ.get("FUZZ_SKIP_CHECKS", "").split(",") if name.strip()}
ENFORCED_CHECKS = [check for check in ENFORCED_CHECKS if check.__name__ not in _skipped]
# Not enforced: `positive_data_acceptance` wants a 2xx for any schema-valid body, but OAuth2's /token
# answers 400 `unsupported_grant_type` for a grant_type the schema cannot enumerate (RFC 6749, the
# API reference, docs/api.md), and an empty form field counts as missing (422); both are documented answers.


def _schema_settings() -> Settings:
    # Only to render the schema: no connection is made, and the secret is thrown away.
    # Everything the environment could set differently is pinned, so collection never depends on it.
    return Settings(
        _env_file=None,
        database_url="postgresql://schema-only@127.0.0.1:9/unused",
        jwt_secret=new_test_secret(),
        jwt_algorithm="HS256",
        app_env="production",
        admin_username=None,
        admin_password=None,
    )


def _openapi_of(service: str) -> dict[str, Any]:
    create_app = create_auth_app if service == "auth" else create_users_app
    return create_app(_schema_settings()).openapi()


AUTH_OPENAPI = _openapi_of("auth")
USERS_OPENAPI = _openapi_of("users")
auth_schema = schemathesis.openapi.from_dict(AUTH_OPENAPI)
users_schema = schemathesis.openapi.from_dict(USERS_OPENAPI)


def _comparable(schema: dict[str, Any]) -> dict[str, Any]:
    # The docs' tokenUrl names the auth service's public address, which differs between the two.
    flows = schema.get("components", {}).get("securitySchemes", {})
    for scheme in flows.values():
        for flow in scheme.get("flows", {}).values():
            flow.pop("tokenUrl", None)
    return schema


@pytest.mark.parametrize("service", ["auth", "users"])
def test_fuzzed_schema_is_the_one_the_process_serves(fuzz_stack: FuzzStack, service: str) -> None:
    base = fuzz_stack.auth_url if service == "auth" else fuzz_stack.users_url
    served = requests.get(f"{base}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert _comparable(served.json()) == _comparable(_openapi_of(service))


def _call(case: schemathesis.Case, base_url: str, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    case.call_and_validate(base_url=base_url, headers=headers, checks=ENFORCED_CHECKS, timeout=REQUEST_TIMEOUT_SECONDS)


@auth_schema.parametrize()
@FUZZ_SETTINGS
def test_auth_service(case: schemathesis.Case, fuzz_stack: FuzzStack) -> None:
    _call(case, fuzz_stack.auth_url)


@users_schema.parametrize()
@FUZZ_SETTINGS
def test_users_service_without_token(case: schemathesis.Case, fuzz_stack: FuzzStack) -> None:
    _call(case, fuzz_stack.users_url)


@users_schema.parametrize()
@FUZZ_SETTINGS
def test_users_service_with_user_token(case: schemathesis.Case, fuzz_stack: FuzzStack) -> None:
    _call(case, fuzz_stack.users_url, fuzz_stack.fresh_token())


@users_schema.parametrize()
@FUZZ_SETTINGS
def test_users_service_with_admin_token(case: schemathesis.Case, fuzz_stack: FuzzStack) -> None:
    _call(case, fuzz_stack.users_url, fuzz_stack.fresh_token(is_admin=True))


def test_fuzzing_left_no_trace_in_logs(fuzz_stack: FuzzStack) -> None:
    """Runs after the fuzzers (file order): no stack trace, and no worker killed by a timeout."""
    # Every worker's lines written up to now, or a trace from the last cases could still be on its way.
    for process in (fuzz_stack.auth, fuzz_stack.users):
        process.wait_until_logged()
    unhandled = unhandled_lines(fuzz_stack.auth, fuzz_stack.users)
    assert not unhandled, unhandled[:5]
