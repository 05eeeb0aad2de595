"""`obow lab ...`: the lab's commands, plugged into the `obow` CLI through the `obow.cli_plugins`
entry point (the library never imports the server). Also runnable as `python -m server.cli`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from server.settings import Settings


class LabError(click.ClickException):
    exit_code = 2


@click.group(name="lab")
def lab() -> None:
    """The lab: REST API, dashboard, workers, database."""


@lab.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or migrate the database (DATABASE_URL, or the embedded SQLite file)."""
    from server.db import upgrade

    settings = Settings()
    upgrade(settings.db_url, revision)
    click.echo(f"database at {revision}: {_safe_url(settings.db_url)}")


@lab.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--name", default="cli", show_default=True, help="A label to recognise the token by")
def token_create(name: str) -> None:
    """Print a new API token (shown once; only its sha256 is stored)."""
    click.echo(_create_token(Settings(), name))


def _create_token(settings: Settings, name: str) -> str:
    from server.db import DatabaseNotMigrated, check_migrated, make_engine, make_sessionmaker
    from server.services.tokens import create_token

    engine = make_engine(settings.db_url)
    try:
        check_migrated(engine)
    except DatabaseNotMigrated as err:
        raise LabError(str(err)) from None
    with make_sessionmaker(engine)() as session:
        value = create_token(session, name)
    engine.dispose()
    return value


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@lab.command("serve")
@click.option("--host", default=None, help="Bind address (default OBOW_LAB_HOST or 127.0.0.1)")
@click.option("--port", type=int, default=None)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="uvicorn worker processes (each builds its own app from the environment)",
)
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the API and dashboard (uvicorn) on a migrated database.

    One process is bound by the GIL: the JSON encoding of list and metrics answers competes with the
    SSE polls for one core, so on a machine with spare cores `--workers 2` or more serves more."""
    import uvicorn

    from server.app import create_app
    from server.db import DatabaseNotMigrated, check_migrated, make_engine

    settings = Settings()
    host, port = host or settings.host, port or settings.port
    if workers == 1:
        try:
            app = create_app(settings)
        except DatabaseNotMigrated as err:
            raise LabError(str(err)) from None
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    engine = make_engine(settings.db_url)  # refuse here, once, rather than in every worker process
    try:
        check_migrated(engine)
    except DatabaseNotMigrated as err:
        raise LabError(str(err)) from None
    finally:
        engine.dispose()
    uvicorn.run("server.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")


@lab.command("worker")
@click.option("--gpus", default=None, help="Comma-separated GPU ids: one worker process per GPU")
@click.option("--queues", default="gpu,cpu", show_default=True)
@click.option(
    "--pool",
    type=click.Choice(["solo", "prefork"]),
    default="solo",
    show_default=True,
    help="solo: the worker process itself supervises each run (which runs in a child process of its own)",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(gpus: str | None, queues: str, pool: str, loglevel: str) -> None:
    """A Celery worker running one run at a time (per GPU with --gpus; the cpu queue gets its own)."""
    wanted = [q for q in queues.split(",") if q]
    unknown = set(wanted) - {"gpu", "cpu"}
    if unknown:
        raise LabError(f"unknown queue(s) {', '.join(sorted(unknown))}: use gpu and/or cpu")
    if not gpus:
        _worker_here(wanted, pool, loglevel)
        return
    procs = []
    for gpu in [g.strip() for g in gpus.split(",") if g.strip()]:
        if "gpu" in wanted:
            procs.append(_spawn_worker(["gpu"], {"CUDA_VISIBLE_DEVICES": gpu}, f"gpu{gpu}", pool, loglevel))
    if "cpu" in wanted:
        procs.append(_spawn_worker(["cpu"], {"CUDA_VISIBLE_DEVICES": ""}, "cpu", pool, loglevel))
    _supervise(procs)


def _worker_here(queues: list[str], pool: str, loglevel: str, name: str = "worker") -> None:
    from worker.celery_app import app

    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    node = f"{name}-{gpu}" if gpu else name
    app.worker_main(
        [
            "worker",
            "-Q",
            ",".join(queues),
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


def _spawn_worker(
    queues: list[str], env: dict[str, str], name: str, pool: str, loglevel: str
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "server.cli",
        "worker",
        "--queues",
        ",".join(queues),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
    ]
    return subprocess.Popen(command, env={**os.environ, **env})


def _supervise(procs: list[subprocess.Popen]) -> None:
    """Wait for the children; on Ctrl-C or SIGTERM stop them all (warm shutdown first)."""

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(proc.poll() is None for proc in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    stop()


@lab.command("up")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
def up(host: str | None, port: int | None) -> None:
    """Everything on this machine: migrate, start one worker and the API, print the URL and a token."""
    import uvicorn

    from server.app import create_app
    from server.db import upgrade

    settings = Settings()
    upgrade(settings.db_url)
    value = _create_token(settings, "lab up")
    host, port = host or settings.host, port or settings.port
    worker_proc = _spawn_worker(["gpu", "cpu"], {}, "local", "solo", "WARNING")
    try:
        app = create_app(settings)
        click.echo(f"OBoW Lab: http://{host}:{port}/   (API docs: http://{host}:{port}/api/docs)")
        click.echo(f"API token (log in on the dashboard with it; shown once): {value}")
        click.echo(f"data: {settings.home.resolve()}   stop: Ctrl-C")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        worker_proc.send_signal(signal.SIGTERM)
        try:
            worker_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_proc.kill()


if __name__ == "__main__":
    lab(prog_name="obow lab")
