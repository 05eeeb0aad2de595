"""The Celery app. Importing it is cheap (no torch, no tasks): the API imports it only to send tasks
by name; the tasks module is loaded by worker processes alone (`include`)."""

from __future__ import annotations

import uuid

from celery import Celery

RUN_TASK = "obow.run"
QUEUES = ("gpu", "cpu")
# Longer than any run: Redis would otherwise hand an unacknowledged long run to a second worker.
# Lost workers are found by heartbeats instead (the API's sweeper re-queues their runs).
VISIBILITY_TIMEOUT_S = 30 * 24 * 3600


def make_celery(broker_url: str) -> Celery:
    app = Celery("obow_lab", broker=broker_url, include=["worker.tasks"])
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


def send_run(app: Celery, run_id: int, queue: str, retry: bool = False) -> str:
    """Send a run's message by task name; its task id names the run, so a broker's contents can be
    matched with the lab's rows (redelivery). `retry`: Celery's publish retries (the API fails fast)."""
    task_id = f"run-{run_id}-{uuid.uuid4().hex[:12]}"
    app.send_task(RUN_TASK, args=[run_id], queue=queue, task_id=task_id, retry=retry)
    return task_id


def _default_app() -> Celery:
    from server.settings import Settings

    return make_celery(Settings().celery_broker_url)


# `celery -A worker.celery_app worker` and `obow lab worker` use this one, configured from the env.
app = _default_app()
