"""`obow lab runs ...`: find, file and clean up runs from the command line, over HTTP through
`obow_lab_client` (no database, Celery or torch here). Server and token as for `obow lab sweep`:
`--url`/`OBOW_LAB_URL`, `--token`/`OBOW_LAB_TOKEN`.

    obow lab runs --query "tag:baseline knn_top1_k20>80" --sort -knn_top1_k20
    obow lab runs edit 12 --name resnet-long --tag baseline --tag fmnist --note-file notes.md
    obow lab runs archive 12            obow lab runs usage 12        obow lab runs delete 12
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from server.sweep_cli import DEFAULT_URL, _client, _fail

RUN_ID = click.IntRange(1, 2**31 - 1)
url_option = click.option("--url", default=None, help=f"the lab's URL (default: $OBOW_LAB_URL or {DEFAULT_URL})")
token_option = click.option("--token", default=None, help="API token (default: $OBOW_LAB_TOKEN)")


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def _metric(last: dict[str, float]) -> str:
    """The number a list shows: a kNN accuracy, else another accuracy, else the loss (as the dashboard)."""
    for test in (lambda k: "knn" in k.lower(), lambda k: "acc" in k or "top1" in k, lambda k: k.startswith("loss")):
        for key, value in last.items():
            if test(key):
                return f"{key} {value:.4g}"
    return ""


def render_runs(page: dict[str, Any]) -> str:
    head = ["#", "name", "kind", "state", "project", "tags", "metric", "by", "children"]
    rows = [
        [str(r["id"]), r["name"], r["kind"], r["state"] + (" (archived)" if r.get("archived_at") else ""),
         r.get("project") or "", ",".join(r.get("tags") or []), _metric(r.get("last_metrics") or {}),
         r.get("launched_by") or "", "" if r.get("child_count") in (None, 0) else str(r["child_count"])]
        for r in page["items"]
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *rows]]
    shown = f"{page['offset'] + 1}-{page['offset'] + len(page['items'])}" if page["items"] else "0"
    return "\n".join([*lines, f"{shown} of {page['total']}"])


def _call(url: str | None, token: str | None, action) -> Any:
    from obow_lab_client import LabError

    with _client(url, token) as client:
        try:
            return action(client)
        except LabError as err:
            raise _fail(err) from None


@click.group(invoke_without_command=True)
@click.option(
    "--query", "-q", default=None, help="Search, e.g. 'resnet tag:x state:succeeded optim.lr>0.01 knn_top1_k20>80'"
)
@click.option("--sort", default=None, help="A column, spec key or metric; '-' in front for descending")
@click.option("--limit", type=click.IntRange(1, 500), default=50)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--grouped", is_flag=True, help="Only runs without a parent, with their number of children")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@url_option
@token_option
@click.pass_context
def runs(ctx: click.Context, query: str | None, sort: str | None, limit: int, offset: int, grouped: bool,
         as_json: bool, url: str | None, token: str | None) -> None:
    """List and search runs (archived ones with --query archived:yes); subcommands file and delete them."""
    if ctx.invoked_subcommand is not None:
        return
    page = _call(url, token, lambda c: c.search(query, sort=sort, limit=limit, offset=offset, top_level=grouped))
    click.echo(json.dumps(page, indent=2) if as_json else render_runs(page))


@runs.command("edit")
@click.argument("run_id", type=RUN_ID)
@click.option("--name", default=None)
@click.option("--project", default=None, help="'' takes the run out of its project")
@click.option("--tag", "tags", multiple=True, help="Repeat for several; replaces the run's tags")
@click.option("--clear-tags", is_flag=True, help="Remove all tags")
@click.option("--note", default=None, help="Markdown")
@click.option("--note-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@url_option
@token_option
def edit(run_id: int, name: str | None, project: str | None, tags: tuple[str, ...], clear_tags: bool,
         note: str | None, note_file: Path | None, url: str | None, token: str | None) -> None:
    """Rename a run, move it to a project, retag it or write its note."""
    fields: dict[str, Any] = {k: v for k, v in (("name", name), ("project", project)) if v is not None}
    if tags or clear_tags:
        fields["tags"] = list(tags)
    if note_file is not None:
        fields["note"] = note_file.read_text(encoding="utf-8")
    elif note is not None:
        fields["note"] = note
    if not fields:
        raise click.UsageError("nothing to change: give --name, --project, --tag, --clear-tags, --note or --note-file")
    run = _call(url, token, lambda c: c.update(run_id, **fields))
    click.echo(f"run {run['id']} '{run['name']}' project '{run['project']}' tags {','.join(run['tags']) or '-'}")


@runs.command("archive")
@click.argument("run_id", type=RUN_ID)
@click.option("--undo", is_flag=True, help="Unarchive")
@url_option
@token_option
def archive(run_id: int, undo: bool, url: str | None, token: str | None) -> None:
    """Hide a run and its children from the default list (--undo shows them again)."""
    _call(url, token, lambda c: c.unarchive(run_id) if undo else c.archive(run_id))
    click.echo(f"run {run_id} and its children {'unarchived' if undo else 'archived'}")


def _summary(usage: dict[str, Any]) -> str:
    others = usage["run_ids"][1:]
    children = f" and {len(others)} child run(s) ({', '.join(map(str, others))})" if others else ""
    return (
        f"run {usage['run_id']}{children}: {usage['metric_points']:,} metric points, {usage['log_lines']:,} log lines, "
        f"{usage['files']:,} files, {_size(usage['bytes'])}"
    )


@runs.command("usage")
@click.argument("run_id", type=RUN_ID, required=False)
@url_option
@token_option
def usage(run_id: int | None, url: str | None, token: str | None) -> None:
    """Disk use of a run with its children, or of the whole artifact store."""
    found = _call(url, token, lambda c: c.usage(run_id))
    if run_id is not None:
        click.echo(_summary(found) + (f"; not finished: {found['active']}" if found["active"] else ""))
        return
    click.echo(f"{_size(found['total_bytes'])} in {found['total_files']:,} files: runs {_size(found['runs_bytes'])}, "
               f"pinned {_size(found['pinned_bytes'])}, uploads {_size(found['uploads_bytes'])}")
    for row in found["runs"][:20]:
        click.echo(f"  {row['run_id']:>7}  {_size(row['bytes']):>10}  {row['files']:>6} files  {row['name']}")


@runs.command("delete")
@click.argument("run_id", type=RUN_ID)
@click.option("--yes", is_flag=True, help="Do not ask")
@url_option
@token_option
def delete(run_id: int, yes: bool, url: str | None, token: str | None) -> None:
    """Delete a run with its children, metrics, logs and files (asks first, showing what goes)."""
    found = _call(url, token, lambda c: c.usage(run_id))
    if found["active"]:
        raise click.ClickException(
            f"runs {', '.join(map(str, found['active']))} are not finished: cancel them first (obow lab runs ... "
            "or the dashboard), then delete"
        )
    if not yes:
        click.confirm(f"Delete {_summary(found)}?", abort=True)
    gone = _call(url, token, lambda c: c.delete(run_id))
    click.echo(f"deleted {_summary(gone)}")
