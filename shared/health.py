"""`/healthz` (the process is up) and `/readyz` (the database answers), the same on both services.

`/readyz` checks on a thread and a database connection of its own, so a burst that fills the request threads
and the connection pool cannot make every pod unready at once; it answers within READY_TIMEOUT_SECONDS.
"""

import asyncio
import concurrent.futures
import threading

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.database import database_answers
from shared.database_failures import log_database_failure, log_database_timeout
from shared.errors import DATABASE_RETRY_AFTER_SECONDS, documented_errors

# Below the probes' timeoutSeconds (deploy/k8s: 3 s), so a probe gets a 503 rather than a timeout.
READY_TIMEOUT_SECONDS = 2.0

router = APIRouter(tags=["health"])


class ReadinessCheck:
    """One `SELECT 1` at a time on a thread of its own; probes arriving while it runs wait for that same one.

    So a flood of `/readyz` costs the database one check at a time, and never takes a request thread.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="readiness")
        self._lock = threading.Lock()
        self._running: concurrent.futures.Future[bool] | None = None

    def _check(self) -> bool:
        try:
            return database_answers(self._engine)
        except SQLAlchemyError as error:
            log_database_failure(error, engine=self._engine, where="/readyz")
            return False

    async def database_answers(self) -> bool:
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._thread.submit(self._check)
            running = self._running
        try:
            # shield: a probe that gives up must not cancel the check other probes wait for.
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), READY_TIMEOUT_SECONDS)
        except TimeoutError:
            log_database_timeout(seconds=READY_TIMEOUT_SECONDS, where="/readyz")
            return False

    def dispose(self) -> None:
        # The thread stays: an app's lifespan may run again (tests), and an idle thread costs nothing.
        self._engine.dispose()


@router.get("/healthz", summary="Liveness: the process is up")
# HEAD too: some load balancers probe with it.
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers", responses=documented_errors(503))
async def readyz(request: Request) -> JSONResponse:
    if not await request.app.state.readiness.database_answers():
        # The cause is in the log (shared.database_failures); callers learn only that it failed.
        return JSONResponse(
            {"detail": "Database unavailable", "checks": {"database": "failing"}},
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    return JSONResponse({"status": "ok", "checks": {"database": "ok"}})
