"""Sending runs to the workers by task name; the server never imports the tasks themselves."""

from __future__ import annotations

import uuid

from celery import Celery

from server.models import Run
from worker.celery_app import RUN_TASK, make_celery


class CeleryEnqueuer:
    def __init__(self, broker_url: str) -> None:
        self._broker_url = broker_url
        self._app: Celery | None = None

    def __call__(self, run: Run) -> str:
        if self._app is None:
            self._app = make_celery(self._broker_url)
        task_id = f"run-{run.id}-{uuid.uuid4().hex[:12]}"
        self._app.send_task(RUN_TASK, args=[run.id], queue=run.queue, task_id=task_id, retry=False)
        return task_id
