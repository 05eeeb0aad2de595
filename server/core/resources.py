"""Where the lab's own files are: Jinja2 templates, Alembic migrations and static assets.

An installed wheel carries them as package data inside `server/` (the build maps the repository's
top-level `templates/` and `migrations/` there, see setup.py); a source checkout has them at the top.
"""

from __future__ import annotations

from pathlib import Path

SERVER_DIR = Path(__file__).resolve().parent.parent


def lab_dir(name: str) -> Path:
    """`templates`, `migrations` or `static`: the packaged copy if there is one, else the source tree's."""
    packaged = SERVER_DIR / name
    if packaged.is_dir():
        return packaged
    source = SERVER_DIR.parent / name
    if source.is_dir():
        return source
    raise FileNotFoundError(f"the lab's '{name}' folder is missing from {SERVER_DIR} (a broken install?)")
