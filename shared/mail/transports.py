"""How a mail leaves: over SMTP (stdlib smtplib, per the SMTP_* settings), or into a folder of .eml files.

A transport is opened for one batch of mails and closed after it; `deliver` raises on any failure.
"""

import logging
import os
import re
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path

from shared.settings import Settings

logger = logging.getLogger("shared.mail")
SAFE_FILE_PART = re.compile(r"[^A-Za-z0-9_.-]")


class TransportUnavailable(Exception):
    """The transport could not be reached at all: every other mail of the batch would fail the same way."""


class SmtpTransport:
    """One SMTP connection for a batch: STARTTLS, implicit TLS or plain, with a login when SMTP_USERNAME is set."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection: smtplib.SMTP | None = None

    def describe(self) -> str:
        return f"SMTP {self._settings.smtp_host}:{self._settings.smtp_port} ({self._settings.smtp_tls})"

    def _connect(self) -> smtplib.SMTP:
        settings = self._settings
        timeout = settings.smtp_timeout_seconds
        if settings.smtp_tls == "tls":
            connection = smtplib.SMTP_SSL(
                settings.smtp_host, settings.smtp_port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            connection = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
        try:
            if settings.smtp_tls == "starttls":
                connection.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                connection.login(settings.smtp_username, settings.smtp_password or "")
        except BaseException:
            connection.close()
            raise
        return connection

    def deliver(self, *, message: EmailMessage, name: str) -> None:
        if self._connection is None:
            try:
                self._connection = self._connect()
            except (OSError, smtplib.SMTPException) as error:
                raise TransportUnavailable(str(error)) from error
        try:
            self._connection.send_message(message)
        except BaseException:
            # The connection's state is unknown after a failure: the next mail starts on a fresh one.
            self.close()
            raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            connection.close()


class FolderTransport:
    """No SMTP_HOST (the local run): each mail becomes an .eml file under MAIL_DIR, which a person can open."""

    def __init__(self, settings: Settings) -> None:
        self._folder = Path(settings.mail_dir)

    def describe(self) -> str:
        return f"the folder {self._folder.resolve()} (.eml files; no SMTP_HOST)"

    def deliver(self, *, message: EmailMessage, name: str) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        path = self._folder / f"{SAFE_FILE_PART.sub('_', name)}.eml"
        # Written aside and renamed, so nobody ever opens half a mail.
        partial = path.with_suffix(".eml.partial")
        partial.write_bytes(message.as_bytes())
        os.replace(partial, path)
        logger.info("mail written to %s", path, extra={"fields": {"mail_file": str(path)}})

    def close(self) -> None:
        pass


def build_transport(settings: Settings) -> SmtpTransport | FolderTransport:
    return SmtpTransport(settings) if settings.smtp_host else FolderTransport(settings)
