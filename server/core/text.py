"""Text the lab stores must fit every backend: PostgreSQL refuses NUL in text columns, and neither
database nor JSON can hold a lone surrogate. Workers store texts they did not write (exception messages,
library log lines, file names), so every such text passes through here first."""

from __future__ import annotations

import re

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: object, max_chars: int | None = None) -> str:
    """`value` as storable text: NUL shown as `\\0`, lone surrogates as U+FFFD, cut to `max_chars`."""
    text = value if isinstance(value, str) else str(value)
    text = _SURROGATE.sub("\ufffd", text.replace("\x00", "\\0"))
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text
