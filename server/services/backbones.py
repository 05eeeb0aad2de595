"""What backbone a run's weights hold (architecture, stem, widths), known without opening the file.

The lab needs this at submit, where no torch may run: which export formats a checkpoint can take, and
which architecture a random-init baseline must have. The facts come from the weights' artifact record
(an import writes `arch`, `small_stem`, `width` into it) or else from the run's own spec (a pretraining
names its backbone in `model`). None when neither says: the worker then checks when it opens the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from obow.io.export_formats import EXPORT_FORMATS, backbone_error
from server.core.models import Artifact, Run


@dataclass(frozen=True)
class Backbone:
    arch: str
    small_stem: bool
    width: float
    block4_width: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Only the facts the backbone has: block4_width when block4 is widened apart."""
        facts: dict[str, Any] = {"arch": self.arch, "small_stem": self.small_stem, "width": self.width}
        return facts if self.block4_width is None else {**facts, "block4_width": self.block4_width}


def _from_mapping(facts: Any, arch: Any) -> Backbone | None:
    if not isinstance(facts, dict) or not isinstance(arch, str):
        return None
    stem, width, block4 = facts.get("small_stem", False), facts.get("width", 1.0), facts.get("block4_width")
    if not isinstance(stem, bool) or isinstance(width, bool) or not isinstance(width, int | float):
        return None
    if block4 is not None and (isinstance(block4, bool) or not isinstance(block4, int | float)):
        return None
    return Backbone(arch, stem, float(width), None if block4 is None else float(block4))


def of_weights(run: Run, artifact: Artifact | None) -> Backbone | None:
    """The backbone of `artifact` (one of `run`'s weights), or of the run's newest weights' spec."""
    options = artifact.options if artifact is not None else None
    if isinstance(options, dict) and "small_stem" in options:
        found = _from_mapping(options, options.get("arch"))
        if found is not None:
            return found
    spec = run.spec if isinstance(run.spec, dict) else {}
    model = spec.get("model")
    if isinstance(model, dict):
        return _from_mapping(model.get("feature_extractor_opts", {}), model.get("feature_extractor_arch"))
    return None


def export_formats(backbone: Backbone | None) -> dict[str, dict[str, Any]]:
    """Every export format with `allowed` and, when refused, the `reason` (the library's own rule)."""
    out: dict[str, dict[str, Any]] = {}
    for name, fmt in EXPORT_FORMATS.items():
        reason = (
            backbone_error(name, backbone.small_stem, backbone.width, backbone.block4_width)
            if backbone is not None else None
        )
        out[name] = {**fmt.facts(), "allowed": reason is None, "reason": reason}
    return out
