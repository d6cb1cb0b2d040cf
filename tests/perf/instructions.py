"""Instructions per request, counted by callgrind: figures that do not drift with the machine's load.

Each scenario drives an app through its ASGI interface in this process (no HTTP, no wrk), against a real
PostgreSQL database of its own, twice under `valgrind --tool=callgrind`: once with a small number of requests and
once with a larger one. The difference of the two totals, divided by the difference of the counts, is what one
request costs the service's process (its event loop and its threads), with start-up and warm-up cancelled out.
PostgreSQL's own work is not in it (another process).

    python -m tests.perf.instructions                      # every scenario, 200 and 1000 requests (~10 minutes)
    python -m tests.perf.instructions --scenarios users_me,reference_me --requests 200,600

Scenarios: `users_me` (GET /users/me with a login's token, its session checked), `reference_me` (the bench's
reference route, tests/perf/reference_app.py), `login` (POST /token with a password, Argon2 at m=8 KiB t=1 so
that the hash hardly counts and the rest of a login shows). Needs valgrind (Debian's package).
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCENARIOS = ("users_me", "reference_me", "login")
CONCURRENCY = 8
WARM_UP_REQUESTS = 100
LOGIN_PASSWORD = "correct horse battery staple"
COLLECTED = re.compile(r"Collected : (\d+)")


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"instructions"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def one_request(app: Callable, scope: dict, body: bytes) -> int:
    status = 0
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if delivered:
            # The app asks again only to learn of a disconnect, which never comes.
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def drive(app: Callable, scope: dict, body: bytes, count: int) -> None:
    """`count` requests, CONCURRENCY at a time (as connections would be); every answer must be 200."""

    async def client(requests: int) -> list[int]:
        return [await one_request(app, scope, body) for _ in range(requests)]

    answers = await asyncio.gather(*(client(count // CONCURRENCY) for _ in range(CONCURRENCY)))
    statuses = {status for statuses in answers for status in statuses}
    if statuses != {200}:
        raise SystemExit(f"instructions: answers other than 200: {sorted(statuses)}")


async def serve(app: Callable, scope: dict, body: bytes, count: int) -> None:
    """The app's lifespan started, the warm-up, then `count` requests, then the lifespan ended."""
    messages: asyncio.Queue = asyncio.Queue()
    started = asyncio.Event()

    async def receive() -> dict:
        return await messages.get()

    async def send(message: dict) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise SystemExit(f"instructions: the app did not start: {message.get('message')}")

    await messages.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    await started.wait()
    await drive(app, scope, body, WARM_UP_REQUESTS)
    await drive(app, scope, body, count)
    await messages.put({"type": "lifespan.shutdown"})
    await lifespan


def run_child(scenario: str, count: int) -> None:
    """Inside valgrind: a database of its own, one user, the scenario's app, `count` requests."""
    import uvloop
    from sqlalchemy import create_engine, text

    from shared.passwords import PasswordHasher
    from shared.testing import admin_database_url, migrated_database, settings_for_tests
    from shared.tokens import AccessTokenIssuer

    with migrated_database(admin_database_url()) as database_url:
        settings = settings_for_tests(database_url, db_pool_size=4, argon2_memory_kib=8, argon2_time_cost=1)
        engine = create_engine(database_url)
        session_id = str(uuid.uuid4())
        with engine.begin() as connection:
            user_id = connection.execute(
                text(
                    "INSERT INTO users (username, email, full_name, password_hash, is_active, is_admin, created_at,"
                    " updated_at, token_version, email_verified) VALUES ('bench', 'bench@example.com', 'Bench',"
                    " :password_hash, true, false, now(), now(), 0, false) RETURNING id"
                ),
                {"password_hash": PasswordHasher(settings).hash(LOGIN_PASSWORD)},
            ).scalar_one()
            connection.execute(
                text(
                    "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at)"
                    " VALUES (:id, :user_id, now(), now(), now() + interval '1 day')"
                ),
                {"id": session_id, "user_id": user_id},
            )
        engine.dispose()
        token = AccessTokenIssuer(settings).issue(user_id=user_id, token_version=0, session_id=session_id).token
        bearer = [(b"authorization", f"Bearer {token}".encode())]
        if scenario == "users_me":
            from users_service.app import create_app as create_users_app

            app, scope, body = create_users_app(settings), http_scope("GET", "/users/me", bearer), b""
        elif scenario == "reference_me":
            os.environ.update(
                DATABASE_URL=database_url, JWT_SECRET=settings.jwt_secret, DB_POOL_SIZE=str(settings.db_pool_size)
            )
            from tests.perf.reference_app import create_app as create_reference_app

            app, scope, body = create_reference_app(), http_scope("GET", "/me", bearer), b""
        else:
            from auth_service.app import create_app as create_auth_app

            body = urllib.parse.urlencode(
                {"grant_type": "password", "username": "bench", "password": LOGIN_PASSWORD}
            ).encode()
            form = [
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", str(len(body)).encode()),
            ]
            app, scope = create_auth_app(settings), http_scope("POST", "/token", form)
        uvloop.run(serve(app, scope, body, count))


def instructions_of(scenario: str, count: int) -> int:
    """The instructions callgrind counted in a child process that served `count` requests of `scenario`."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "tests.perf.instructions",
        "--child",
        scenario,
        str(count),
    ]
    # The services' JSON lines go to stdout: discarded. valgrind's summary comes on stderr.
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    collected = COLLECTED.findall(finished.stderr)
    if finished.returncode != 0 or not collected:
        raise SystemExit(f"instructions: {scenario} x {count} failed:\n{finished.stderr[-3000:]}")
    return int(collected[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--requests", default="200,1000", help="the two request counts, small and large")
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions: valgrind is needed (apt-get install valgrind)")
    scenarios = [name for name in args.scenarios.split(",") if name]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"instructions: unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
    small, large = (int(count) for count in args.requests.split(","))
    if not 0 < small < large:
        raise SystemExit("instructions: --requests takes two counts, the first smaller")
    os.chdir(Path(__file__).resolve().parents[2])
    print(f"instructions per request ({small} and {large} requests, {CONCURRENCY} at a time, callgrind):")
    # The two runs of a scenario side by side: callgrind runs a program on one core, and counts do not depend on
    # what else the machine does.
    with ThreadPoolExecutor(2) as runs:
        for scenario in scenarios:
            small_run, large_run = (runs.submit(instructions_of, scenario, count) for count in (small, large))
            per_request = (large_run.result() - small_run.result()) / (large - small)
            print(f"  {scenario:<14} {per_request / 1e6:6.3f} million", flush=True)


if __name__ == "__main__":
    main()
