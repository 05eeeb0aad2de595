"""The queue contract between the API and the workers: the Celery app definition, the task name,
routing, sending a run by name, and asking the broker which messages it still holds.

Torch-free and task-free: the API imports it to send runs; `worker.celery_app` builds its app with the
same `make_celery` and adds the task module (`include`), so the server never imports `worker/`."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterable, Sequence

from celery import Celery

from server.core.models import Run

RUN_TASK = "obow.run"
QUEUES = ("gpu", "cpu")
# Longer than any run: Redis would otherwise hand an unacknowledged long run to a second worker.
# Lost workers are found by heartbeats instead (the API's sweeper re-queues their runs).
VISIBILITY_TIMEOUT_S = 30 * 24 * 3600


def make_celery(broker_url: str, include: Sequence[str] = ()) -> Celery:
    """The one Celery configuration of the lab; workers pass their task module in `include`."""
    app = Celery("obow_lab", broker=broker_url, include=list(include))
    app.conf.update(
        task_acks_late=True,  # a run is acknowledged when it ends, so a dead worker's run is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one run at a time per worker process
        task_ignore_result=True,  # results live in the lab's database
        task_default_queue="gpu",
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if broker_url.startswith(("redis://", "rediss://")):
        app.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return app


def prepare_broker(broker_url: str, queues: Iterable[str] = QUEUES, attempts: int = 20) -> None:
    """Create the embedded SQLite broker's tables and queue rows before any process relies on them.

    kombu's SQLAlchemy transport creates both on first use, without guarding against another process
    doing the same: a worker and the API (or two workers) starting on a new `broker.db` at once lose to
    "table kombu_queue already exists" (a failed send) or a duplicate queue row, an IntegrityError that
    kills the Celery worker ("Unrecoverable error") and leaves runs queued. The loser of such a race
    retries after a short random pause; once both exist every later use only reads them. Other brokers
    (Redis) create queues atomically: nothing to do.
    """
    if not broker_url.startswith("sqla+"):
        return
    from kombu import Connection
    from sqlalchemy.exc import DBAPIError

    for attempt in range(attempts):
        try:
            with Connection(broker_url) as connection:
                channel = connection.default_channel
                for queue in queues:
                    channel.queue_declare(queue=queue)
            return
        except DBAPIError:  # another process won the race, or held the database's lock
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 + random.random() * 0.2)


def send_run(app: Celery, run_id: int, queue: str, retry: bool = False) -> str:
    """Send a run's message by task name; its task id names the run, so a broker's contents can be
    matched with the lab's rows (redelivery). `retry`: Celery's publish retries (the API fails fast)."""
    task_id = f"run-{run_id}-{uuid.uuid4().hex[:12]}"
    app.send_task(RUN_TASK, args=[run_id], queue=queue, task_id=task_id, retry=retry)
    return task_id

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
            prepare_broker(self._broker_url)
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
