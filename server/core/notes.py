"""A run's note as HTML: Markdown (CommonMark plus tables and strikethrough) with raw HTML shown as text
and only http(s), mailto and same-site links, so a note can never run script in a reader's browser."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

MAX_NOTE_CHARS = 100_000
# what a link or an image may point at: web, mail, a path or fragment on this site
_SAFE_URL = re.compile(r"^(?:https?:|mailto:|/(?!/)|#|\?)", re.I)


def _safe_link(url: str) -> bool:
    """No `javascript:`, `data:`, `vbscript:`, protocol-relative `//host` or other scheme; markdown-it has
    already normalised the URL (entities decoded, percent-encoded), so `java&#x73;cript:` is caught too."""
    cleaned = "".join(ch for ch in url if ch > " ").strip()
    return bool(_SAFE_URL.match(cleaned)) or (":" not in cleaned.split("/", 1)[0] and not cleaned.startswith("//"))


_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)
_MD.validateLink = _safe_link


def _external_links(renderer, tokens, idx, options, env) -> str:
    tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
    return renderer.renderToken(tokens, idx, options, env)


_MD.add_render_rule("link_open", _external_links)


def render(note: str | None) -> str:
    """The note as safe HTML ('' for none)."""
    return _MD.render(note) if note else ""
