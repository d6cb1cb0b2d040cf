"""A mail catcher for development and tests: an SMTP server (aiosmtpd) that keeps what it receives, and a web inbox.

    python deploy/mailcatcher.py [--host 127.0.0.1] [--smtp-port 1025] [--http-port 8025] [--drop-first N]

The inbox: `GET /` (a page a person reads), `GET /messages` (JSON: every message, raw text included),
`GET /messages/<n>` (one message as text), `DELETE /messages` (empty it). Messages live in memory only.
`--drop-first N` makes it misbehave for tests: the first N messages are received and then the connection is
dropped before the reply, so the sender never learns they arrived (and they are not kept).
Nothing here is imported by the services; it needs aiosmtpd (requirements-dev.lock).
"""

import argparse
import html
import json
import signal
import threading
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


class Inbox:
    def __init__(self, *, drop_first: int) -> None:
        self._lock = threading.Lock()
        self._messages: list[dict] = []
        self._drops_left = drop_first

    def take_drop(self) -> bool:
        with self._lock:
            if self._drops_left <= 0:
                return False
            self._drops_left -= 1
            return True

    def add(self, *, mail_from: str, rcpt_tos: list[str], content: bytes) -> None:
        parsed = message_from_bytes(content, policy=policy.default)
        with self._lock:
            self._messages.append(
                {
                    "id": len(self._messages) + 1,
                    "received_at": datetime.now(UTC).isoformat(),
                    "mail_from": mail_from,
                    "rcpt_tos": rcpt_tos,
                    "subject": str(parsed["Subject"] or ""),
                    "message_id": str(parsed["Message-ID"] or ""),
                    "raw": content.decode("utf-8", "replace"),
                }
            )

    def all(self) -> list[dict]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()


class KeepingHandler:
    """aiosmtpd's DATA hook: keep the message, or drop the connection before the reply while drops are left."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802 (aiosmtpd's hook name)
        if self._inbox.take_drop():
            server.transport.abort()
            return "451 dropped"
        self._inbox.add(mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos), content=envelope.content)
        return "250 Message accepted for delivery"


def inbox_handler(inbox: Inbox) -> type[BaseHTTPRequestHandler]:
    class InboxHandler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
            pass

        def _send(self, status: int, body: str, content_type: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's hook name
            messages = inbox.all()
            if self.path == "/messages":
                self._send(200, json.dumps(messages), "application/json")
            elif self.path.startswith("/messages/") and self.path[len("/messages/") :].isdigit():
                number = int(self.path[len("/messages/") :])
                found = [message for message in messages if message["id"] == number]
                if found:
                    self._send(200, found[0]["raw"], "text/plain; charset=utf-8")
                else:
                    self._send(404, "no such message\n", "text/plain; charset=utf-8")
            elif self.path == "/":
                rows = "".join(
                    f"<tr><td>{m['id']}</td><td>{html.escape(m['received_at'])}</td>"
                    f"<td>{html.escape(', '.join(m['rcpt_tos']))}</td>"
                    f'<td><a href="/messages/{m["id"]}">{html.escape(m["subject"])}</a></td></tr>'
                    for m in reversed(messages)
                )
                page = (
                    "<!doctype html><title>Mail catcher</title><h1>Mail catcher</h1>"
                    f'<p>{len(messages)} message(s); newest first. JSON: <a href="/messages">/messages</a></p>'
                    "<table border=1 cellpadding=4><tr><th>#</th><th>received</th><th>to</th><th>subject</th></tr>"
                    f"{rows}</table>"
                )
                self._send(200, page, "text/html; charset=utf-8")
            else:
                self._send(404, "not found\n", "text/plain; charset=utf-8")

        def do_DELETE(self) -> None:  # noqa: N802 - the stdlib's hook name
            if self.path == "/messages":
                inbox.clear()
                self._send(200, "{}", "application/json")
            else:
                self._send(404, "not found\n", "text/plain; charset=utf-8")

    return InboxHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--drop-first", type=int, default=0)
    arguments = parser.parse_args()

    inbox = Inbox(drop_first=arguments.drop_first)
    smtp = Controller(KeepingHandler(inbox), hostname=arguments.host, port=arguments.smtp_port)
    smtp.start()
    web = ThreadingHTTPServer((arguments.host, arguments.http_port), inbox_handler(inbox))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    print(
        f"mail catcher: SMTP on {arguments.host}:{arguments.smtp_port}, inbox http://{arguments.host}:{arguments.http_port}/",
        flush=True,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    while not stopped.is_set():
        time.sleep(0.2)
    web.shutdown()
    smtp.stop()


if __name__ == "__main__":
    main()
