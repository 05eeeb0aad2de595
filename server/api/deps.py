"""Request dependencies: the database session, settings, the enqueuer and authentication.

Everything that changes state needs either `Authorization: Bearer <token>` (scripts, the client) or
the dashboard's session cookie together with its CSRF token in the `X-CSRF-Token` header. Reads need
the token or the session (no CSRF token: SameSite=Strict keeps the cookie off other sites' requests),
unless `OBOW_LAB_PUBLIC_READ=1`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from fastapi import Depends, HTTPException, Path, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from server.core.models import ApiToken
from server.core.settings import Settings
from server.core.text import clean_text, is_clean
from server.schemas import INT32_MAX
from server.services import tokens
from server.services.runs import Enqueue
from server.services.throttle import LoginThrottle

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


@dataclass(frozen=True)
class Credentials:
    """Who sent the request: a bearer token, or a dashboard session (then `cookie` is its cookie)."""

    token: ApiToken
    cookie: str | None = None


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def get_throttle(request: Request) -> LoginThrottle:
    return request.app.state.login_throttle


def check_throttle(throttle: LoginThrottle, address: str) -> None:
    """429 with Retry-After while the address is locked out after failed logins."""
    wait = throttle.retry_after(address)
    if wait is not None:
        raise HTTPException(
            429, f"too many failed logins from this address: try again in {wait} s", {"Retry-After": str(wait)}
        )


def authenticate(request: Request) -> Credentials | None:
    """The request's credentials, or None if it has none; a malformed, unknown, revoked or expired bearer
    token is a 401 (a failure for the login back-off). Reads the database in a session of its own,
    closed before the route runs, so a long SSE stream holds no connection for it. FastAPI caches it
    per request, so a route needing both a reader and a writer checks the token once."""
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPException(401, "Authorization must be 'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        throttle, address = get_throttle(request), client_address(request)
        check_throttle(throttle, address)
        with request.app.state.sessionmaker() as db:
            row = tokens.verify_token(db, value.strip())
        if row is None:
            throttle.failed(address)
            raise HTTPException(401, "unknown, revoked or expired API token", {"WWW-Authenticate": "Bearer"})
        throttle.succeeded(address)
        return Credentials(row)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        with request.app.state.sessionmaker() as db:
            found = tokens.session_login(db, settings.secret_key, cookie)
        if found is not None:
            return Credentials(found.token, cookie)
    return None


CredentialsDep = Annotated[Credentials | None, Depends(authenticate)]


def require_reader(credentials: CredentialsDep, settings: SettingsDep) -> ApiToken | None:
    """Reads need a token or a session, like writes (a page of another site must not read runs, logs or
    checkpoints through the user's browser); `OBOW_LAB_PUBLIC_READ=1` opens them to anyone."""
    if credentials is not None:
        return credentials.token
    if settings.public_read:
        return None
    raise _unauthenticated()


def _unauthenticated() -> HTTPException:
    return HTTPException(
        401,
        "this route needs 'Authorization: Bearer <token>' (create one with `obow lab token create`) or "
        "a login on the dashboard",
        {"WWW-Authenticate": "Bearer"},
    )


def require_token(request: Request, credentials: CredentialsDep, settings: SettingsDep) -> ApiToken:
    if credentials is not None and credentials.cookie is None:
        return credentials.token
    if credentials is not None:
        if not tokens.csrf_ok(settings.secret_key, credentials.cookie, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return credentials.token
    raise _unauthenticated()


# Routers that serve data put this in their `dependencies`: a route added later is covered too.
READ_AUTH = Depends(require_reader)
TokenDep = Annotated[ApiToken, Depends(require_token)]
# A run's or an artifact's id in a path: a positive 32-bit integer like the column it is looked up in.
IdPath = Annotated[int, Path(ge=1, le=INT32_MAX)]


def _not_json(text: str) -> NoReturn:
    raise json.JSONDecodeError(f"{text} is not a JSON number", text, 0)


def _finite_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _not_json(text)


def _bad_text(value: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """The location of the first string (key or value, at any depth) holding NUL or a lone surrogate."""
    if isinstance(value, str):
        return None if is_clean(value) else loc
    if isinstance(value, dict):
        for key, item in value.items():
            found = _bad_text(key, (*loc, clean_text(key))) or _bad_text(item, (*loc, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _bad_text(item, (*loc, index))
            if found is not None:
                return found
    return None


class StrictJsonRequest(Request):
    """A request whose JSON body is strict JSON. Python's parser also reads NaN, Infinity and 1e999 (as
    inf), which neither PostgreSQL's json columns nor a JSON response can hold: refused as invalid JSON
    (422), instead of a 500 when the run is stored, or when a 422 echoing the value is encoded.

    Text must be valid Unicode without NUL: bytes that are not UTF-8, and `\\ud800`-style escapes that
    JSON allows but that decode to a lone surrogate, can be neither stored (SQLite, PostgreSQL) nor
    encoded in any answer (a 422 echoing them would itself fail). They are refused here, before any
    route code runs, with a 422 naming where they are (the location shows them as U+FFFD)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise json.JSONDecodeError("the body is not valid UTF-8", "", err.start) from None
            parsed = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
            where = _bad_text(parsed, ("body",))
            if where is not None:
                raise HTTPException(
                    422,
                    [{"loc": [clean_text(part) if isinstance(part, str) else part for part in where],
                      "msg": "text must be valid Unicode without NUL bytes (a lone surrogate such as "
                      "\\ud800, or \\u0000)", "type": "string_unicode"}],
                )
            self._json = parsed
        return self._json


class StrictJsonRoute(APIRoute):
    """Routes that take a JSON body read it through `StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
