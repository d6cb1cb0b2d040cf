"""`make scale-check`: the services on a table of a million users and a million refresh tokens.

Makes a throwaway PostgreSQL database, seeds 1,000,000 users and 1,000,000 refresh tokens (with their 250,000
sessions) in one statement each, starts the users and auth services (gunicorn, as production runs them) and
prints: the time of a `GET /users` page at the first and the last page by keyset (`after`) and by `offset`,
of `GET /users/me` and of a login; then the tables' and indexes' sizes before and after a retention pass with a
short retention (and after a VACUUM). Everything it made is stopped and dropped at the end.

    python -m tests.perf.scale_check [--users 1000000] [--repeats 30]
"""

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from shared.models import utc_now
from shared.passwords import PasswordHasher
from shared.retention import run_retention_pass
from shared.testing import admin_database_url, migrated_database, postgres_answers, settings_for_tests
from shared.tokens import AccessTokenIssuer
from tests.processes import ServiceProcess, free_port

PASSWORD = "scale-check-password-1"
ADMIN_ID = 1
PAGE = 50
TOKENS_PER_SESSION = 4
# The retention of the pass: every seeded row that is ended, expired or retired is a day old.
SHORT_RETENTION_SECONDS = 3_600
TABLES = ("users", "sessions", "refresh_tokens")
MIB = 1024 * 1024

# Users: the admin (id 1) and `scale_2`...; one precomputed Argon2 hash for all.
SEED_USERS = """
INSERT INTO users (id, username, password_hash, is_active, is_admin, email_verified, token_version,
                   created_at, updated_at)
SELECT g, CASE WHEN g = 1 THEN 'scale_admin' ELSE 'scale_' || g END, :hash, true, g = 1, false, 0, now(), now()
FROM generate_series(1, :users) AS g
"""
# Sessions: every fourth one ended a day ago, the others live; each belongs to a user other than the admin.
SEED_SESSIONS = """
INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, ended_at)
SELECT 'scale-' || g, 2 + g % (:users - 1), now() - interval '15 days', now(), now() + interval '14 days',
       CASE WHEN g % 4 = 0 THEN now() - interval '1 day' END
FROM generate_series(1, :sessions) AS g
"""
# Refresh tokens: four a session; in a live session the first three were retired by rotation and expired a day
# ago, the fourth is live; an ended session's are all revoked.
SEED_REFRESH_TOKENS = """
INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at, used_at, revoked_at)
SELECT md5('scale-token-' || t), 'scale-' || ((t - 1) / 4 + 1), 2 + ((t - 1) / 4 + 1) % (:users - 1),
       now() - interval '15 days',
       CASE WHEN t % 4 = 0 THEN now() + interval '14 days' ELSE now() - interval '1 day' END,
       CASE WHEN t % 4 = 0 THEN NULL ELSE now() - interval '2 days' END,
       CASE WHEN ((t - 1) / 4 + 1) % 4 = 0 THEN now() - interval '1 day' END
FROM generate_series(1, :tokens) AS t
"""
SIZES = """
SELECT pg_relation_size(CAST(:table AS regclass)) AS heap, pg_indexes_size(CAST(:table AS regclass)) AS indexes,
       (SELECT count(*) FROM {table}) AS row_count
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=30, help="requests timed per figure (logins: a third)")
    return parser.parse_args(argv)


def timed(call: Callable[[], requests.Response], repeats: int) -> dict[str, float]:
    """Median and 90th percentile in ms of `repeats` calls (after one untimed warm-up); each must answer 200."""
    call().raise_for_status()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = call()
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:200]}")
    timings.sort()
    return {"median": statistics.median(timings), "p90": timings[int(0.9 * (len(timings) - 1))]}


def seed(database_url: str, *, users: int, password_hash: str) -> dict[str, float]:
    """The three tables, one statement each, then ANALYZE; seconds each took."""
    tokens = users
    sessions = tokens // TOKENS_PER_SESSION
    parameters = {"users": users, "sessions": sessions, "tokens": tokens, "hash": password_hash}
    seconds = {}
    engine = create_engine(database_url)
    with engine.begin() as connection:
        for name, statement in (("users", SEED_USERS), ("sessions", SEED_SESSIONS), ("tokens", SEED_REFRESH_TOKENS)):
            started = time.perf_counter()
            connection.execute(text(statement), parameters)
            seconds[name] = time.perf_counter() - started
        connection.execute(text("SELECT setval(pg_get_serial_sequence('users', 'id'), :users)"), parameters)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE users, sessions, refresh_tokens"))
    engine.dispose()
    return seconds


def table_sizes(database_url: str) -> dict[str, dict[str, float]]:
    engine = create_engine(database_url)
    sizes = {}
    with engine.connect() as connection:
        for table in TABLES:
            row = connection.execute(text(SIZES.format(table=table)), {"table": table}).one()
            sizes[table] = {"heap_mib": row.heap / MIB, "index_mib": row.indexes / MIB, "rows": row.row_count}
    engine.dispose()
    return sizes


def vacuum(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM sessions, refresh_tokens"))
    engine.dispose()


def print_sizes(title: str, sizes: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'table':<16}{'rows':>12}{'heap MiB':>11}{'index MiB':>11}")
    for table, size in sizes.items():
        print(f"  {table:<16}{size['rows']:>12,}{size['heap_mib']:>11.1f}{size['index_mib']:>11.1f}")


def measure(users_url: str, auth_url: str, *, admin_token: str, users: int, repeats: int) -> dict[str, dict]:
    http = requests.Session()
    admin = {"Authorization": f"Bearer {admin_token}"}
    deepest = users - PAGE

    def page(**query: int) -> Callable[[], requests.Response]:
        return lambda: http.get(f"{users_url}/users", params={"limit": PAGE, **query}, headers=admin, timeout=30)

    last_by_keyset = http.get(f"{users_url}/users", params={"limit": PAGE, "after": deepest}, headers=admin).json()
    assert len(last_by_keyset["items"]) == PAGE and last_by_keyset["next_after"] is None, last_by_keyset
    logins = iter(range(2, users + 1))

    def login() -> requests.Response:
        form = {"username": f"scale_{next(logins)}", "password": PASSWORD}
        return http.post(f"{auth_url}/token", data=form, timeout=30)

    return {
        "first page, keyset (after=0)": timed(page(after=0), repeats),
        f"last page, keyset (after={deepest:,})": timed(page(after=deepest), repeats),
        "first page, offset=0": timed(page(offset=0), repeats),
        f"last page, offset={deepest:,}": timed(page(offset=deepest), repeats),
        "GET /users/me": timed(lambda: http.get(f"{users_url}/users/me", headers=admin, timeout=30), repeats),
        "POST /token (password login)": timed(login, max(3, repeats // 3)),
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    admin_url = admin_database_url()
    if not postgres_answers(admin_url):
        print(f"scale-check: no PostgreSQL answers at TEST_DATABASE_URL ({admin_url.split('@')[-1]})")
        return 1
    with ExitStack() as stack:
        database_url = stack.enter_context(migrated_database(admin_url))
        settings = settings_for_tests(database_url)
        hasher = PasswordHasher(settings)
        print(f"seeding {args.users:,} users, {args.users // TOKENS_PER_SESSION:,} sessions, {args.users:,} tokens")
        seconds = seed(database_url, users=args.users, password_hash=hasher.hash(PASSWORD))
        print("  seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))

        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scale-check-")))
        env = {
            "DATABASE_URL": database_url,
            "APP_ENV": "production",
            "JWT_SECRET": settings.jwt_secret,
            # The pass below is the one measured; the services' own would race it.
            "RETENTION_INTERVAL_SECONDS": "0",
            "MAIL_SENDER_ENABLED": "false",
        }
        services = {}
        for name in ("users", "auth"):
            process = ServiceProcess(service=name, port=free_port(), env=env, log_path=logs / f"{name}.log", workers=1)
            services[name] = process.start()
            stack.callback(process.stop)
        admin_token = AccessTokenIssuer(settings).issue(user_id=ADMIN_ID, token_version=0).token
        figures = measure(
            services["users"].url,
            services["auth"].url,
            admin_token=admin_token,
            users=args.users,
            repeats=args.repeats,
        )
        print(
            f"\nrequest times, ms (median, p90 of {args.repeats}; logins {max(3, args.repeats // 3)}; one worker each)"
        )
        for name, figure in figures.items():
            print(f"  {name:<36}{figure['median']:>8.2f}{figure['p90']:>8.2f}")
        first, last = (
            figures["first page, keyset (after=0)"],
            figures[f"last page, keyset (after={args.users - PAGE:,})"],
        )
        ratio = last["median"] / first["median"]
        print(f"  keyset: last page / first page = {ratio:.2f} (target: within 2x) {'OK' if ratio <= 2 else 'MISSED'}")

        print_sizes("before the retention pass", table_sizes(database_url))
        pass_settings = settings.model_copy(update={"ended_session_retention_seconds": SHORT_RETENTION_SECONDS})
        engine = create_engine(database_url)
        started = time.perf_counter()
        deleted = run_retention_pass(engine=engine, settings=pass_settings, now=utc_now())
        pass_seconds = time.perf_counter() - started
        engine.dispose()
        print(f"\nretention pass (retention {SHORT_RETENTION_SECONDS} s): {pass_seconds:.1f} s, deleted {deleted}")
        print_sizes("after the retention pass (deleted rows' space is reused, not returned)", table_sizes(database_url))
        vacuum(database_url)
        print_sizes("after VACUUM", table_sizes(database_url))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
