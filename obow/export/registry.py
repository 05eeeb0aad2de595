"""The `format -> writer` registry: the format facts of `obow.io.export_formats`, each bound to its writer.

`run_export` finds everything format-specific here: the writer, the default file name, whether the
backbone must be a stock ResNet. The binding is checked when this module is imported: a format without
a writer, or a writer without a format, is an error at once rather than at a user's first export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from obow.config.export import ExportSpec
from obow.export import writers
from obow.io.export_formats import EXPORT_FORMATS, ExportFormat

# (spec, arch, epoch, words of the BoW fc or None) -> file name
Namer = Callable[[ExportSpec, str, int, int | None], str]


@dataclass(frozen=True)
class BoundFormat:
    facts: ExportFormat
    write: writers.Exporter
    default_name: Namer


def _torchvision_name(spec: ExportSpec, arch: str, epoch: int, num_words: int | None) -> str:
    wrapped, plain = EXPORT_FORMATS["torchvision"].suffixes
    if spec.plain:
        words = "" if num_words is None else f"_K{num_words}"
        return f"torchvision_{arch}_student{words}_epoch{epoch}{'_nofc' if spec.no_fc else ''}{plain}"
    if spec.no_fc:
        return f"tochvision_{arch}_student_epoch{epoch}_nofc{wrapped}"
    return f"tochvision_{arch}_student_K{num_words}_epoch{epoch}{wrapped}"  # the original's (misspelt) name


def _caffe2_name(spec: ExportSpec, arch: str, epoch: int, num_words: int | None) -> str:
    return f"{arch}_student_epoch{epoch}_caffe2{'_bgr' if spec.rgb2bgr else ''}{EXPORT_FORMATS['caffe2'].suffixes[0]}"


def _detectron2_name(spec: ExportSpec, arch: str, epoch: int, num_words: int | None) -> str:
    return f"{arch}_student_epoch{epoch}_detectron2{EXPORT_FORMATS['detectron2'].suffixes[0]}"


def _safetensors_name(spec: ExportSpec, arch: str, epoch: int, num_words: int | None) -> str:
    return f"{arch}_student_epoch{epoch}{EXPORT_FORMATS['safetensors'].suffixes[0]}"


def _bind(bindings: dict[str, tuple[writers.Exporter, Namer]]) -> dict[str, BoundFormat]:
    if set(bindings) != set(EXPORT_FORMATS):
        raise RuntimeError(f"export writers {sorted(bindings)} do not match the formats {sorted(EXPORT_FORMATS)}")
    return {name: BoundFormat(EXPORT_FORMATS[name], *bindings[name]) for name in EXPORT_FORMATS}


EXPORTERS: dict[str, BoundFormat] = _bind({
    "torchvision": (writers.export_torchvision, _torchvision_name),
    "caffe2": (writers.export_caffe2, _caffe2_name),
    "detectron2": (writers.export_detectron2, _detectron2_name),
    "safetensors": (writers.export_safetensors, _safetensors_name),
})
