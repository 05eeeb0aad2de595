"""`obow lab sweep create --file sweep.yaml` and `obow lab sweep status ID`: sweeps from the command line,
over HTTP through `obow_lab_client` (any machine that reaches the API; no database, no Celery, no torch).
The server comes from `--url` or `OBOW_LAB_URL` (default http://127.0.0.1:8000), the token from
`--token` or `OBOW_LAB_TOKEN`. The YAML file is the body of `POST /api/v1/sweeps`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click
import yaml

DEFAULT_URL = "http://127.0.0.1:8000"


def _client(url: str | None, token: str | None) -> Any:
    from obow_lab_client import LabClient

    return LabClient(url or os.environ.get("OBOW_LAB_URL") or DEFAULT_URL, token or os.environ.get("OBOW_LAB_TOKEN"))


def _fail(err: Exception) -> click.ClickException:
    detail = getattr(err, "detail", None)
    if isinstance(detail, list):  # a 422: one line per bad field, named by its location
        lines = [f"  {'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}" for item in detail]
        return click.ClickException("the server refused the sweep:\n" + "\n".join(lines))
    return click.ClickException(str(err))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def render(sweep: dict[str, Any]) -> str:
    """A plain-text table of the trials, the best trial and the importances."""
    keys = list(sweep["space"])
    short = [k.rsplit(".", 1)[-1] for k in keys]
    head = ["#", "state", sweep["objective"]["metric"], "time s", *short, "run"]
    rows = [
        [
            str(t["number"]),
            t["state"],
            _fmt(t["value"]),
            _fmt(t["duration_s"] and round(t["duration_s"], 1)),
            *(_fmt(t["params"].get(k)) for k in keys),
            _fmt(t["run_id"]),
        ]
        for t in sweep["trials"]
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        f"sweep {sweep['id']} '{sweep['name']}': {sweep['state']}, {sweep['method']}, "
        f"{len(sweep['trials'])}/{sweep['budget']} trials, {sweep['direction']} {sweep['objective']['metric']}",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if sweep.get("best"):
        best = sweep["best"]
        lines.append(
            f"best: trial {best['number']} = {_fmt(best['value'])} (run {best['run_id']}) "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        )
    if sweep.get("importance"):
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in sweep["importance"].items()))
    return "\n".join(lines)


@click.group()
def sweep() -> None:
    """Hyper-parameter sweeps (HTTP; OBOW_LAB_URL, OBOW_LAB_TOKEN)."""


@sweep.command("create")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="YAML (or JSON) body of POST /api/v1/sweeps",
)
@click.option("--url", default=None, help=f"the lab's URL (default: $OBOW_LAB_URL or {DEFAULT_URL})")
@click.option("--token", default=None, help="API token (default: $OBOW_LAB_TOKEN)")
@click.option("--wait", is_flag=True, help="Follow the sweep until it ends, printing its table")
def create(path: Path, url: str | None, token: str | None, wait: bool) -> None:
    """Start a sweep from a file."""
    body = yaml.safe_load(path.read_text())
    if not isinstance(body, dict):
        raise click.ClickException(f"{path}: expected a mapping (the body of POST /api/v1/sweeps)")
    from obow_lab_client import LabError

    with _client(url, token) as client:
        try:
            created = client.create_sweep(body)
        except LabError as err:
            raise _fail(err) from None
        click.echo(f"sweep {created['id']} started: {len(created['trials'])} trials running")
        if wait:
            _follow(client, created["id"])


@sweep.command("status")
@click.argument("sweep_id", type=click.IntRange(1, 2**31 - 1))
@click.option("--url", default=None, help=f"the lab's URL (default: $OBOW_LAB_URL or {DEFAULT_URL})")
@click.option("--token", default=None, help="API token (default: $OBOW_LAB_TOKEN)")
@click.option("--watch", is_flag=True, help="Refresh every 5 s until the sweep ends")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
def status(sweep_id: int, url: str | None, token: str | None, watch: bool, as_json: bool) -> None:
    """A sweep's trials, best trial and parameter importances."""
    from obow_lab_client import LabError

    with _client(url, token) as client:
        try:
            if watch:
                _follow(client, sweep_id)
                return
            found = client.sweep_status(sweep_id)
        except LabError as err:
            raise _fail(err) from None
        click.echo(json.dumps(found, indent=2) if as_json else render(found))


@sweep.command("cancel")
@click.argument("sweep_id", type=click.IntRange(1, 2**31 - 1))
@click.option("--url", default=None)
@click.option("--token", default=None)
def cancel(sweep_id: int, url: str | None, token: str | None) -> None:
    """Stop a sweep and cancel its running trials."""
    from obow_lab_client import LabError

    with _client(url, token) as client:
        try:
            click.echo(render(client.cancel_sweep(sweep_id)))
        except LabError as err:
            raise _fail(err) from None


def _follow(client: Any, sweep_id: int, every_s: float = 5.0) -> None:
    while True:
        found = client.sweep_status(sweep_id)
        click.echo(render(found) + "\n")
        if found["state"] != "running":
            return
        time.sleep(every_s)
