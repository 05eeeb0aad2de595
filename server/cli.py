"""`obow lab ...`: the lab's commands, plugged into the `obow` CLI through the `obow.cli_plugins`
entry point (the library never imports the server). Also runnable as `python -m server.cli`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import click

from server import runs_cli, sweep_cli
from server.core.settings import Settings

# uvloop's event loop and httptools' HTTP parser (uvicorn[standard]): less CPU per request and per SSE
# message than asyncio's loop and h11, which is most of what the API does under load.
FAST_SERVER = {"loop": "uvloop", "http": "httptools"}
# `python -m worker` started by `lab up` reads its parent's pid here and asks the kernel for SIGTERM when
# that parent dies, so even a SIGKILLed `lab up` leaves no worker behind.
PARENT_PID_ENV = "OBOW_LAB_PARENT_PID"


class LabError(click.ClickException):
    exit_code = 2


@click.group(name="lab")
def lab() -> None:
    """The lab: REST API, dashboard, workers, database."""


lab.add_command(sweep_cli.sweep)
lab.add_command(runs_cli.runs)


@lab.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or migrate the database (DATABASE_URL, or the embedded SQLite file)."""
    from server.core.db import upgrade

    settings = Settings()
    upgrade(settings.db_url, revision)
    click.echo(f"database at {revision}: {_safe_url(settings.db_url)}")


@lab.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--name", default="cli", show_default=True, help="A label to recognise the token by")
@click.option(
    "--expires-in",
    "expires_in",
    type=click.FloatRange(min=0, min_open=True, max=36500),
    default=None,
    metavar="DAYS",
    help="Refuse the token after this many days (default: until revoked)",
)
def token_create(name: str, expires_in: float | None) -> None:
    """Print a new API token (shown once; only its sha256 is stored)."""
    click.echo(_create_token(Settings(), name, expires_in))


@token.command("list")
def token_list() -> None:
    """Every token: id, name, created, last used, expires, state. Never the token itself (only its hash
    is stored)."""
    from server.services.tokens import list_tokens, usable

    with _session(Settings()) as session:
        rows = list_tokens(session)
        lines = [("ID", "NAME", "CREATED", "LAST USED", "EXPIRES", "STATE")]
        for row in rows:
            state = "revoked" if row.revoked else ("active" if usable(row) else "expired")
            lines.append(
                (str(row.id), row.name, _when(row.created_at), _when(row.last_used_at), _when(row.expires_at), state)
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@token.command("revoke")
@click.argument("token_id", type=click.IntRange(min=1))
def token_revoke(token_id: int) -> None:
    """Revoke token ID (see `obow lab token list`): refused from now on, and every dashboard session
    logged in with it ends."""
    from server.services.tokens import revoke_token

    with _session(Settings()) as session:
        row = revoke_token(session, token_id)
        if row is None:
            raise LabError(f"no token with id {token_id}; see `obow lab token list`")
        click.echo(f"revoked token {row.id} ({row.name}); its dashboard sessions ended")


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


@contextlib.contextmanager
def _session(settings: Settings) -> Iterator:
    """A database session on a migrated database (else a one-line error saying how to migrate)."""
    from server.core.db import DatabaseNotMigrated, check_migrated, make_engine, make_sessionmaker

    engine = make_engine(settings.db_url)
    try:
        check_migrated(engine)
    except DatabaseNotMigrated as err:
        engine.dispose()
        raise LabError(str(err)) from None
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _create_token(settings: Settings, name: str, expires_in_days: float | None = None) -> str:
    from server.services.tokens import create_token

    with _session(settings) as session:
        return create_token(session, name, expires_in_days)


def _settings_binding(host: str | None) -> Settings:
    """Settings with `--host` as the bind host: the Host check's default names include it, also in
    the processes of `--workers N` (they read OBOW_LAB_HOST from the environment they inherit)."""
    if host:
        os.environ["OBOW_LAB_HOST"] = host
    return Settings()


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
    SSE reads for one core, so on a machine with spare cores `--workers 2` or more serves more."""
    import uvicorn

    from server.app import create_app
    from server.core.db import DatabaseNotMigrated, check_migrated, make_engine

    settings = _settings_binding(host)
    host, port = host or settings.host, port or settings.port
    if workers == 1:
        try:
            app = create_app(settings)
        except DatabaseNotMigrated as err:
            raise LabError(str(err)) from None
        uvicorn.run(app, host=host, port=port, log_level="warning", **FAST_SERVER)
        return
    engine = make_engine(settings.db_url)  # refuse here, once, rather than in every worker process
    try:
        check_migrated(engine)
    except DatabaseNotMigrated as err:
        raise LabError(str(err)) from None
    finally:
        engine.dispose()
    uvicorn.run(
        "server.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning",
        **FAST_SERVER,
    )


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


def worker_command(queues: list[str], name: str, pool: str, loglevel: str) -> list[str]:
    """The command line of one worker process (`python -m worker`), started by command, not import."""
    return [
        sys.executable, "-m", "worker", "--queues", ",".join(queues), "--pool", pool, "--loglevel", loglevel,
        "--name", name,
    ]


def _worker_here(queues: list[str], pool: str, loglevel: str, name: str = "worker") -> None:
    command = worker_command(queues, name, pool, loglevel)
    os.execv(command[0], command)


def _spawn_worker(
    queues: list[str], env: dict[str, str], name: str, pool: str, loglevel: str
) -> subprocess.Popen:
    return subprocess.Popen(worker_command(queues, name, pool, loglevel), env={**os.environ, **env})


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


class WorkerKeeper:
    """Keeps one worker process alive for `obow lab up`: a worker that dies (killed, out of memory) is
    started again after a back-off (1 s, doubling to 60 s; reset once a worker has lived a minute), and
    each restart is logged. `stop()` ends it with a warm shutdown (SIGTERM), then SIGKILL."""

    def __init__(self, command: list[str], log=None, env: dict[str, str] | None = None) -> None:
        self._command = command
        self._env = env
        self._log = log or (lambda message: click.echo(message, err=True))
        self._stopping = threading.Event()
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._thread = threading.Thread(target=self._keep, name="worker-keeper", daemon=True)

    def start(self) -> None:
        self.process = self._spawn()
        self._thread.start()

    def _spawn(self) -> subprocess.Popen:
        """In a process group of its own: a Ctrl-C in the terminal reaches `lab up` only, which stops the
        worker in order (instead of the worker exiting at once and being restarted during the shutdown)."""
        return subprocess.Popen(self._command, env=self._env, process_group=0)

    def _keep(self) -> None:
        backoff, started = 1.0, time.monotonic()
        while not self._stopping.is_set():
            if self.process is not None and self.process.poll() is None:
                self._stopping.wait(0.5)
                continue
            code = self.process.returncode if self.process is not None else None
            if time.monotonic() - started > 60:
                backoff = 1.0
            self._log(f"obow lab: the worker exited ({_exit_text(code)}); starting a new one in {backoff:.0f} s")
            if self._stopping.wait(backoff):
                return
            backoff = min(60.0, backoff * 2)
            started = time.monotonic()
            self.process = self._spawn()
            self.restarts += 1
            self._log(f"obow lab: started a new worker (pid {self.process.pid}, restart {self.restarts})")

    def stop(self, timeout_s: float = 30) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "not started"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"


@lab.command("up")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
def up(host: str | None, port: int | None) -> None:
    """Everything on this machine: migrate, start one worker and the API, print the URL and a token.

    The worker is kept alive (restarted with a back-off if it dies); Ctrl-C, SIGTERM or SIGHUP (the
    terminal closed) stops the API and the worker, and a `lab up` killed outright takes its worker with
    it (the kernel sends it SIGTERM when its parent dies)."""
    import uvicorn

    from server.app import create_app
    from server.core.db import upgrade

    settings = _settings_binding(host)
    upgrade(settings.db_url)
    value = _create_token(settings, "lab up")
    host, port = host or settings.host, port or settings.port
    command = worker_command(["gpu", "cpu"], "local", "solo", "WARNING")
    keeper = WorkerKeeper(command, env={**os.environ, PARENT_PID_ENV: str(os.getpid())})
    server: uvicorn.Server | None = None
    stopping = threading.Event()

    def terminate(signum: int, _frame: object) -> None:
        """Every way of stopping ends in `finally` below. While uvicorn serves it handles SIGINT and
        SIGTERM itself and raises them again once it has shut down, which lands here; SIGHUP it ignores,
        so here it asks uvicorn to shut down the same way."""
        stopping.set()
        if server is not None:
            server.should_exit = True
        else:
            raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, terminate)
    keeper.start()
    try:
        app = create_app(settings)
        click.echo(f"OBoW Lab: http://{host}:{port}/   (API docs: http://{host}:{port}/api/docs)")
        click.echo(f"API token (log in on the dashboard with it; shown once): {value}")
        click.echo(f"data: {settings.home.resolve()}   stop: Ctrl-C")
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", **FAST_SERVER))
        if not stopping.is_set():
            server.run()
    finally:
        keeper.stop()


if __name__ == "__main__":
    lab(prog_name="obow lab")
