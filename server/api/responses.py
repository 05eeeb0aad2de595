"""The error answers of the API, for the OpenAPI document: every status a route can return is listed
there (`tests/lab/test_auth.py` checks it against what the routes answer), so a client generated from
the document, or schemathesis' status-code check, knows them. 422 is FastAPI's own (`HTTPValidationError`,
the shape `Invalid` answers too), added by FastAPI to every route with parameters or a body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every error answer but 422 carries one readable sentence."""

    detail: str = Field(description="What went wrong, and what to do about it")


DESCRIPTIONS = {
    401: "No credentials where the route needs them, or a malformed, unknown, revoked or expired token",
    403: "A dashboard session without its CSRF token (X-CSRF-Token), or a file outside the artifact store",
    404: "No such run, artifact or preset",
    409: "The run's or sweep's state does not allow it (cancel of a finished one, retry of a run not failed/cancelled)",
    413: "The request body is over its cap (OBOW_LAB_MAX_BODY_KB; uploads: OBOW_LAB_MAX_UPLOAD_MB)",
    429: "Too many failed logins from this address: wait the Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these status codes."""
    return {code: {"model": ErrorOut, "description": DESCRIPTIONS[code]} for code in codes}


# every route behind authentication (reads included, unless OBOW_LAB_PUBLIC_READ=1)
AUTHENTICATED = errors(401, 429)
# routes that change state: a session needs its CSRF token; any body they are sent is capped
WRITE = errors(403, 413)
BODY = errors(413)  # routes that take a body
BY_ID = errors(404)  # routes with a run, artifact or preset in the path
