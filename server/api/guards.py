"""ASGI middleware in front of every route: the Host header check and the request body cap.

Both answer before any route, dependency or body parser runs, so a refused request reads nothing from
the database and stores nothing.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _answer(send: Send, status: int, detail: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def host_name(header: str) -> str:
    """The name part of a Host header: `[::1]:8000` -> `::1`, `Example.org:80` -> `example.org`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class TrustedHost:
    """400 for a Host header naming none of the allowed hosts (`OBOW_LAB_ALLOWED_HOSTS`).

    DNS rebinding: a page of evil.example whose name is made to resolve to 127.0.0.1 reaches this
    server as the same origin, but its requests carry `Host: evil.example`. IP literals are always
    allowed: a browser sends one only for a page loaded from that very address, which no other site
    can rename. `*` allows every host."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {name.strip().lower().strip("[]") for name in allowed}
        self.any = "*" in self.allowed

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        if not header:
            return False
        name = host_name(header)
        return name in self.allowed or _is_ip_literal(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.any:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if self.allows(host):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _answer(send, 400, "invalid Host header: not one of this lab's names (OBOW_LAB_ALLOWED_HOSTS)")


_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimit:
    """413 for a request body over `max_bytes`, before the route parses it: by its Content-Length when
    declared, else (chunked) once the bytes read so far pass the cap. The body, at most `max_bytes`, is
    read here and handed on whole. Paths in `exempt` (the upload route, which streams to disk under its
    own cap) pass untouched, and so do GET, HEAD and OPTIONS: no route reads their body (the server
    discards it unread)."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Iterable[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    def _too_large(self) -> str:
        return f"request body is larger than the {self.max_bytes}-byte limit (OBOW_LAB_MAX_BODY_KB)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (GET, HEAD, SSE): nothing to read
            return
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.max_bytes):
            await _answer(send, 413, self._too_large(), [(b"connection", b"close")])
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _answer(send, 413, self._too_large(), [(b"connection", b"close")])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)
