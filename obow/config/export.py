"""Specs of the export and import run kinds."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from obow.config.kinds import KindInfo, PathField, PathRoot
from obow.config.pretrain import StrictModel

SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$"  # a plain file name: no folders, no leading dot


class ExportSpec(StrictModel):
    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", weights_field="checkpoint")

    kind: Literal["export"] = "export"
    checkpoint: Annotated[str, PathField(PathRoot.WEIGHTS)] = Field(
        description="OBoW Lab checkpoint or an official/torchvision file"
    )
    format: Literal["torchvision", "caffe2", "detectron2", "safetensors"] = "torchvision"
    no_fc: bool = Field(False, description="torchvision: leave out the BoW classifier fc (common for transfer)")
    plain: bool = Field(False, description="torchvision: a plain state dict instead of {'network': ...}")
    rgb2bgr: bool = Field(False, description="caffe2: flip conv1's input channels for BGR readers (OpenCV)")
    output_name: str | None = Field(None, pattern=SAFE_NAME, description="File name (default: the original's)")


class ImportSpec(StrictModel):
    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", upload_field="path")

    kind: Literal["import"] = "import"
    path: Annotated[str, PathField(PathRoot.UPLOAD)] = Field(
        description="The uploaded official OBoW or torchvision file"
    )
    name: str | None = Field(None, pattern=SAFE_NAME, description="Output file name (default: derived)")
