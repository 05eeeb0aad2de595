"""Request dependencies: the database session, settings, the enqueuer and authentication.

Everything that changes state needs either `Authorization: Bearer <token>` (scripts, the client) or
the dashboard's session cookie together with its CSRF token in the `X-CSRF-Token` header.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from server.models import ApiToken
from server.services import tokens
from server.services.runs import Enqueue
from server.settings import Settings

SESSION_COOKIE = "obow_lab_session"
CSRF_HEADER = "X-CSRF-Token"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_enqueue(request: Request) -> Enqueue:
    return request.app.state.enqueue


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Session, Depends(get_db)]
EnqueueDep = Annotated[Enqueue, Depends(get_enqueue)]


def current_session_token(request: Request, db: Session, settings: Settings) -> ApiToken | None:
    return tokens.session_token(db, settings.secret_key, request.cookies.get(SESSION_COOKIE))


def require_token(request: Request, db: DbDep, settings: SettingsDep) -> ApiToken:
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPException(401, "Authorization must be 'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        row = tokens.verify_token(db, value.strip())
        if row is None:
            raise HTTPException(401, "unknown or revoked API token", {"WWW-Authenticate": "Bearer"})
        return row
    cookie = request.cookies.get(SESSION_COOKIE)
    row = current_session_token(request, db, settings)
    if row is not None:
        if not tokens.csrf_ok(settings.secret_key, cookie, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return row
    raise HTTPException(
        401,
        "this request changes state: send 'Authorization: Bearer <token>' (create one with "
        "`obow lab token create`) or log in on the dashboard",
        {"WWW-Authenticate": "Bearer"},
    )


TokenDep = Annotated[ApiToken, Depends(require_token)]
