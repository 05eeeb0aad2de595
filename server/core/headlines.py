"""A run's main numbers and its headline, read from its `result` or `last_metrics` through the table
each kind declares (`KindInfo.numbers`, `KindInfo.headline` in `obow.config`): the runs list, the run
pages and the parents' tables all show the same number under the same name (a linear probe's test
top-1, never its train top-1)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from obow.config.kinds import KindInfo, Number
from server.core import kinds as kinds_service


def _info(kind: str) -> KindInfo:
    try:
        return kinds_service.info(kind)
    except (KeyError, ImportError, AttributeError):  # a kind this installation no longer has
        return KindInfo()


def _matches(data: Any, parts: list[str], keys: list[str]) -> list[tuple[list[str], Any]]:
    if not parts:
        return [(keys, data)]
    if not isinstance(data, Mapping):
        return []
    head, rest = parts[0], parts[1:]
    if head == "*":
        return [m for key, value in data.items() for m in _matches(value, rest, [*keys, str(key)])]
    return _matches(data[head], rest, keys) if head in data else []


def resolve(number: Number, result: Any, last_metrics: Any) -> list[dict[str, Any]]:
    """Every value `number` names in a run: `{key, label, value, unit}`, finite numbers only."""
    data = result if number.source == "result" else last_metrics
    out = []
    for keys, value in _matches(data, number.path.split("."), []):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        path, star = number.path, iter(keys)
        concrete = ".".join(next(star) if part == "*" else part for part in path.split("."))
        label = number.label.replace("{key}", keys[0]) if keys else number.label
        out.append({"key": concrete, "label": label, "value": float(value), "unit": number.unit})
    return out


def numbers_of(kind: str, result: Any, last_metrics: Any) -> list[dict[str, Any]]:
    """The kind's main numbers that the run has, in the kind's order."""
    return [found for number in _info(kind).numbers for found in resolve(number, result, last_metrics)]


def headline_of(kind: str, result: Any, last_metrics: Any) -> dict[str, Any] | None:
    """The first headline candidate the run has (`{key, label, value, unit}`), or None."""
    for number in _info(kind).headline:
        found = resolve(number, result, last_metrics)
        if found:
            return found[0]
    return None
