"""ASGI middleware both services install: the raw request body checks, and CORS for allowed origins only.

Requests framed twice (Content-Length and Transfer-Encoding) get 400, bodies over the limit get 413, and
bodies that are not UTF-8 where UTF-8 is required get 422, before any route runs. Form parsing would
otherwise turn invalid UTF-8 into replacement characters silently.
"""

import json
from urllib.parse import unquote_to_bytes

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UTF8_CONTENT_TYPES = (b"application/json", b"application/x-www-form-urlencoded")
# A refused body is read (up to this much) before the 413: a server closing with unread bytes resets the connection,
# and a proxy still sending them (nginx) then answers 502 instead of passing the 413 on.
DRAIN_LIMIT_BYTES = 1 << 20


class RequestBodyGuardMiddleware:
    """Reads the body (at most the limit plus one byte) first, checks it, then replays it to the app.

    Reading first means an over-long chunked body is refused before any of it is acted on.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"content-length" in headers and b"transfer-encoding" in headers:
            # Both framings at once is the shape of request smuggling (RFC 9112 6.3): refuse and close.
            await _send_error(send, 400, "Content-Length and Transfer-Encoding together are not allowed")
            return
        if b"content-length" not in headers and b"transfer-encoding" not in headers:
            # Neither framing header: the request has no body (RFC 9112 6.3), so there is nothing to check.
            await self.app(scope, receive, send)
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_body_bytes:
            if declared <= DRAIN_LIMIT_BYTES:
                await _drain(receive)
            await _send_error(send, 413, f"Request body larger than {self.max_body_bytes} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                if message.get("more_body", False):
                    await _drain(receive)
                await _send_error(send, 413, f"Request body larger than {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not _is_valid_utf8_body(headers.get(b"content-type", b""), body):
            await _send_error(send, 422, [{"loc": ["body"], "msg": "Body is not valid UTF-8", "type": "utf8_invalid"}])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _drain(receive: Receive) -> None:
    """Reads and drops the rest of the request body, at most DRAIN_LIMIT_BYTES of it."""
    drained = 0
    while drained <= DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        drained += len(message.get("body", b""))


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    try:
        return int(headers[b"content-length"]) if b"content-length" in headers else None
    except ValueError:
        return None


def _is_valid_utf8_body(content_type: bytes, body: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    if media_type not in UTF8_CONTENT_TYPES:
        return True
    try:
        body.decode("utf-8")
        if media_type == b"application/x-www-form-urlencoded":
            for field in body.replace(b"+", b" ").replace(b"=", b"&").split(b"&"):
                unquote_to_bytes(field).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _send_error(send: Send, status: int, detail: object) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AllowedOriginsCORSMiddleware(CORSMiddleware):
    """Starlette's CORS for the allowed origins; a request from any other origin passes to the app untouched.

    Starlette answers a refused preflight with a plain-text 400 that still lists the allowed methods and headers,
    and exposes headers to refused origins: a refused origin gets no CORS header at all here, only `Vary: Origin`
    (the answer depends on the origin, so caches must keep them apart).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = Headers(scope=scope).get("origin") if scope["type"] == "http" else None
        if origin is None or self.is_allowed_origin(origin):
            await super().__call__(scope, receive, send)
            return

        async def send_with_vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_vary)
