"""The database outage, short: PostgreSQL stopped for 3 s under load; the rules of tests/fault/db_outage.py.

The PostgreSQL it stops is a throwaway cluster of its own (tests/fault/own_cluster.py), made and removed by
the run: the machine's PostgreSQL, and every other suite using it meanwhile, never notice.
Under CI=true it must run: anything that prevents it is a failure, not a skip.
"""

import os

import pytest

from tests.fault.db_outage import OutageConfig, OutageResult, format_report, run_outage
from tests.fault.own_cluster import why_no_cluster

SHORT = OutageConfig(outage_seconds=3, warmup=3, duration=3 + 3 + 5 + 3)


def _cannot_run(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the database outage test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def outage() -> OutageResult:
    why = why_no_cluster()
    if why is not None:
        _cannot_run(why)
    result = run_outage(SHORT)
    print(format_report(result))
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
