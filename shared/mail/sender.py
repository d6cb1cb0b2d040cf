"""The outbox sender: a thread in each worker that claims due mails, delivers them and records the outcome.

Claiming is one UPDATE of a `FOR UPDATE SKIP LOCKED` subquery that moves `next_attempt_at` forward by a lease:
the rows are then ours for the lease without any lock or session state held while we send, so several workers
and replicas (and a transaction-mode pooler) are safe. A mail is marked sent after the transport accepted it;
a crash in between sends it again after the lease (at least once; the Message-ID lets receivers tell).

The thread sleeps until the earliest `next_attempt_at` it knows of, or until a commit in this process queued a
mail (shared.mail.wakeup): an idle service sends no queries at all, so a Neon compute can suspend.
"""

import logging
import random
import re
import smtplib
import threading
import time
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import Engine, and_, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from shared.database import build_engine, run_statement
from shared.database_failures import log_database_failure
from shared.mail.messages import mime_message
from shared.mail.outbox import OUTBOX
from shared.mail.transports import TransportUnavailable, build_transport
from shared.mail.wakeup import register_sender, unregister_sender
from shared.settings import Settings

logger = logging.getLogger("shared.mail")

MAIL_SENT = Counter("mail_sent_total", "Mails the transport accepted", ["kind"])
MAIL_RETRIED = Counter("mail_retries_total", "Failed mail deliveries scheduled to be tried again", ["kind"])
MAIL_DEAD = Counter("mail_dead_total", "Mails given up on after their last attempt or a permanent refusal", ["kind"])

BATCH_SIZE = 10
# After a database failure the sender looks again after this, doubling up to the maximum.
DATABASE_RETRY_SECONDS = 2.0
DATABASE_RETRY_MAX_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
ADDRESS = re.compile(r"[^\s<>@'\"(),;:\[\]]+@[^\s<>@'\"(),;:\[\]]+")
LAST_ERROR_LENGTH = 500

PENDING = and_(OUTBOX.c.sent_at.is_(None), OUTBOX.c.dead_at.is_(None))
CLAIM_DUE = (
    update(OUTBOX)
    .where(
        OUTBOX.c.id.in_(
            select(OUTBOX.c.id)
            .where(PENDING, OUTBOX.c.next_attempt_at <= bindparam("now"))
            .order_by(OUTBOX.c.next_attempt_at)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
    )
    .values(next_attempt_at=bindparam("lease_until"))
    .returning(
        OUTBOX.c.id,
        OUTBOX.c.kind,
        OUTBOX.c.message_id,
        OUTBOX.c.recipient,
        OUTBOX.c.subject,
        OUTBOX.c.body_text,
        OUTBOX.c.body_html,
        OUTBOX.c.created_at,
        OUTBOX.c.attempts,
    )
)
EARLIEST_PENDING = select(func.min(OUTBOX.c.next_attempt_at).label("earliest")).where(PENDING)
BY_ID = OUTBOX.c.id == bindparam("mail_id")
RECORD_SENT = (
    update(OUTBOX)
    .where(BY_ID)
    .values(sent_at=bindparam("now"), attempts=OUTBOX.c.attempts + 1, last_error=None)
    .returning(OUTBOX.c.id)
)
RECORD_FAILURE = (
    update(OUTBOX)
    .where(BY_ID)
    .values(
        attempts=bindparam("attempts"),
        next_attempt_at=bindparam("next_attempt_at"),
        last_error=bindparam("last_error"),
        dead_at=bindparam("dead_at"),
    )
    .returning(OUTBOX.c.id)
)
# A stopping sender hands back what it claimed and did not try, for another worker (or its successor) at once.
RELEASE = (
    update(OUTBOX)
    .where(BY_ID, OUTBOX.c.sent_at.is_(None))
    .values(next_attempt_at=bindparam("now"))
    .returning(OUTBOX.c.id)
)


def without_addresses(text: str) -> str:
    return ADDRESS.sub("<address>", text)


def describe_error(error: BaseException) -> str:
    """The error's class and message with every email address removed, short enough for last_error and a log line."""
    cause = error.__cause__ if isinstance(error, TransportUnavailable) and error.__cause__ else error
    text = " ".join(without_addresses(str(cause)).split())
    return (f"{type(cause).__name__}: {text}" if text else type(cause).__name__)[:LAST_ERROR_LENGTH]


def is_permanent_refusal(error: BaseException) -> bool:
    """The server refused the recipient for good (5xx): no later attempt would do better."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return bool(error.recipients) and all(code >= 500 for code, _ in error.recipients.values())
    return False


def retry_delay_seconds(*, attempts: int, settings: Settings) -> float:
    """Exponential from the base, capped, with jitter (half to all of it) so retries from many rows spread out."""
    delay = min(settings.mail_retry_max_seconds, settings.mail_retry_base_seconds * 2 ** min(attempts - 1, 40))
    return delay * random.uniform(0.5, 1.0)


def lease_seconds(settings: Settings) -> float:
    # Longer than a batch can take: each mail may wait out the SMTP timeout twice (connect, then send).
    return 30.0 + 2 * settings.smtp_timeout_seconds * (BATCH_SIZE + 1)


def claim_due_mails(*, engine: Engine, settings: Settings, now: datetime) -> list:
    with engine.connect() as connection:
        return run_statement(
            connection,
            CLAIM_DUE,
            {"now": now, "limit": BATCH_SIZE, "lease_until": now + timedelta(seconds=lease_seconds(settings))},
        )


def earliest_pending(*, engine: Engine) -> datetime | None:
    with engine.connect() as connection:
        earliest = run_statement(connection, EARLIEST_PENDING)[0].earliest
    return earliest.replace(tzinfo=UTC) if earliest is not None and earliest.tzinfo is None else earliest


def record_sent(*, engine: Engine, mail_id: int, now: datetime) -> None:
    with engine.connect() as connection:
        run_statement(connection, RECORD_SENT, {"mail_id": mail_id, "now": now})


def record_failure(*, engine: Engine, settings: Settings, mail, error: BaseException, now: datetime) -> bool:
    """attempts+1, then a retry after the backoff, or dead after the last attempt; True when the mail is dead."""
    attempts = mail.attempts + 1
    dead = attempts >= settings.mail_max_attempts or is_permanent_refusal(error)
    description = describe_error(error)
    next_attempt_at = now + timedelta(seconds=retry_delay_seconds(attempts=attempts, settings=settings))
    with engine.connect() as connection:
        run_statement(
            connection,
            RECORD_FAILURE,
            {
                "mail_id": mail.id,
                "attempts": attempts,
                "next_attempt_at": now if dead else next_attempt_at,
                "last_error": description,
                "dead_at": now if dead else None,
            },
        )
    if dead:
        MAIL_DEAD.labels(mail.kind).inc()
        logger.warning(
            "mail %s (%s) given up after %s attempts: %s",
            mail.id,
            mail.kind,
            attempts,
            description,
            extra={"fields": {"outbox_id": mail.id, "kind": mail.kind, "attempts": attempts, "error": description}},
        )
    else:
        MAIL_RETRIED.labels(mail.kind).inc()
        logger.info(
            "mail %s (%s) attempt %s failed, next in %.0f s: %s",
            mail.id,
            mail.kind,
            attempts,
            (next_attempt_at - now).total_seconds(),
            description,
            extra={"fields": {"outbox_id": mail.id, "kind": mail.kind, "attempts": attempts, "error": description}},
        )
    return dead


def release_mails(*, engine: Engine, mail_ids: list[int], now: datetime) -> None:
    with engine.connect() as connection:
        for mail_id in mail_ids:
            run_statement(connection, RELEASE, {"mail_id": mail_id, "now": now})


def deliver_batch(*, engine: Engine, settings: Settings, mails: list, stopping: threading.Event) -> None:
    """Sends each claimed mail and records its outcome; one transport (SMTP connection) for the whole batch."""
    transport = build_transport(settings)
    started = time.monotonic()
    try:
        for index, mail in enumerate(mails):
            # Stopping, or the lease half gone: what is left goes back for whoever looks next.
            if stopping.is_set() or time.monotonic() - started > lease_seconds(settings) / 2:
                release_mails(engine=engine, mail_ids=[left.id for left in mails[index:]], now=_now())
                return
            try:
                transport.deliver(
                    message=mime_message(mail_from=settings.mail_from, row=mail), name=f"{mail.id}-{mail.kind}"
                )
            except Exception as error:  # noqa: BLE001 - any failure of one mail is recorded, never lost
                record_failure(engine=engine, settings=settings, mail=mail, error=error, now=_now())
                if isinstance(error, TransportUnavailable):
                    for left in mails[index + 1 :]:
                        record_failure(engine=engine, settings=settings, mail=left, error=error, now=_now())
                    return
                continue
            record_sent(engine=engine, mail_id=mail.id, now=_now())
            MAIL_SENT.labels(mail.kind).inc()
    finally:
        transport.close()


def _now() -> datetime:
    return datetime.now(UTC)


class MailSender:
    """The sender thread of one worker: `start()` in the app's lifespan, `stop()` on shutdown, `wake()` to look now."""

    def __init__(self, *, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._bell = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mail-sender", daemon=True)

    def start(self) -> None:
        logger.info("mail: sending through %s", build_transport(self._settings).describe())
        register_sender(self)
        self._thread.start()

    def wake(self) -> None:
        self._bell.set()

    def stop(self) -> None:
        """Finishes the mail in hand (at most the SMTP timeout), hands back the rest of the batch, and ends."""
        unregister_sender(self)
        self._stopping.set()
        self._bell.set()
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_SECONDS)
        self._engine.dispose()

    def _run(self) -> None:
        # Start-up looks once for mails left by earlier processes; after that only a bell or a known time wakes it.
        next_due: datetime | None = _now()
        database_retry = DATABASE_RETRY_SECONDS
        while not self._stopping.is_set():
            timeout = None if next_due is None else max((next_due - _now()).total_seconds(), 0.0)
            self._bell.wait(timeout)
            if self._stopping.is_set():
                return
            self._bell.clear()
            try:
                self._send_due_mails()
                next_due = earliest_pending(engine=self._engine)
                database_retry = DATABASE_RETRY_SECONDS
            except SQLAlchemyError as error:
                log_database_failure(error, engine=self._engine, where="mail sender")
                next_due = _now() + timedelta(seconds=database_retry)
                database_retry = min(database_retry * 2, DATABASE_RETRY_MAX_SECONDS)
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                logger.exception("mail sender: unexpected failure; trying again shortly")
                next_due = _now() + timedelta(seconds=database_retry)

    def _send_due_mails(self) -> None:
        while not self._stopping.is_set():
            mails = claim_due_mails(engine=self._engine, settings=self._settings, now=_now())
            if mails:
                deliver_batch(engine=self._engine, settings=self._settings, mails=mails, stopping=self._stopping)
            if len(mails) < BATCH_SIZE:
                return


def start_mail_sender(settings: Settings) -> MailSender | None:
    """The worker's sender on a one-connection engine of its own (None when MAIL_SENDER_ENABLED is false).

    Its own engine: the request pool is sized to the request threads, and a sender waiting for one of their
    connections (or holding one) would cost requests.
    """
    if not settings.mail_sender_enabled:
        return None
    sender = MailSender(
        settings=settings,
        engine=build_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})),
    )
    sender.start()
    return sender
