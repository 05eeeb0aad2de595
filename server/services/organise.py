"""Organising runs after launch: renaming, tagging, notes and projects (`PATCH /runs/{id}`), archiving,
disk usage, and deleting a run with everything below it.

None of this writes `runs.state` (the state machine in `server.core.transitions` does): a patch is an
UPDATE of the organising columns only, so it can never race a worker's transition into a wrong state.

Deleting removes, for the run and its descendants (children, their children ...): the rows (metrics,
metric blocks, logs, events, attempts and artifact rows go by ON DELETE CASCADE), each run's folder
`ARTIFACT_ROOT/runs/<id>`, the uploads its artifact rows name, and pinned weights (`ARTIFACT_ROOT/pinned`)
that no remaining run's spec names. A child holds its parent's checkpoint as a pinned hard link, never
inside the parent's folder, so removing one run's folder never takes a file another run reads.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Text, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from server.core.artifacts import PINNED_DIR, inside_root, run_dir
from server.core.errors import Conflict
from server.core.models import TERMINAL_STATES, Artifact, LogLine, Metric, Run, Sweep, SweepTrial, utcnow
from server.schemas import RunPatch, RunUsage, UsageRow, UsageTotal
from server.services.runs import get_run


def patch_run(session: Session, run_id: int, body: RunPatch) -> Run:
    """Change only what the body names; `archived` hides (or shows again) the run and its descendants."""
    run = get_run(session, run_id)
    # null means "leave it"; an empty project or note clears it
    values = {k: v for k, v in body.model_dump(exclude_unset=True, exclude={"archived"}).items() if v is not None}
    if values:
        session.execute(update(Run).where(Run.id == run_id).values(**values))
    if body.archived is not None:
        ids = subtree(session, run_id)
        session.execute(
            update(Run).where(Run.id.in_(ids)).values(archived_at=utcnow() if body.archived else None)
        )
    session.commit()
    session.refresh(run)
    return run


def subtree(session: Session, run_id: int) -> list[int]:
    """The run and every run below it (children of children too), parents first."""
    found, frontier = [run_id], [run_id]
    while frontier:
        frontier = [i for i in session.scalars(select(Run.id).where(Run.parent_id.in_(frontier))) if i not in found]
        found += frontier
    return found


def _folder_files(folder: Path) -> Iterable[Path]:
    """Regular files under a run's folder, not following symlinks (a link's target is not the run's)."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    out = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        out += [Path(top) / name for name in files]
        dirs[:] = [d for d in dirs if not (Path(top) / d).is_symlink()]
    return out


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


@dataclass
class Plan:
    """What a deletion removes: rows (by cascade from the runs) and files."""

    run_ids: list[int]
    active: list[int]
    folders: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # outside the folders: uploads, pins nobody else uses
    file_count: int = 0
    bytes: int = 0


def _plan(session: Session, root: Path, run_id: int) -> Plan:
    ids = subtree(session, run_id)
    active = list(session.scalars(select(Run.id).where(Run.id.in_(ids), Run.state.not_in(TERMINAL_STATES))))
    plan = Plan(ids, sorted(active))
    owned = {run_dir(root, i).resolve() for i in ids}
    for folder in sorted(owned):
        files = list(_folder_files(folder))
        if folder.is_dir() and not folder.is_symlink():
            plan.folders.append(folder)
        plan.file_count += len(files)
        plan.bytes += sum(_size(f) for f in files)
    outside: set[Path] = set()
    for stored in session.scalars(select(Artifact.path).where(Artifact.run_id.in_(ids))):
        target = inside_root(root, stored)
        if target is None or any(target.is_relative_to(f) for f in owned) or not target.is_file():
            continue
        shared = session.scalar(
            select(func.count()).select_from(Artifact).where(Artifact.path == stored, Artifact.run_id.not_in(ids))
        )
        if not shared:
            outside.add(target)
    pinned = root.resolve() / PINNED_DIR
    for spec_text in session.scalars(select(cast(Run.spec, Text)).where(Run.id.in_(ids))):
        for name in set(_PIN_NAME.findall(spec_text or "")):
            pin = pinned / name
            if pin.is_file() and not _pin_used_elsewhere(session, name, ids):
                outside.add(pin)
    plan.files = sorted(outside)
    plan.file_count += len(outside)
    plan.bytes += sum(_size(f) for f in outside)
    return plan


# a pinned file as a spec names it: `<root>/pinned/<sha256><suffix>` (see `server.core.artifacts.pin`)
_PIN_NAME = re.compile(rf"/{PINNED_DIR}/([0-9a-f]{{64}}(?:\.[A-Za-z0-9]+)*)")


def _pin_used_elsewhere(session: Session, name: str, ids: list[int]) -> bool:
    """Does a run outside the deletion name this pinned file in its spec?"""
    pattern = "%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return bool(
        session.scalar(
            select(func.count())
            .select_from(Run)
            .where(Run.id.not_in(ids), cast(Run.spec, Text).like(pattern, escape="\\"))
        )
    )


def usage(session: Session, root: Path, run_id: int) -> RunUsage:
    """The run with its descendants: rows and files, i.e. what `delete_run` would remove."""
    get_run(session, run_id)
    plan = _plan(session, root, run_id)
    return _summary(session, run_id, plan)


def _summary(session: Session, run_id: int, plan: Plan) -> RunUsage:
    ids = plan.run_ids

    def count(model, column) -> int:
        return session.scalar(select(func.count()).select_from(model).where(column.in_(ids))) or 0

    return RunUsage(
        run_id=run_id,
        run_ids=ids,
        active=plan.active,
        metric_points=count(Metric, Metric.run_id),
        log_lines=count(LogLine, LogLine.run_id),
        artifacts=count(Artifact, Artifact.run_id),
        files=plan.file_count,
        bytes=plan.bytes,
    )


def delete_run(session: Session, root: Path, run_id: int) -> RunUsage:
    """Delete the run, its descendants, their rows and files; 409 while any of them is not finished or
    belongs to a sweep that is still running (its controller reads the trial's run). Returns what went."""
    get_run(session, run_id)
    plan = _plan(session, root, run_id)
    if plan.active:
        raise Conflict(
            f"run {run_id} cannot be deleted while run(s) {', '.join(map(str, plan.active))} are not finished; "
            "cancel them first"
        )
    in_sweep = session.scalars(
        select(Sweep.id)
        .join(SweepTrial, SweepTrial.sweep_id == Sweep.id)
        .where(
            Sweep.state == "running",
            or_(SweepTrial.run_id.in_(plan.run_ids), SweepTrial.eval_run_id.in_(plan.run_ids)),
        )
    ).first()
    if in_sweep is not None:
        raise Conflict(f"run {run_id} is a trial of sweep {in_sweep}, which is still running; cancel the sweep first")
    summary = _summary(session, run_id, plan)
    # rows first, in one transaction, guarded: a run that became active meanwhile (none can: finished runs
    # stay finished) or a concurrent deletion leaves everything as it was
    deleted = session.execute(
        delete(Run).where(Run.id.in_(plan.run_ids), Run.state.in_(TERMINAL_STATES))
    ).rowcount
    if deleted != len(plan.run_ids):
        session.rollback()
        raise Conflict(f"run {run_id} changed while it was being deleted; try again")
    session.commit()
    for folder in plan.folders:
        shutil.rmtree(folder, ignore_errors=True)
    for path in plan.files:
        path.unlink(missing_ok=True)
        if path.parent.name != PINNED_DIR and path.parent != root.resolve():
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # an upload's own folder, once empty
    return summary


def total_usage(session: Session, root: Path, limit: int = 100) -> UsageTotal:
    """Bytes under the artifact store, by top folder, and the largest run folders."""
    root = root.resolve()
    sizes: dict[str, int] = {}
    files = 0
    per_run: dict[int, list[int]] = {}
    if root.is_dir():
        for top, _dirs, names in os.walk(root, followlinks=False):
            relative = Path(top).relative_to(root).parts
            for name in names:
                size = _size(Path(top) / name)
                files += 1
                section = relative[0] if relative else ""
                sizes[section] = sizes.get(section, 0) + size
                if section == "runs" and len(relative) > 1 and relative[1].isdigit():
                    entry = per_run.setdefault(int(relative[1]), [0, 0])
                    entry[0] += 1
                    entry[1] += size
    largest = sorted(per_run.items(), key=lambda item: -item[1][1])[:limit]
    rows = {r.id: r for r in session.execute(
        select(Run.id, Run.name, Run.kind, Run.state).where(Run.id.in_([i for i, _ in largest]))
    )}
    known = {"runs", PINNED_DIR, "uploads"}
    return UsageTotal(
        total_bytes=sum(sizes.values()),
        total_files=files,
        runs_bytes=sizes.get("runs", 0),
        pinned_bytes=sizes.get(PINNED_DIR, 0),
        uploads_bytes=sizes.get("uploads", 0),
        other_bytes=sum(v for k, v in sizes.items() if k not in known),
        runs=[
            UsageRow(
                run_id=i,
                name=rows[i].name if i in rows else "(deleted run)",
                kind=rows[i].kind if i in rows else "",
                state=rows[i].state if i in rows else "",
                files=n,
                bytes=b,
            )
            for i, (n, b) in largest
        ],
    )
