"""What a mail says: the subject and the plain-text and HTML bodies of each kind, from Jinja2 templates.

Also the MIME message a transport sends, built from an outbox row. Nothing here touches the database.
"""

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.models import as_utc
from shared.settings import Settings

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    # HTML bodies escape what they are given; the plain-text ones are sent as they are.
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
SUBJECTS = {
    "password_reset": "Reset your password",
    "email_verification": "Confirm your email address",
    "password_changed": "Your password was changed",
}


@dataclass(frozen=True)
class RenderedMail:
    kind: str
    subject: str
    body_text: str
    body_html: str


def render_mail(kind: str, **context: object) -> RenderedMail:
    return RenderedMail(
        kind=kind,
        subject=SUBJECTS[kind],
        body_text=TEMPLATES.get_template(f"{kind}.txt").render(**context),
        body_html=TEMPLATES.get_template(f"{kind}.html").render(**context),
    )


def link_with_token(url_template: str | None, token: str) -> str | None:
    """PASSWORD_RESET_URL / EMAIL_VERIFICATION_URL with the token put in; None when the setting is unset."""
    return url_template.replace("{token}", token) if url_template else None


def password_reset_mail(*, settings: Settings, token: str) -> RenderedMail:
    return render_mail(
        "password_reset",
        token=token,
        link=link_with_token(settings.password_reset_url, token),
        confirm_url=f"{settings.effective_auth_public_url}/password-reset/confirm",
        ttl_minutes=settings.password_reset_ttl_seconds // 60,
    )


def email_verification_mail(*, settings: Settings, token: str, username: str) -> RenderedMail:
    # The users service has no public-address setting: the local run's address, else the path alone.
    users_address = f"http://127.0.0.1:{settings.users_port}" if settings.app_env == "local" else ""
    return render_mail(
        "email_verification",
        token=token,
        username=username,
        link=link_with_token(settings.email_verification_url, token),
        confirm_url=f"{users_address}/email-verification/confirm",
        ttl_hours=max(settings.email_verification_ttl_seconds // 3600, 1),
    )


def password_changed_mail(*, username: str) -> RenderedMail:
    return render_mail("password_changed", username=username)


def mime_message(*, mail_from: str, row: object) -> EmailMessage:
    """The message of an outbox row; the same bytes on every attempt but for the transport's own headers."""
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = row.recipient
    message["Subject"] = row.subject
    message["Message-ID"] = row.message_id
    message["Date"] = format_datetime(as_utc(row.created_at))
    # 8bit, not quoted-printable: a person reading the .eml of `make run` copies links and tokens unbroken.
    message.set_content(row.body_text, cte="8bit")
    if row.body_html:
        message.add_alternative(row.body_html, subtype="html")
    return message
