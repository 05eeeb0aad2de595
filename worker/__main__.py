"""`python -m worker`: one Celery worker process running one run at a time.

`obow lab worker` and `obow lab up` start workers with this command, as processes: the server package
never imports the worker."""

from __future__ import annotations

import os
import signal

import click


@click.command()
@click.option("--queues", default="gpu,cpu", show_default=True)
@click.option("--pool", type=click.Choice(["solo", "prefork"]), default="solo", show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--name", default="worker", show_default=True, help="node name prefix")
def main(queues: str, pool: str, loglevel: str, name: str) -> None:
    parent = os.environ.pop("OBOW_LAB_PARENT_PID", "")
    if parent.isdigit():  # started by `obow lab up`: a warm shutdown when it dies, however it dies
        from obow.procs import exit_with_parent

        exit_with_parent(int(parent), signal.SIGTERM)
    from server.core.queue import prepare_broker
    from worker.celery_app import app

    prepare_broker(app.conf.broker_url, queues.split(","))

    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    node = f"{name}-{gpu}" if gpu else name
    app.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "-c",
            "1",
            "-P",
            pool,
            "-n",
            f"{node}.{os.getpid()}@%h",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
