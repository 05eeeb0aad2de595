"""The workers' Celery app: the lab's queue contract (`server.core.queue`) plus this package's task.

`celery -A worker.celery_app worker` and `python -m worker` use it, configured from the environment."""

from __future__ import annotations

from server.core.queue import make_celery
from server.core.settings import Settings

app = make_celery(Settings().celery_broker_url, include=["worker.tasks"])
