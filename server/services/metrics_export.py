"""A run's metrics at full resolution, as CSV or JSON, streamed: every stored point (key, step, value,
time), ordered by key, step (and id within a step), read key by key in pages of `PAGE` rows with a
keyset on the step (see `_key_pages`), each page in a short session of its own. Memory stays flat
whatever the run's length (a run can hold millions of points), each page costs the same short index
scan (the download is linear in the points), no transaction stays open while a slow client reads, and
neither SQLite nor PostgreSQL needs a server-side cursor.

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

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.core.models import Metric
from server.core.text import clean_text, is_clean
from server.services.compare import safe_cell

PAGE = 5000
COLUMNS = ("key", "step", "value", "time")
Row = tuple[str, int, float, float]


def _clean(rows) -> list[Row]:
    return [(r[0] if is_clean(r[0]) else clean_text(r[0]), r[1], r[2], r[3]) for r in rows]


def _key_pages(open_session: Callable[[], Session], run_id: int, key: str, page: int) -> Iterator[list[Row]]:
    """One key's points by step: `step > last` in the (run_id, key, step) index's own order, so every page
    costs one short index range scan whatever the run's length. A page that ends inside a group of points
    sharing one step (a step logged twice) stops before that step; the group follows, paged by id."""
    t = Metric.__table__.c  # Core columns: rows come back without the ORM's per-row work
    columns = (t.key, t.step, t.value, t.time, t.id)
    where = (t.run_id == run_id, t.key == key)
    last_step: int | None = None
    while True:
        query = select(*columns).where(*where)
        if last_step is not None:
            query = query.where(t.step > last_step)
        with open_session() as session:
            rows = session.connection().execute(query.order_by(t.step).limit(page)).all()
        if len(rows) < page:
            if rows:
                yield _clean(sorted(rows, key=lambda r: (r[1], r[4])))
            return
        boundary = rows[-1][1]
        before = sorted((r for r in rows if r[1] != boundary), key=lambda r: (r[1], r[4]))
        if before:
            yield _clean(before)
        last_id: int | None = None
        while True:  # every point at the boundary step
            query = select(*columns).where(*where, t.step == boundary)
            if last_id is not None:
                query = query.where(t.id > last_id)
            with open_session() as session:
                group = session.connection().execute(query.order_by(t.id).limit(page)).all()
            if group:
                yield _clean(group)
                last_id = group[-1][4]
            if len(group) < page:
                break
        last_step = boundary


def pages(open_session: Callable[[], Session], run_id: int, page: int | None = None) -> Iterator[list[Row]]:
    """Every point of the run, key by key (the next key found through the index: `min(key) > last`),
    a page at a time."""
    page = page or PAGE
    key: str | None = None
    while True:
        query = select(func.min(Metric.key)).where(Metric.run_id == run_id)
        if key is not None:
            query = query.where(Metric.key > key)
        with open_session() as session:
            key = session.scalar(query)
        if key is None:
            return
        yield from _key_pages(open_session, run_id, key, page)


def _csv_cell(text: str) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([safe_cell(text)])  # quotes a cell holding \r or \n
    return out.getvalue()[:-2]


def csv_chunks(open_session: Callable[[], Session], run_id: int) -> Iterator[str]:
    """A page's points share one key: its quoted cell is made once, the lines by formatting (the csv
    module's quoting applies to the key, the only text column)."""
    yield ",".join(COLUMNS) + "\r\n"
    cells: dict[str, str] = {}
    for rows in pages(open_session, run_id):
        if len(cells) > 1000:
            cells.clear()
        parts = []
        for key, step, value, when in rows:
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _csv_cell(key)
            parts.append(f"{cell},{step},{value!r},{when!r}\r\n")
        yield "".join(parts)


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
