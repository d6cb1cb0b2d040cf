"""No enumeration by timing after a parameter change: a wrong password for an unknown name, for a user whose hash is
legacy bcrypt and for one whose Argon2 hash has older (cheaper) parameters all take the same time."""

import statistics
import time

import bcrypt
from passlib.hash import argon2

from auth_service.tests.conftest import login
from auth_service.tests.test_throttle import WRONG, ghost_username

# The medians of the per-round ratios may differ by this fraction at most (loose enough for a loaded 2-core
# machine); with only today's dummy, the legacy users answered 2-5 times faster than an unknown name.
BAND = 0.35
SAMPLES = 25
NO_THROTTLE = {"login_max_failures_per_username": 1000, "login_max_failures_per_address": 1000}


def test_unknown_legacy_bcrypt_and_old_argon2_users_answer_a_wrong_password_in_the_same_time(make_client, make_user):
    password = "legacy password 1"
    names = {
        "bcrypt": make_user(
            password=password, password_hash=bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        ).username,
        "old-argon2": make_user(
            password=password, password_hash=argon2.using(type="ID", memory_cost=8192, rounds=1).hash(password)
        ).username,
        "unknown": ghost_username(),
    }
    # A new app, started after those hashes exist: it reads the settings in use on its first check.
    client = make_client(**NO_THROTTLE)
    assert login(client, ghost_username(), WRONG).status_code == 401
    # Each round times the three back to back; comparing within a round cancels the machine's load drifting.
    ratios: dict[str, list[float]] = {kind: [] for kind in names}

    for _ in range(SAMPLES):
        durations = {}
        for kind, username in names.items():
            started = time.perf_counter()
            response = login(client, username, WRONG)
            durations[kind] = time.perf_counter() - started
            assert response.status_code == 401, response.text
        round_mean = statistics.mean(durations.values())
        for kind, duration in durations.items():
            ratios[kind].append(duration / round_mean)

    medians = {kind: statistics.median(samples) for kind, samples in ratios.items()}
    assert max(medians.values()) <= min(medians.values()) * (1 + BAND), medians
