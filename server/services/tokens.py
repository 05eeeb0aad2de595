"""API tokens (random, shown once, stored as sha256, optionally expiring) and the dashboard's server-side
sessions (`web_sessions`): the cookie names a session row, so logging out, the session's expiry or
revoking its token ends it, even for a copy of the cookie taken earlier."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.core.models import ApiToken, WebSession, utcnow

TOKEN_PREFIX = "obow_"
# A token's last use is written at most this often: every authenticated read would otherwise be a
# write to one row, which concurrent requests queue up on (PostgreSQL row lock).
LAST_USED_EVERY_S = 60.0
_INT32_MAX = 2**31 - 1
_SESSION_SECRET_CHARS = 43  # secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(session: Session, name: str, expires_in_days: float | None = None) -> str:
    """A new token; with `expires_in_days` it is refused from then on (as if revoked)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    session.add(ApiToken(name=name[:100], token_hash=hash_token(token), revoked=False, expires_at=expires))
    session.commit()
    return token


def usable(row: ApiToken | None, now: datetime | None = None) -> bool:
    """Not revoked and not expired."""
    if row is None or row.revoked:
        return False
    return row.expires_at is None or row.expires_at > (now or utcnow())


def verify_token(session: Session, token: str) -> ApiToken | None:
    """The token's row if it is usable, else None. Records its last use (at most once a minute)."""
    found = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    now = utcnow()
    if not usable(found, now):
        return None
    if found.last_used_at is None or (now - found.last_used_at).total_seconds() >= LAST_USED_EVERY_S:
        found.last_used_at = now
        session.commit()
    return found


def revoke_token(session: Session, token_id: int) -> ApiToken | None:
    """Revoke the token and end every session logged in with it; None if there is no such token."""
    row = session.get(ApiToken, token_id) if 1 <= token_id <= _INT32_MAX else None
    if row is None:
        return None
    row.revoked = True
    session.execute(
        update(WebSession)
        .where(WebSession.token_id == token_id, WebSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
    session.commit()
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)).all())


# -- dashboard sessions -------------------------------------------------------------------------------------
def _session_hash(secret_key: str, session_secret: str) -> str:
    """Keyed with the lab's secret key: rotating OBOW_LAB_SECRET_KEY ends every session, and a database
    dump alone does not let anyone forge a cookie."""
    return hmac.new(secret_key.encode(), b"session:" + session_secret.encode(), hashlib.sha256).hexdigest()


def start_session(session: Session, secret_key: str, token_row: ApiToken, hours: float) -> str:
    """A new session for `token_row`; returns the cookie value `<session id>.<secret>` (only a keyed
    hash of the secret is stored). It ends after `hours`, or earlier when its token expires."""
    secret = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(hours=hours)
    if token_row.expires_at is not None:
        expires = min(expires, token_row.expires_at)
    row = WebSession(token_id=token_row.id, secret_hash=_session_hash(secret_key, secret), expires_at=expires)
    session.add(row)
    session.commit()
    return f"{row.id}.{secret}"


def _parse_cookie(cookie: str | None) -> tuple[int, str] | None:
    """`<id>.<secret>` with an ASCII id that fits the column and a secret of the length we issue; any
    other value (an oversized id, non-ASCII digits, junk) is no session, never a database error."""
    if not cookie or len(cookie) > 64 or "." not in cookie:
        return None
    body, secret = cookie.split(".", 1)
    if not (body.isascii() and body.isdigit() and len(body) <= 10) or len(secret) != _SESSION_SECRET_CHARS:
        return None
    session_id = int(body)
    if not 1 <= session_id <= _INT32_MAX:
        return None
    return session_id, secret


@dataclass(frozen=True)
class LoggedIn:
    token: ApiToken
    session_id: int


def session_login(session: Session, secret_key: str, cookie: str | None) -> LoggedIn | None:
    """The live session a cookie names: not ended, not expired, its token usable; else None."""
    parsed = _parse_cookie(cookie)
    if parsed is None:
        return None
    session_id, secret = parsed
    row = session.get(WebSession, session_id)
    now = utcnow()
    if row is None or row.ended_at is not None or row.expires_at <= now:
        return None
    if not hmac.compare_digest(row.secret_hash, _session_hash(secret_key, secret)):
        return None
    token = session.get(ApiToken, row.token_id)
    return LoggedIn(token, session_id) if usable(token, now) else None


def end_session(session: Session, secret_key: str, cookie: str | None) -> bool:
    """Log out: the session row is ended, so the cookie (and every copy of it) is nobody from now on."""
    found = session_login(session, secret_key, cookie)
    if found is None:
        return False
    session.execute(update(WebSession).where(WebSession.id == found.session_id).values(ended_at=utcnow()))
    session.commit()
    return True


def session_token(session: Session, secret_key: str, cookie: str | None) -> ApiToken | None:
    found = session_login(session, secret_key, cookie)
    return found.token if found is not None else None


# -- CSRF ---------------------------------------------------------------------------------------------------
def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def csrf_token(secret: str, cookie: str) -> str:
    return _sign(secret, "csrf:" + cookie)


def csrf_ok(secret: str, cookie: str | None, token: str | None) -> bool:
    """Compared as bytes: a header may carry any Latin-1 character, and comparing non-ASCII str raises."""
    if not (cookie and token):
        return False
    return hmac.compare_digest(csrf_token(secret, cookie).encode(), token.encode("utf-8", "surrogatepass"))
