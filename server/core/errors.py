"""Domain errors raised by services; `server.app` turns each into an HTTP status with a clear body."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Forbidden(ServiceError):
    status_code = 403


class TooLarge(ServiceError):
    status_code = 413


class Unavailable(ServiceError):
    status_code = 503


class Invalid(ServiceError):
    """422 with one entry per bad field, in FastAPI's own `detail` shape."""

    status_code = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> Invalid:
    return Invalid([{"loc": list(loc), "msg": msg, "type": kind}])
