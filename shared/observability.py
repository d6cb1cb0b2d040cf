"""Logs, request ids and Prometheus metrics for both services.

One JSON log line per request on stdout (method, route template, status, duration, request id, user id),
never a body, a query string or a header value. Metrics work across gunicorn workers through
prometheus_client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (deploy/gunicorn.conf.py does it).
"""

import atexit
import collections
import contextvars
import json
import logging
import os
import random
import re
import sys
import threading
import time
from typing import Any, TextIO

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import Engine, event
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
# The pid of the worker that answered: matches a response with gunicorn's lines about that worker (a timeout,
# a restart), and lets a test see that its requests reached every worker.
WORKER_HEADER = b"x-worker"
# Anything else a client sends as a request id is replaced, so logs cannot be forged or split.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Log lines waiting for stdout, at most: about 5 MB of request lines, several seconds of a worker's requests.
LOG_QUEUE_LINES = 20_000
LOG_WRITE_INTERVAL_SECONDS = 0.1
LOG_FLUSH_SECONDS = 5.0
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# What the current request has learned about itself; a dict so code in worker threads can add to it.
request_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request_context", default=None)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LOG_LINES_DROPPED = Counter("log_lines_dropped_total", "Log lines dropped because stdout could not keep up")
LOGIN_ATTEMPTS = Counter("auth_login_attempts_total", "Password logins by outcome", ["outcome"])
REFRESH_REUSE = Counter("auth_refresh_token_reuse_detected_total", "Retired refresh tokens presented again")
RETENTION_ROWS_DELETED = Counter("retention_rows_deleted_total", "Rows deleted past their retention", ["table"])
DB_POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Database connections checked out of the pool",
    ["service"],
    multiprocess_mode="livesum",
)


def set_request_user(user_id: int) -> None:
    context = request_context.get()
    if context is not None:
        context["user_id"] = user_id


# Built once: `json.dumps(..., default=str)` builds a new encoder on every call.
_JSON_ENCODER = json.JSONEncoder(default=str)
# The last second a timestamp was made for, and its text: formatting the date and time once a second, not per line.
_timestamp_second: tuple[int, str] = (-1, "")


def log_timestamp(seconds: float) -> str:
    """`seconds` since the epoch as ISO 8601 in UTC with milliseconds, ending in "Z" whatever the machine's zone."""
    global _timestamp_second
    whole = int(seconds)
    second, text = _timestamp_second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _timestamp_second = (whole, text)
    return f"{text}.{int((seconds - whole) * 1000):03d}Z"


def log_entry(*, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
    """One log line's fields in their order: when, level, logger, message, the request's id if in one, the rest."""
    entry: dict[str, Any] = {"time": log_timestamp(created), "level": level, "logger": logger, "message": message}
    context = request_context.get()
    if context is not None:
        entry["request_id"] = context["request_id"]
    entry.update(fields)
    return entry


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = log_entry(
            created=record.created,
            level=record.levelname.lower(),
            logger=record.name,
            message=record.getMessage(),
            fields=getattr(record, "fields", {}),
        )
        if record.exc_info:
            # The exception type and where it came from; messages may hold user input, so no text.
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return _JSON_ENCODER.encode(entry)


class _LineWriter:
    """Writes log lines to `stream` in batches, from a thread of its own that wakes every LOG_WRITE_INTERVAL_SECONDS.

    Lines wait in a deque, and adding one wakes nobody. A `queue.Queue` wakes its reader for every line: under
    load that wake-up (a futex call and a hand-over of the GIL) cost a worker more than formatting the line.
    """

    def __init__(self, stream: TextIO, *, max_lines: int) -> None:
        self._stream = stream
        self._max_lines = max_lines
        self._lines: collections.deque[str] = collections.deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._write_until_stopped, name="log-writer", daemon=True)
        self._thread.start()

    def add(self, line: str) -> None:
        # Threads may race past the check together: the bound is a few lines loose, never missing.
        if len(self._lines) >= self._max_lines:
            LOG_LINES_DROPPED.inc()
            return
        self._lines.append(line)

    def _write_until_stopped(self) -> None:
        while not self._stopping.wait(LOG_WRITE_INTERVAL_SECONDS):
            self._write_waiting_lines()
        self._write_waiting_lines()

    def _write_waiting_lines(self) -> None:
        batch = [self._lines.popleft() for _ in range(len(self._lines))]
        if not batch:
            return
        try:
            self._stream.write("\n".join(batch) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            # stdout closed or gone: nothing is left to tell.
            LOG_LINES_DROPPED.inc(len(batch))

    def stop(self) -> None:
        """Writes what is waiting; bounded, like every wait here: a stdout that never reads must not hold the exit."""
        self._stopping.set()
        self._thread.join(LOG_FLUSH_SECONDS)


class _LineWriterHandler(logging.Handler):
    """Formats a record in the thread that logs it (where the request id is) and hands the line to the writer."""

    def __init__(self, writer: _LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.add(self.format(record))
        except Exception:  # noqa: BLE001
            self.handleError(record)


_log_writer: _LineWriter | None = None


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout for every logger, written by a thread of their own; called once per process.

    A write to stdout blocks whenever its reader falls behind (a full pipe to the container runtime, a slow
    disk under a log file); done on the event loop, that would stall every request of the worker. Lines wait
    instead, at most LOG_QUEUE_LINES of them besides the batch being written; beyond that they are dropped
    and counted (log_lines_dropped_total) rather than block.
    """
    global _log_writer
    previous_writer, _log_writer = _log_writer, _LineWriter(sys.stdout, max_lines=LOG_QUEUE_LINES)
    handler = _LineWriterHandler(_log_writer)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Only now, so that no line logged in between is lost.
    if previous_writer is not None:
        previous_writer.stop()
    root.setLevel(level.upper())
    # The JSON lines name no thread, process or source line: spare every record finding them out (the
    # logging HOWTO's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Replaced by the one line per request below; uvicorn's would log raw paths with query strings.
    logging.getLogger("uvicorn.access").disabled = True


def flush_logs() -> None:
    """Writes the waiting lines (within LOG_FLUSH_SECONDS); for the end of a process."""
    global _log_writer
    if _log_writer is not None:
        _log_writer.stop()
        _log_writer = None


atexit.register(flush_logs)


class RequestObservabilityMiddleware:
    """Gives every request an id (X-Request-ID), logs one line for it and counts it in the metrics."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service
        self.logger = logging.getLogger(f"{service}.access")
        # Starlette builds its middleware on the first request, so in the worker that serves it (after the fork).
        self._worker = (WORKER_HEADER, str(os.getpid()).encode())
        # Bounded: route templates, KNOWN_METHODS plus "OTHER", and the statuses the services answer with.
        self._metric_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id_from(scope)
        context = {"request_id": request_id}
        token = request_context.set(context)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode()),
                    self._worker,
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            # The method is the client's to choose: anything unexpected is one label value, not a new series.
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            requests_counter, latency_histogram = self._metrics_for(method, route, status)
            requests_counter.inc()
            latency_histogram.observe(duration)
            if self.logger.isEnabledFor(logging.INFO):
                self._log_request(context, method=method, route=route, status=status, duration=duration)
            # After the line: log_entry reads the request's id from the context.
            request_context.reset(token)

    def _log_request(self, context: dict[str, Any], *, method: str, route: str, status: int, duration: float) -> None:
        fields = {"method": method, "route": route, "status": status, "duration_ms": round(duration * 1000, 2)}
        if "user_id" in context:
            fields["user_id"] = context["user_id"]
        writer = _log_writer
        if writer is None:
            self.logger.info("request", extra={"fields": fields})
            return
        # The line JsonLogFormatter would make, made here: a LogRecord and the trip through the logging module
        # would cost every request more than the rest of this middleware (docs/performance.md).
        entry = log_entry(created=time.time(), level="info", logger=self.logger.name, message="request", fields=fields)
        writer.add(_JSON_ENCODER.encode(entry))

    def _metrics_for(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        # `labels()` validates and looks up its arguments on every call; the children themselves never change.
        key = (method, route, status)
        children = self._metric_children.get(key)
        if children is None:
            children = (
                HTTP_REQUESTS.labels(self.service, method, route, str(status)),
                HTTP_LATENCY.labels(self.service, method, route),
            )
            self._metric_children[key] = children
        return children


def _request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            if SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    # Not secret, only unique: the seeded Mersenne Twister (reseeded in each forked worker) instead of
    # os.urandom, a system call per request.
    return f"{random.getrandbits(128):032x}"


def track_pool_usage(engine: Engine, *, service: str) -> None:
    gauge = DB_POOL_IN_USE.labels(service)
    event.listen(engine, "checkout", lambda *_: gauge.inc())
    event.listen(engine, "checkin", lambda *_: gauge.dec())


def install_metrics_route(app: FastAPI) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics(_request: Request) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
