"""A run's metrics at full resolution, as CSV or JSON, streamed: every stored point (key, step, value,
time), ordered by key then step, read in pages of `PAGE` rows with a keyset (key, step, id) > last, each
page in a short session of its own. Memory stays flat whatever the run's length (a run can hold
millions of points), no transaction stays open while a slow client reads, and neither SQLite nor
PostgreSQL needs a server-side cursor.

CSV: `key,step,value,time` with the csv module's quoting (keys with commas, quotes or newlines come
back intact), floats in full precision (`repr`), time as Unix seconds. A key that a spreadsheet would
run as a formula (starting = + - @) gets a leading '. JSON: `{"run_id", "columns", "points": [[key,
step, value, time], ...]}`; a non-finite value (only a row written by hand can hold one) is null.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from server.core.models import Metric
from server.core.text import clean_text, is_clean
from server.services.compare import safe_cell

PAGE = 5000
COLUMNS = ("key", "step", "value", "time")
Row = tuple[str, int, float, float]


def pages(open_session: Callable[[], Session], run_id: int, page: int = PAGE) -> Iterator[list[Row]]:
    """Every point of the run, a page at a time."""
    last: tuple[str, int, int] | None = None
    while True:
        query = select(Metric.key, Metric.step, Metric.value, Metric.time, Metric.id).where(Metric.run_id == run_id)
        if last is not None:
            query = query.where(tuple_(Metric.key, Metric.step, Metric.id) > last)
        with open_session() as session:
            rows = session.execute(query.order_by(Metric.key, Metric.step, Metric.id).limit(page)).all()
        if not rows:
            return
        last = (rows[-1][0], rows[-1][1], rows[-1][4])
        yield [(r[0] if is_clean(r[0]) else clean_text(r[0]), r[1], r[2], r[3]) for r in rows]
        if len(rows) < page:
            return


def csv_chunks(open_session: Callable[[], Session], run_id: int) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for rows in pages(open_session, run_id):
        for key, step, value, when in rows:
            writer.writerow((safe_cell(key), step, repr(value), repr(when)))
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    tail = out.getvalue()
    if tail:
        yield tail


def _number(value: float) -> str:
    return repr(value) if math.isfinite(value) else "null"


def json_chunks(open_session: Callable[[], Session], run_id: int) -> Iterator[str]:
    yield f'{{"run_id": {run_id}, "columns": {json.dumps(COLUMNS)}, "points": ['
    first = True
    for rows in pages(open_session, run_id):
        parts = [
            f"[{json.dumps(key)}, {step}, {_number(value)}, {_number(when)}]" for key, step, value, when in rows
        ]
        yield ("" if first else ", ") + ", ".join(parts)
        first = False
    yield "]}\n"
