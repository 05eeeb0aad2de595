"""What the lab needs to know about a run kind, declared on its spec class (torch-free).

A spec class carries `lab: ClassVar[KindInfo]` (its queue, the field that receives the parent run's
weights, the field that receives an upload) and marks its path-like fields with `PathField(root)` in
their `Annotated` metadata. The lab's server, its CLI and the dashboard read these facts from the
class (or from `/api/v1/kinds`), so no field name is guessed anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel


class PathRoot(StrEnum):
    """Where a path-like field may point."""

    DATA = "data"  # inside one of the configured data roots (datasets, split and label files)
    CACHE = "cache"  # inside the run's own folder or a configured cache root
    WEIGHTS = "weights"  # set by the lab from the parent run's weights, never by a request
    UPLOAD = "upload"  # set by the lab to the uploaded file, never by a request


@dataclass(frozen=True)
class PathField:
    """`Annotated[str | None, PathField(PathRoot.DATA)]`: this string names a file or folder."""

    root: PathRoot


@dataclass(frozen=True)
class Number:
    """Where one of a kind's reported numbers lives: `source` (the run's `result` or its `last_metrics`)
    and a dotted `path` into it. A `*` part stands for every key at that level, in order (kNN's k values,
    few-shot's shots), and `{key}` in the label is replaced by the key it matched."""

    source: Literal["result", "last_metrics"]
    path: str
    label: str
    unit: str = "%"

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "path": self.path, "label": self.label, "unit": self.unit}


@dataclass(frozen=True)
class KindInfo:
    queue: Literal["gpu", "cpu"] = "gpu"
    weights_field: str | None = None  # filled from the parent run's newest weights
    upload_field: str | None = None  # filled with the uploaded file (imports)
    # the main numbers of a run of this kind, the headline first; the first headline candidate present
    # in a run is what a runs list shows (e.g. a linear probe's test top-1, never its train top-1)
    numbers: tuple[Number, ...] = ()
    headline: tuple[Number, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "weights_field": self.weights_field, "upload_field": self.upload_field,
                "numbers": [n.as_dict() for n in self.numbers], "headline": [n.as_dict() for n in self.headline]}


def kind_info(cls: type[BaseModel]) -> KindInfo:
    return getattr(cls, "lab", None) or KindInfo()


def path_fields(cls: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], PathRoot]:
    """Every path-like field of a spec class, nested sections included: location -> allowed root."""
    found: dict[tuple[str, ...], PathRoot] = {}
    for name, info in cls.model_fields.items():
        loc = (*prefix, name)
        marks = [m for m in info.metadata if isinstance(m, PathField)]
        if marks:
            found[loc] = marks[0].root
            continue
        for candidate in (info.annotation, *get_args(info.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and get_origin(candidate) is None:
                found.update(path_fields(candidate, loc))
    return found
