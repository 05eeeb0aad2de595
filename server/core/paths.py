"""Path-like spec fields must stay inside the places the operator allowed.

A spec is a request from anyone with a token: a `split_file` of `/proc/self/environ` would make the
worker read its own environment (database password, secret key) and quote it in an error. Every field
a spec class marks with `PathField` is checked at submit (a 422 naming the field and the allowed roots)
and again in the worker before the library opens anything, with symlinks resolved both times:
- data paths resolve inside one of the data roots (`OBOW_LAB_DATA_ROOTS`);
- a cache folder is relative (inside the run's own folder) or inside a cache root;
- weights and uploads are never taken from a request: the lab fills them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from obow.config.kinds import PathRoot
from server.core import kinds as kinds_service
from server.core.settings import Settings

Loc = tuple[str, ...]


def _get(data: Mapping[str, Any], loc: Loc) -> Any:
    for key in loc:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _shown(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots) or "(none configured)"


def path_errors(
    kind: str, spec: Mapping[str, Any], settings: Settings, lab_filled: bool = False, run_dir: Path | None = None
) -> list[tuple[Loc, str]]:
    """(field location, message) for every path-like field of `spec` that points where it may not.

    `lab_filled`: the spec's weights/upload fields were set by the lab (in the worker), not by a request.
    `run_dir`: the run's own folder, where a relative cache folder lies (known in the worker)."""
    errors: list[tuple[Loc, str]] = []
    for loc, root in kinds_service.paths(kind).items():
        value = _get(spec, loc)
        if value is None:
            continue
        if not isinstance(value, str) or "\x00" in value:
            errors.append((loc, "must be a path without NUL bytes"))
            continue
        if root in (PathRoot.WEIGHTS, PathRoot.UPLOAD):
            if not lab_filled:
                source = "parent_id (a run with weights)" if root == PathRoot.WEIGHTS else "an upload"
                errors.append((loc, f"the lab sets this from {source}; do not give a path"))
            continue
        if root == PathRoot.CACHE and not PurePosixPath(value).is_absolute():
            if ".." in PurePosixPath(value).parts:
                errors.append((loc, "a relative cache folder must stay inside the run's folder (no '..')"))
            elif run_dir is not None and not _inside((run_dir / value).resolve(), [run_dir.resolve()]):
                errors.append((loc, "the cache folder resolves outside the run's folder"))
            continue
        roots = settings.cache_roots if root == PathRoot.CACHE else settings.data_roots
        where = "OBOW_LAB_CACHE_ROOTS" if root == PathRoot.CACHE else "OBOW_LAB_DATA_ROOTS"
        if not PurePosixPath(value).is_absolute():
            errors.append((loc, f"give an absolute path inside one of the allowed roots ({where}): {_shown(roots)}"))
            continue
        try:
            resolved = Path(value).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
            errors.append((loc, "cannot be resolved"))
            continue
        if not _inside(resolved, roots):
            errors.append((loc, f"must lie inside one of the allowed roots ({where}): {_shown(roots)}"))
    return errors
