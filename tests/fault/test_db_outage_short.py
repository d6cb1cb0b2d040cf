"""The database outage, short: PostgreSQL stopped for 3 s under load; the rules of tests/fault/db_outage.py.

It stops the machine's PostgreSQL: `make test` runs it in a pytest invocation of its own, after the
other suites (tests/fault/conftest.py also moves it last if it is collected with other tests).
Under CI=true it must run: anything that prevents it is a failure, not a skip.
"""

import os

import pytest

from shared.testing import admin_database_url, postgres_answers
from tests.fault.db_outage import OutageConfig, OutageResult, find_cluster, format_report, run_outage

pytestmark = pytest.mark.stops_database

SHORT = OutageConfig(outage_seconds=3, warmup=3, duration=3 + 3 + 5 + 3, quiet_timeout=30)


def _cannot_run(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the database outage test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def outage() -> OutageResult:
    admin_url = admin_database_url()
    if not postgres_answers(admin_url):
        _cannot_run("no PostgreSQL answers at TEST_DATABASE_URL")
    cluster, why = find_cluster(admin_url)
    if cluster is None:
        _cannot_run(why)
    result = run_outage(SHORT)
    print(format_report(result))
    assert cluster.is_up(), "PostgreSQL must be running again after the outage test"
    return result


def test_no_5xx_other_than_503(outage: OutageResult) -> None:
    assert not outage.server_errors_other_than_503, [
        (s.kind, s.status, s.snippet) for s in outage.server_errors_other_than_503
    ]


def test_every_503_is_json_with_retry_after(outage: OutageResult) -> None:
    assert any(s.status == 503 for s in outage.samples), "the outage produced no 503 at all"
    assert not outage.bad_503s, [(s.kind, s.retry_after, s.leak, s.snippet) for s in outage.bad_503s[:5]]


def test_every_request_got_an_answer_in_time(outage: OutageResult) -> None:
    assert not outage.no_answer, [(s.kind, s.error) for s in outage.no_answer[:10]]
    assert outage.max_latency < outage.config.request_timeout


def test_requests_needing_the_database_get_503_during_the_outage(outage: OutageResult) -> None:
    for kind in ("signup", "login", "me"):
        during = outage.in_phase("outage", kind)
        assert during, f"no {kind} request ran inside the outage"
        assert {s.status for s in during} == {503}, (kind, [s.status for s in during])


def test_readyz_503_and_healthz_200_during_the_outage(outage: OutageResult) -> None:
    for service in ("auth", "users"):
        readyz = outage.in_phase("outage", "readyz", service)
        assert readyz and {s.status for s in readyz} == {503}, (service, [s.status for s in readyz])
        healthz = [s for s in outage.samples if s.kind == "healthz" and s.service == service]
        assert healthz and {s.status for s in healthz} == {200}, (service, [s.status for s in healthz])


def test_recovers_within_the_limit_without_restart(outage: OutageResult) -> None:
    assert outage.recovery_seconds is not None, outage.recovery
    assert outage.recovery_seconds <= outage.config.recovery_limit, outage.recovery


def test_no_acknowledged_write_is_lost(outage: OutageResult) -> None:
    assert outage.acknowledged, "no sign-up was acknowledged"
    assert not outage.lost_writes, outage.lost_writes


def test_no_unhandled_exception_in_the_logs(outage: OutageResult) -> None:
    assert not outage.log_unhandled, outage.log_unhandled[:3]


def test_every_rule_of_the_script_holds(outage: OutageResult) -> None:
    assert outage.ok, "\n".join(outage.violations)
