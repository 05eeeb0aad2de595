"""The runs list's query language, parsed into SQLAlchemy conditions that run on SQLite and PostgreSQL.

    resnet "long name"          free words: each must match the name, a tag or the note (any case)
    kind:pretrain state:running,queued project:fmnist tag:baseline by:alice parent:12
    archived:yes | archived:any | is:archived   (archived runs are hidden unless asked for)
    optim.lr>0.01  spec.data.dataset=FashionMNIST   a spec value (a dotted key is a spec key)
    knn_top1_k20>=80  metric.loss_total<2           a final metric (latest value, else the result's)
    result.top1>70                                  a value of the run's result

Comparisons are `> >= < <= = !=`; a number compares numerically (rows whose value is missing or not
a number never match), anything else compares as text with `=` / `!=`. Values with spaces are quoted
(`project:"my project"`). A token that cannot be understood is a 422 naming it (`loc: [query, q]`).

Sort keys (`sort=`, `-` in front for descending): a column (id, name, kind, state, project, created,
started, finished, launched_by, progress) or any key a comparison takes (`-knn_top1_k20`,
`spec.optim.lr`); runs without the value come last.

JSON values are read with each backend's own functions (PostgreSQL `jsonb_extract_path`, SQLite
`json_extract`), guarded by the value's JSON type, so a string where a number is expected is no match
instead of a cast error.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Float, Text, and_, case, cast, exists, func, literal, or_, select, true

from server.core.errors import Invalid
from server.core.models import RUN_STATES, Run

MAX_QUERY_CHARS = 2000
MAX_TERMS = 40
# a JSON key in a query: plain characters only, so it can be quoted into a SQLite JSON path as it is
_KEY = r"[A-Za-z0-9_@\-/]+"
_PATH = re.compile(rf"^{_KEY}(?:\.{_KEY})*$")
_COMPARISON = re.compile(rf"^({_KEY}(?:\.{_KEY})*)(>=|<=|!=|=|>|<)(.*)$", re.S)
_FIELD = re.compile(r"^([a-z_]+):(.*)$", re.S)
FIELDS = ("kind", "state", "project", "tag", "name", "note", "by", "parent", "archived", "is")
COLUMNS = {
    "id": Run.id,
    "name": Run.name,
    "kind": Run.kind,
    "state": Run.state,
    "project": Run.project,
    "created": Run.created_at,
    "created_at": Run.created_at,
    "started": Run.started_at,
    "started_at": Run.started_at,
    "finished": Run.finished_at,
    "finished_at": Run.finished_at,
    "launched_by": Run.launched_by,
    "progress": Run.progress_done,
}


class QueryError(Invalid):
    """A 422 naming the token at fault, at `loc` (the query parameter it came in)."""

    def __init__(self, loc: str, token: str, why: str) -> None:
        super().__init__([{"loc": ["query", loc], "msg": f"bad token '{token}': {why}", "type": "query_syntax",
                           "input": token}])


@dataclass
class Search:
    """A parsed query: conditions to AND together, and which archived runs it wants."""

    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    archived: str = "no"  # no | yes | any


def _json_path(column: Any, parts: list[str], dialect: str, want: str) -> ColumnElement[Any]:
    """The value at `parts` inside a JSON column as a number (`want="number"`) or text, else NULL."""
    if dialect == "postgresql":  # jsonb (migration 0007_organise)
        node = func.jsonb_extract_path(column, *[literal(p) for p in parts])
        text = func.jsonb_extract_path_text(column, *[literal(p) for p in parts])
        if want == "number":
            return case((func.jsonb_typeof(node) == "number", cast(text, Float)), else_=None)
        return case((func.jsonb_typeof(node) == "string", text), else_=None)
    path = "$" + "".join(f'."{p}"' for p in parts)
    kinds = ("integer", "real") if want == "number" else ("text",)
    return case((func.json_type(column, path).in_(kinds), func.json_extract(column, path)), else_=None)


def value_of(key: str, dialect: str, want: str = "number") -> ColumnElement[Any]:
    """A spec value, metric or result entry named the way queries and sort keys name them."""
    if not _PATH.match(key):
        raise ValueError("keys are letters, digits and _ @ - / separated by dots")
    parts = key.split(".")
    head = parts[0]
    if head == "spec" and len(parts) > 1:
        return _json_path(Run.spec, parts[1:], dialect, want)
    if head == "result" and len(parts) > 1:
        return _json_path(Run.result, parts[1:], dialect, want)
    if head == "metric" and len(parts) > 1:
        name = ".".join(parts[1:])
    elif len(parts) > 1:
        return _json_path(Run.spec, parts, dialect, want)
    else:
        name = key
    return func.coalesce(
        _json_path(Run.last_metrics, [name], dialect, want), _json_path(Run.result, [name], dialect, want)
    )


def _tag_exists(dialect: str, predicate: Any) -> ColumnElement[bool]:
    """Some tag of the run satisfies `predicate(value_column)`."""
    if dialect == "postgresql":
        elements = func.jsonb_array_elements_text(Run.tags).table_valued("value").alias("tag")
    else:
        elements = func.json_each(Run.tags).table_valued("value").alias("tag")
    return exists(select(1).select_from(elements).where(predicate(elements.c.value)))


# a word that cannot overlap the punctuation of a JSON list of strings (`["a", "b"]`) nor anything JSON
# escapes inside a tag: found in the list's text only inside one tag
_PLAIN_WORD = re.compile(r'^[^\s"\\\[\],]+$')


def _tag_like(dialect: str, word: str) -> ColumnElement[bool]:
    """Some tag contains `word`. On PostgreSQL a plain word is looked for in the tags' JSON text (one
    LIKE per row instead of unnesting every run's tags); SQLite's JSON text escapes non-ASCII, so there,
    and for other words, each tag is tested."""
    if dialect == "postgresql" and _PLAIN_WORD.match(word):
        return cast(Run.tags, Text).icontains(word, autoescape=True)
    return _tag_exists(dialect, lambda v: v.icontains(word, autoescape=True))


def _contains(column: Any, word: str) -> ColumnElement[bool]:
    return column.icontains(word, autoescape=True)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _comparison(token: str, key: str, op: str, raw: str, dialect: str) -> ColumnElement[bool]:
    if raw == "":
        raise QueryError("q", token, f"nothing to compare {key} with")
    number = _number(raw)
    try:
        target = value_of(key, dialect, "number" if number is not None else "text")
    except ValueError as err:
        raise QueryError("q", token, str(err)) from None
    if number is None and op not in ("=", "!="):
        raise QueryError("q", token, f"'{raw}' is not a number; text compares with = or != only")
    value: Any = number if number is not None else raw
    if op == "!=":  # a missing value is "not equal" too
        return or_(target.is_(None), target != value)
    return {
        ">": target > value, ">=": target >= value, "<": target < value, "<=": target <= value, "=": target == value
    }[op]


def _field(token: str, name: str, value: str, dialect: str, search: Search) -> None:
    if name not in FIELDS:
        raise QueryError("q", token, f"unknown field '{name}:'; known: {', '.join(f + ':' for f in FIELDS)}")
    if value == "" and name not in ("project", "by"):
        raise QueryError("q", token, f"'{name}:' needs a value")
    if name == "kind":
        search.conditions.append(Run.kind.in_(value.split(",")))
    elif name == "state":
        states = value.split(",")
        unknown = [s for s in states if s not in RUN_STATES]
        if unknown:
            raise QueryError("q", token, f"unknown state '{unknown[0]}'; known: {', '.join(RUN_STATES)}")
        search.conditions.append(Run.state.in_(states))
    elif name == "project":
        search.conditions.append(Run.project == value)
    elif name == "by":
        search.conditions.append(Run.launched_by == value if value else Run.launched_by.is_(None))
    elif name == "tag":
        search.conditions.append(_tag_exists(dialect, lambda v: v == value))
    elif name == "name":
        search.conditions.append(_contains(Run.name, value))
    elif name == "note":
        search.conditions.append(_contains(Run.note, value))
    elif name == "parent":
        if not value.isdigit() or int(value) >= 2**31:
            raise QueryError("q", token, "'parent:' takes a run id")
        search.conditions.append(Run.parent_id == int(value))
    elif name == "archived":
        if value not in ("yes", "no", "any"):
            raise QueryError("q", token, "'archived:' is yes, no or any")
        search.archived = value
    elif name == "is":
        if value != "archived":
            raise QueryError("q", token, "'is:' only takes 'archived'")
        search.archived = "yes"


def parse(query: str | None, dialect: str) -> Search:
    """The conditions of a query (see the module's docstring); QueryError (422) for a bad token."""
    search = Search()
    if not query or not query.strip():
        return search
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError("q", query[:40] + "…", f"a query has at most {MAX_QUERY_CHARS} characters")
    try:
        tokens = shlex.split(query)
    except ValueError as err:  # an unclosed quote
        raise QueryError("q", query, f"{err}; close the quote") from None
    if len(tokens) > MAX_TERMS:
        raise QueryError("q", tokens[MAX_TERMS], f"a query has at most {MAX_TERMS} terms")
    for token in tokens:
        if not token:
            continue
        if any(ord(c) < 32 or ord(c) == 127 for c in token):
            raise QueryError("q", token.encode("unicode_escape").decode(), "control characters are not allowed")
        found = _FIELD.match(token)
        if found:
            _field(token, found.group(1), found.group(2), dialect, search)
            continue
        found = _COMPARISON.match(token)
        if found:
            search.conditions.append(_comparison(token, *found.groups(), dialect))
            continue
        if re.search(r"[<>=]|^[A-Za-z0-9_]+:", token):
            raise QueryError("q", token, "a comparison is key>number, key=text; keys use letters, digits, _ @ - /")
        search.conditions.append(or_(_contains(Run.name, token), _contains(Run.note, token), _tag_like(dialect, token)))
    return search


def archived_condition(mode: str) -> ColumnElement[bool]:
    if mode == "yes":
        return Run.archived_at.is_not(None)
    if mode == "any":
        return true()
    return Run.archived_at.is_(None)


def sort_key(sort: str | None, dialect: str) -> tuple[ColumnElement[Any], bool] | None:
    """The value to sort by and whether descending (see the module's docstring); None: newest first."""
    if not sort:
        return None
    key = sort[1:] if sort.startswith("-") else sort
    column: Any = COLUMNS.get(key)
    if column is None:
        try:
            column = value_of(key, dialect)
        except ValueError as err:
            raise QueryError("sort", sort, f"{err}; or a column: {', '.join(COLUMNS)}") from None
    return column, sort.startswith("-")


def combine(search: Search) -> ColumnElement[bool]:
    """All of the query's conditions, and its archive filter."""
    return and_(archived_condition(search.archived), *search.conditions)
