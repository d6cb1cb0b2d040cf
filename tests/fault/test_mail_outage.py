"""The SMTP server down while password resets are requested: every request still succeeds at once, and every mail
arrives once the server is back. Real processes: the auth service under gunicorn, the SMTP server of its own.

MAIL_OUTAGE_REQUESTS sets how many requests (default 50); the figures are printed (`pytest -s` shows them).
"""

import os
import secrets
import statistics
import time
from collections import Counter
from pathlib import Path

import requests
from sqlalchemy import create_engine, insert, select

from shared.models import OutboxEmail, User
from shared.testing_mail import MailCatcher, wait_until
from tests.conftest import service_env
from tests.processes import ServiceProcess, free_port

REQUESTS = int(os.environ.get("MAIL_OUTAGE_REQUESTS", "50"))
# Long enough for every mail's first attempts to fail while the server is down.
OUTAGE_AFTER_REQUESTS_SECONDS = 2.0


def test_mails_requested_while_smtp_is_down_all_arrive_when_it_is_back(database_url: str, logs_dir: Path) -> None:
    tag = secrets.token_hex(4)
    emails = [f"outage.{tag}.{n}@example.com" for n in range(REQUESTS)]
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(User),
            [
                {
                    "username": f"outage_{tag}_{n}",
                    "email": email,
                    "password_hash": "not a usable hash",
                    "is_active": True,
                    "is_admin": False,
                    "token_version": 0,
                }
                for n, email in enumerate(emails)
            ],
        )
    catcher = MailCatcher().start()
    env = service_env(database_url, LOGIN_MAX_FAILURES_PER_ADDRESS="100000", **catcher.env())
    auth = ServiceProcess("auth", free_port(), env, logs_dir / f"auth-mail-outage-{tag}.log").start()
    try:
        catcher.stop()
        outage_started = time.monotonic()
        statuses, seconds = [], []
        for email in emails:
            started = time.perf_counter()
            try:
                response = requests.post(f"{auth.url}/password-reset", json={"email": email}, timeout=10)
                statuses.append(response.status_code)
            except requests.RequestException as error:
                statuses.append(type(error).__name__)
            seconds.append(time.perf_counter() - started)
        time.sleep(OUTAGE_AFTER_REQUESTS_SECONDS)
        with engine.connect() as connection:
            tried_while_down = (
                connection.execute(select(OutboxEmail.attempts).where(OutboxEmail.recipient.in_(emails)))
                .scalars()
                .all()
            )
        catcher.start()
        back = time.monotonic()
        arrived = wait_until(
            lambda: [mail for mail in catcher.mails() if mail.recipients[0] in emails], count=REQUESTS, timeout=60
        )
        all_arrived_after = time.monotonic() - back
        time.sleep(1.0)  # a duplicate would come within the retry interval
        arrived = [mail for mail in catcher.mails() if mail.recipients[0] in emails]
        with engine.connect() as connection:
            attempts = (
                connection.execute(select(OutboxEmail.attempts).where(OutboxEmail.recipient.in_(emails)))
                .scalars()
                .all()
            )
    finally:
        auth.stop()
        catcher.stop()
        engine.dispose()

    failed = [status for status in statuses if status != 202]
    per_recipient = Counter(mail.recipients[0] for mail in arrived)
    print(
        f"\nmail outage: {REQUESTS} reset requests with the SMTP server down: {len(failed)} failed; "
        f"latency median {statistics.median(seconds) * 1000:.1f} ms, max {max(seconds) * 1000:.1f} ms; "
        f"failed attempts per mail while down: min {min(tried_while_down)}, max {max(tried_while_down)}; "
        f"outage {back - outage_started:.1f} s; all {len(per_recipient)} mails arrived {all_arrived_after:.1f} s "
        f"after the server came back, {len(arrived)} deliveries in all; attempts per mail at the end: "
        f"{dict(sorted(Counter(attempts).items()))}"
    )
    assert failed == []
    assert min(tried_while_down) >= 1, "every mail was tried, and failed, while the server was down"
    assert sorted(per_recipient) == sorted(emails) and set(per_recipient.values()) == {1}
    assert len({mail.message["Message-ID"] for mail in arrived}) == REQUESTS
