"""`/healthz` (the process is up) and `/readyz` (the database answers), the same on both services."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from shared.database import database_answers
from shared.errors import DATABASE_RETRY_AFTER_SECONDS, documented_errors

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is up")
# HEAD too: some load balancers probe with it.
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers", responses=documented_errors(503))
def readyz(request: Request) -> JSONResponse:
    try:
        database_answers(request.app.state.engine)
    except SQLAlchemyError as error:
        return JSONResponse(
            {"detail": "Database unavailable", "checks": {"database": f"failing: {type(error).__name__}"}},
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    return JSONResponse({"status": "ok", "checks": {"database": "ok"}})
