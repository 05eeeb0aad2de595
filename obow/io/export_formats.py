"""What each export format is: the options it honours, its file name endings, what backbone it can hold.

These facts are read by the `ExportSpec` validator (so the API answers 422 naming an option the chosen
format would ignore), by `obow convert` (its --format choices and option checks), by the lab's form
(through `ExportSpec.export_formats()`) and by `obow.export.registry`, which binds each name to its
writer. They live here, free of torch, because `obow.config` imports them and the lab server imports
`obow.config` at request time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# The yes/no options of an export; every format honours a subset of them.
EXPORT_OPTIONS: tuple[str, ...] = ("no_fc", "plain", "rgb2bgr")

ExportFormatName = Literal["torchvision", "caffe2", "detectron2", "safetensors"]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    options: tuple[str, ...]  # the EXPORT_OPTIONS this format honours
    suffixes: tuple[str, ...]  # file name endings of its files, the default one first
    needs_stock_resnet: bool  # 7x7 stem and width 1.0: the readers have no place for anything else
    description: str

    def facts(self) -> dict[str, Any]:
        """The format as plain JSON values (for the API and the form)."""
        return {"options": list(self.options), "suffixes": list(self.suffixes),
                "needs_stock_resnet": self.needs_stock_resnet, "description": self.description}


EXPORT_FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt
    for fmt in (
        ExportFormat("torchvision", ("no_fc", "plain"), (".pth.tar", ".pth"), True,
                     "torchvision ResNet state dict, with the BoW classifier as fc unless no_fc"),
        ExportFormat("caffe2", ("rgb2bgr",), (".pkl",), True,
                     "Caffe2 blobs for Detectron and the fair SSL benchmark (never an fc)"),
        ExportFormat("detectron2", (), (".pkl",), True,
                     "Detectron2 ResNet weights and the settings they need (never an fc)"),
        ExportFormat("safetensors", (), (".safetensors",), False,
                     "The backbone's tensors with its architecture as metadata; any stem and width"),
    )
}


def format_facts() -> dict[str, dict[str, Any]]:
    """Every format's facts as plain JSON values, in registry order."""
    return {name: fmt.facts() for name, fmt in EXPORT_FORMATS.items()}


def formats_honouring(option: str) -> list[str]:
    """The formats that honour `option` (one of EXPORT_OPTIONS), in registry order."""
    return [name for name, fmt in EXPORT_FORMATS.items() if option in fmt.options]


def option_error(fmt: str, option: str) -> str | None:
    """Why `option` cannot be set for format `fmt`, or None when the format honours it."""
    if option in EXPORT_FORMATS[fmt].options:
        return None
    return f"{option} does not apply to format '{fmt}'; it applies to {', '.join(formats_honouring(option))} only"


def backbone_error(fmt: str, small_stem: bool, width: float, block4_width: float | None = None) -> str | None:
    """Why a backbone with this stem and width cannot be exported as `fmt`, or None when it can. The
    torchvision, Caffe2 and Detectron2 readers build a stock ResNet and load into it by name, so they have
    no place for a 3x3 small-image stem or other channel widths. Torch-free: the lab's server asks it at
    submit (from the parent's spec) and its form greys out the formats it refuses."""
    stock = not small_stem and float(width) == 1.0 and (block4_width is None or round(512 * float(block4_width)) == 512)
    if not EXPORT_FORMATS[fmt].needs_stock_resnet or stock:
        return None
    able = ", ".join(name for name, f in EXPORT_FORMATS.items() if not f.needs_stock_resnet)
    return (
        f"{fmt} export needs a standard ResNet (7x7 stem, width 1.0); this backbone has "
        f"small_stem={small_stem}, width={width}"
        + (f", block4_width={block4_width}" if block4_width is not None else "")
        + f": export it as {able} instead"
    )


def export_file_suffixes() -> set[str]:
    """The last suffix (`Path.suffix`) of every format's file names, for telling a file from a folder."""
    return {"." + ending.rsplit(".", 1)[-1] for fmt in EXPORT_FORMATS.values() for ending in fmt.suffixes}
