"""Comparing runs side by side: which spec keys differ, the final metrics, the runs' own results and
the results of their evaluation children, as one table (JSON for the page and scripts, CSV to download).

Specs are flattened to dotted keys (`optim.lr`); lists stay whole values. A key is shown when its value
is not the same in every run, a key that a run's spec lacks included (that cell is "missing": `present`
false, which is not the same as a JSON null). Values are compared as canonical JSON, so `1`, `1.0`'s
twin `true` and `"1"` all differ where they should.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import kinds as kinds_service
from server.core.errors import NotFound, invalid
from server.core.models import Run, RunState
from server.core.text import clean_json, clean_text

MAX_RUNS = 12  # runs one comparison takes: a chart with more lines reads as noise
RUNS_LOC = ("query", "runs")
# children of a run that are not evaluations of its weights
NOT_EVALUATIONS = {"pretrain", "import", "export", "words"}
# cells a spreadsheet would run as a formula (CSV injection): a text cell starting so gets a leading '
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def parse_ids(text: str | None) -> list[int]:
    """`runs=1,2,3` as ids (duplicates dropped, order kept); a 422 naming `runs` for anything else."""
    if text is None or not text.strip():
        raise invalid(RUNS_LOC, "name at least one run id, e.g. runs=1,2")
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isascii() or not part.isdigit():
            raise invalid(RUNS_LOC, f"'{clean_text(part, 40)}' is not a run id (comma-separated positive integers)")
        value = int(part)
        if not 1 <= value <= 2**31 - 1:
            raise invalid(RUNS_LOC, f"run id {clean_text(part, 40)} is out of range")
        if value not in ids:
            ids.append(value)
        if len(ids) > MAX_RUNS:
            raise invalid(RUNS_LOC, f"at most {MAX_RUNS} runs can be compared at once")
    return ids


def load_runs(session: Session, ids: list[int]) -> list[Run]:
    """The runs in the order asked; the first unknown id is a 404 naming it."""
    found = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(ids)))}
    for run_id in ids:
        if run_id not in found:
            raise NotFound(f"run {run_id} does not exist")
    return [found[run_id] for run_id in ids]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; anything else (lists included) is a leaf. An empty dict is a leaf
    too, so a spec that has the section and one that lacks it differ."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


@dataclass
class Row:
    """One line of the table: a key and its value in each run (`present[i]` false: run i lacks it)."""

    section: str
    key: str
    values: list[Any]
    present: list[bool]
    sources: list[int | None] | None = None  # evaluations: the child run each value comes from

    def as_dict(self) -> dict[str, Any]:
        out = {"section": self.section, "key": self.key, "values": self.values, "present": self.present}
        if self.sources is not None:
            out["sources"] = self.sources
        return out


def _rows(section: str, per_run: list[dict[str, Any]], only_differing: bool) -> list[Row]:
    keys = sorted({key for values in per_run for key in values})
    rows = []
    for key in keys:
        present = [key in values for values in per_run]
        cells = [values.get(key) for values in per_run]
        if only_differing and all(present) and len({_canonical(c) for c in cells}) == 1:
            continue
        rows.append(Row(section, key, cells, present))
    return rows


def _numbers(flat: dict[str, Any]) -> dict[str, Any]:
    """Results as the table shows them: numbers and yes/no values (paths, hashes and per-epoch histories
    belong on the run's own page)."""
    return {
        k: v for k, v in flat.items()
        if isinstance(v, bool) or (isinstance(v, int | float) and math.isfinite(v))
    }


def evaluation_kinds() -> set[str]:
    return {k for k in kinds_service.kinds() if k not in NOT_EVALUATIONS and kinds_service.weights_field(k)}


def newest_evaluations(session: Session, runs: list[Run]) -> dict[int, dict[str, Run]]:
    """Per run, per evaluation kind, its newest succeeded evaluation child."""
    wanted = evaluation_kinds()
    out: dict[int, dict[str, Run]] = {run.id: {} for run in runs}
    if not wanted:
        return out
    children = session.scalars(
        select(Run)
        .where(
            Run.parent_id.in_([run.id for run in runs]),
            Run.kind.in_(wanted),
            Run.state == RunState.SUCCEEDED,
        )
        .order_by(Run.id)
    )
    for child in children:
        out[child.parent_id][child.kind] = child  # ordered by id: the newest wins
    return out


@dataclass
class Comparison:
    runs: list[Run]
    spec_diff: list[Row]
    same_spec_keys: int
    metrics: list[Row]
    results: list[Row]
    evaluations: list[Row]
    evaluation_runs: dict[int, dict[str, int]] = field(default_factory=dict)

    def rows(self) -> Iterator[Row]:
        yield from self.spec_diff
        yield from self.metrics
        yield from self.results
        yield from self.evaluations

    def as_dict(self) -> dict[str, Any]:
        return clean_json(
            {
                "runs": [
                    {
                        "id": r.id, "name": r.name, "kind": r.kind, "state": r.state, "preset": r.preset,
                        "parent_id": r.parent_id, "metric_keys": list(r.metric_keys or []),
                        "evaluations": self.evaluation_runs.get(r.id, {}),
                    }
                    for r in self.runs
                ],
                "spec_diff": [row.as_dict() for row in self.spec_diff],
                "same_spec_keys": self.same_spec_keys,
                "metrics": [row.as_dict() for row in self.metrics],
                "results": [row.as_dict() for row in self.results],
                "evaluations": [row.as_dict() for row in self.evaluations],
            }
        )


def compare(session: Session, ids: list[int]) -> Comparison:
    runs = load_runs(session, ids)
    specs = [flatten(clean_json(run.spec) if isinstance(run.spec, dict) else {}) for run in runs]
    spec_diff = _rows("spec", specs, only_differing=True)
    all_keys = {key for spec in specs for key in spec}
    metrics = _rows(
        "metric",
        [_numbers(clean_json(r.last_metrics) if isinstance(r.last_metrics, dict) else {}) for r in runs],
        only_differing=False,
    )
    results = _rows(
        "result",
        [_numbers(flatten(clean_json(r.result))) if isinstance(r.result, dict) else {} for r in runs],
        only_differing=False,
    )
    children = newest_evaluations(session, runs)
    per_run: list[dict[str, Any]] = []
    source_of: list[dict[str, int]] = []
    for run in runs:
        values: dict[str, Any] = {}
        sources: dict[str, int] = {}
        for kind, child in sorted(children[run.id].items()):
            result = clean_json(child.result) if isinstance(child.result, dict) else {}
            for key, value in _numbers(flatten(result, kind)).items():
                values[key], sources[key] = value, child.id
        per_run.append(values)
        source_of.append(sources)
    evaluations = _rows("evaluation", per_run, only_differing=False)
    for row in evaluations:
        row.sources = [sources.get(row.key) for sources in source_of]
    return Comparison(
        runs=runs,
        spec_diff=spec_diff,
        same_spec_keys=len(all_keys) - len(spec_diff),
        metrics=metrics,
        results=results,
        evaluations=evaluations,
        evaluation_runs={run.id: {k: c.id for k, c in children[run.id].items()} for run in runs},
    )


def safe_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading = + - @ (a formula) gets a ' before it."""
    return "'" + text if text.startswith(FORMULA_START) else text


def cell(value: Any, present: bool) -> str:
    """A CSV cell: missing is empty, text as it is, numbers in full precision (repr), other values
    (null, true, lists) as JSON. The JSON download keeps the types exactly."""
    if not present:
        return ""
    if isinstance(value, str):
        return safe_cell(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value)


def to_csv(comparison: Comparison) -> str:
    """section,key,<one column per run>: quoting by the csv module (commas, quotes, newlines)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["section", "key", *(safe_cell(clean_text(f"#{r.id} {r.name}")) for r in comparison.runs)])
    for row in comparison.rows():
        cells = (cell(v, p) for v, p in zip(row.values, row.present, strict=True))
        writer.writerow([row.section, safe_cell(row.key), *cells])
    return out.getvalue()
