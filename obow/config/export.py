"""Specs of the export and import run kinds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from obow.config.pretrain import StrictModel

SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$"  # a plain file name: no folders, no leading dot


class ExportSpec(StrictModel):
    kind: Literal["export"] = "export"
    checkpoint: str = Field(description="OBoW Lab checkpoint or an official/torchvision file")
    format: Literal["torchvision", "caffe2", "detectron2", "safetensors"] = "torchvision"
    no_fc: bool = Field(False, description="torchvision: leave out the BoW classifier fc (common for transfer)")
    plain: bool = Field(False, description="torchvision: a plain state dict instead of {'network': ...}")
    rgb2bgr: bool = Field(False, description="caffe2: flip conv1's input channels for BGR readers (OpenCV)")
    output_name: str | None = Field(None, pattern=SAFE_NAME, description="File name (default: the original's)")


class ImportSpec(StrictModel):
    kind: Literal["import"] = "import"
    path: str = Field(description="The uploaded official OBoW or torchvision file")
    name: str | None = Field(None, pattern=SAFE_NAME, description="Output file name (default: derived)")
