"""Typed run specifications, one pydantic model per run kind, shared by the CLI, the REST API and the
dashboard form. Importing this package never imports torch."""

from obow.config.presets import (
    build_pretrain_spec,
    format_validation_error,
    list_presets,
    load_pretrain_config,
    preset_dict,
)
from obow.config.pretrain import DataSpec, ModelSpec, OptimSpec, PretrainSpec, RuntimeSpec

__all__ = [
    "DataSpec",
    "ModelSpec",
    "OptimSpec",
    "PretrainSpec",
    "RuntimeSpec",
    "build_pretrain_spec",
    "format_validation_error",
    "list_presets",
    "load_pretrain_config",
    "preset_dict",
]
