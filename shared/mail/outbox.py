"""Queuing a mail: an outbox row written in the caller's transaction, so the mail exists exactly when the change does.

The sender (shared.mail.sender) delivers it; a sender in this process is woken once the transaction commits.
"""

import uuid
from datetime import datetime
from email.utils import parseaddr

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from shared.mail.messages import RenderedMail
from shared.mail.wakeup import wake_local_senders
from shared.models import OutboxEmail

OUTBOX = OutboxEmail.__table__


def new_message_id(mail_from: str) -> str:
    """`<random@domain of MAIL_FROM>`: stored with the row, so every attempt of one mail carries the same id."""
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "localhost"
    return f"<{uuid.uuid4().hex}@{domain}>"


def queue_email(*, session: Session, mail: RenderedMail, recipient: str, mail_from: str, now: datetime) -> None:
    """Adds the mail to the outbox in `session`'s transaction; the caller commits it with its change."""
    session.execute(
        insert(OUTBOX).values(
            message_id=new_message_id(mail_from),
            kind=mail.kind,
            recipient=recipient,
            subject=mail.subject,
            body_text=mail.body_text,
            body_html=mail.body_html,
            created_at=now,
            next_attempt_at=now,
            attempts=0,
        )
    )
    # After the commit, not before: a sender woken earlier would not see the row yet and go back to sleep.
    if not session.info.get("wakes_mail_senders"):
        session.info["wakes_mail_senders"] = True
        event.listen(session, "after_commit", _wake_after_commit)


def _wake_after_commit(session: Session) -> None:
    wake_local_senders()
