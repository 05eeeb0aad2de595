"""Text the lab stores must fit every backend: PostgreSQL refuses NUL in text columns, and neither
database nor JSON can hold a lone surrogate. Workers store texts they did not write (exception messages,
library log lines, file names), so every such text passes through here first."""

from __future__ import annotations

import math
import re
from typing import Any

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: object, max_chars: int | None = None) -> str:
    """`value` as storable text: NUL shown as `\\0`, lone surrogates as U+FFFD, cut to `max_chars`."""
    text = value if isinstance(value, str) else str(value)
    text = _SURROGATE.sub("\ufffd", text.replace("\x00", "\\0"))
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text


def is_clean(text: str) -> bool:
    """No NUL and no lone surrogate: the text can be stored and sent as it is."""
    return "\x00" not in text and _SURROGATE.search(text) is None


def clean_json(value: Any) -> Any:
    """A JSON-like value every backend and every JSON answer can hold: strings (keys too) cleaned with
    `clean_text`, NaN and infinities as None (PostgreSQL's json type and strict JSON have neither),
    tuples as lists, anything else (a path, a tensor's repr) as its text."""
    if isinstance(value, str):
        return value if is_clean(value) else clean_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {clean_text(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return clean_text(value)
