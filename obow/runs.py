"""Run kinds and their entry points, looked up by name.

Each kind maps to its pydantic spec class and its entry point `run_xxx(spec, out_dir, reporter) -> dict`.
Both are imported lazily: the server imports spec classes (no torch); only a worker or the CLI imports
the entry points. A kind is listed here once its library code exists.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from obow.reporting import Reporter

# kind -> ("module:SpecClass", "module:entry_point")
RUN_KINDS: dict[str, tuple[str, str]] = {
    "pretrain": ("obow.config.pretrain:PretrainSpec", "obow.train.engine:run_pretrain"),
    "export": ("obow.config.export:ExportSpec", "obow.export.run:run_export"),
    "import": ("obow.config.export:ImportSpec", "obow.export.run:run_import"),
    "words": ("obow.config.words:WordsSpec", "obow.analysis.run_words:run_words"),
    "linear": ("obow.config.eval:LinearSpec", "obow.eval.linear:run_linear"),
    "semisup": ("obow.config.eval:SemisupSpec", "obow.eval.semisup:run_semisup"),
    "fewshot": ("obow.config.eval:FewshotSpec", "obow.eval.fewshot:run_fewshot"),
    "knn": ("obow.config.eval:KnnSpec", "obow.eval.knn:run_knn"),
    "svm": ("obow.config.eval:SvmSpec", "obow.eval.svm:run_svm"),
    "baseline": ("obow.config.eval:BaselineSpec", "obow.eval.baselines:run_baseline"),
}


def _resolve(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def spec_class(kind: str) -> type[BaseModel]:
    if kind not in RUN_KINDS:
        raise KeyError(f"unknown run kind '{kind}'; known kinds: {', '.join(sorted(RUN_KINDS))}")
    return _resolve(RUN_KINDS[kind][0])


def run(kind: str, spec: BaseModel | dict[str, Any], out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """Validate `spec` for `kind` and run it, writing everything under `out_dir`."""
    cls = spec_class(kind)
    if not isinstance(spec, cls):
        spec = cls.model_validate(spec if isinstance(spec, dict) else spec.model_dump())
    return _resolve(RUN_KINDS[kind][1])(spec, Path(out_dir), reporter)
