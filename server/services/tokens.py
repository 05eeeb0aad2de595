"""API tokens: random, shown once, stored as sha256; and the signed session cookie of the dashboard."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core.models import ApiToken, utcnow

TOKEN_PREFIX = "obow_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name[:100], token_hash=hash_token(token), revoked=False))
    session.commit()
    return token


def verify_token(session: Session, token: str) -> ApiToken | None:
    found = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked.is_(False))
    ).first()
    if found is not None:
        found.last_used_at = utcnow()
        session.commit()
    return found


def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_cookie(secret: str, token_row: ApiToken) -> str:
    """`<token id>.<signature>`: the signature also covers the token's hash, so revoking the token
    (or rotating the secret) ends the session."""
    body = f"{token_row.id}"
    return f"{body}.{_sign(secret, body + ':' + token_row.token_hash)}"


def session_token(session: Session, secret: str, cookie: str | None) -> ApiToken | None:
    if not cookie or "." not in cookie:
        return None
    body, signature = cookie.split(".", 1)
    if not body.isdigit():
        return None
    row = session.get(ApiToken, int(body))
    if row is None or row.revoked:
        return None
    if not hmac.compare_digest(signature, _sign(secret, body + ":" + row.token_hash)):
        return None
    return row


def csrf_token(secret: str, cookie: str) -> str:
    return _sign(secret, "csrf:" + cookie)


def csrf_ok(secret: str, cookie: str | None, token: str | None) -> bool:
    return bool(cookie and token) and hmac.compare_digest(csrf_token(secret, cookie), token)
