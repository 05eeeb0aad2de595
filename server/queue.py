"""Sending runs to the workers by task name, and asking the broker which messages it still holds; the
server never imports the tasks themselves."""

from __future__ import annotations

import json
from collections.abc import Iterable

from celery import Celery

from server.models import Run
from worker.celery_app import QUEUES, make_celery, send_run

# kombu's Redis transport keeps a queue's messages in one list per priority step ("gpu", "gpu\x06\x163",
# ...) and messages delivered but not yet acknowledged (acks_late: a run in progress) in one hash
PRIORITY_SEPARATOR = "\x06\x16"
UNACKED_HASH = "unacked"


class CeleryEnqueuer:
    def __init__(self, broker_url: str) -> None:
        self._broker_url = broker_url
        self._app: Celery | None = None

    def __call__(self, run: Run) -> str:
        if self._app is None:
            self._app = make_celery(self._broker_url)
        return send_run(self._app, run.id, run.queue)

    def pending_task_ids(self, queues: Iterable[str] = QUEUES) -> set[str] | None:
        """Ids of the run messages the broker holds: waiting in a queue, or delivered and unacknowledged.

        Only a Redis broker is asked (None otherwise): it can forget messages (a restart without
        persistence, a failover), while the embedded SQLite transport keeps them in a file.
        Raises when the broker is unreachable, so that a caller never mistakes that for "no messages".
        """
        if not self._broker_url.startswith(("redis://", "rediss://")):
            return None
        import redis

        client = redis.Redis.from_url(self._broker_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            raw: list[bytes] = []
            for queue in queues:
                for key in [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in range(1, 10)]:
                    raw += client.lrange(key, 0, -1)
            found = {_task_id(message) for message in raw}
            found |= {_task_id(entry, unacked=True) for entry in client.hvals(UNACKED_HASH)}
        finally:
            client.close()
        return {task_id for task_id in found if task_id}


def _task_id(raw: bytes, unacked: bool = False) -> str | None:
    """A queued message is the payload itself; an unacknowledged one is [payload, exchange, routing key]."""
    try:
        payload = json.loads(raw)
        return (payload[0] if unacked else payload)["headers"]["id"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
