"""A password login is refused at once (503, Retry-After) while the hashing slots are taken; a refresh is not."""

from auth_service.tests.conftest import login, refresh
from shared.admission import HashingAdmission


def test_password_grant_is_shed_when_every_slot_is_taken_and_refresh_is_not(make_client) -> None:
    client = make_client(password_hash_max_in_flight=2)
    admission: HashingAdmission = client.app.state.hashing_admission
    assert admission.try_enter() and admission.try_enter()
    try:
        shed = login(client, "someone", "some password")
        refreshed = refresh(client, "not-a-refresh-token")
        health = [client.get(path).status_code for path in ("/healthz", "/readyz")]
    finally:
        admission.leave()
        admission.leave()

    assert shed.status_code == 503, shed.text
    assert int(shed.headers["Retry-After"]) >= 1 and shed.json()["detail"]
    assert refreshed.status_code == 401, refreshed.text
    assert health == [200, 200]
    assert admission.in_flight == 0
