"""Specs of the export and import run kinds."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from obow.config.kinds import KindInfo, PathField, PathRoot
from obow.config.pretrain import StrictModel
from obow.io.export_formats import EXPORT_OPTIONS, ExportFormatName, format_facts, option_error

SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$"  # a plain file name: no folders, no leading dot


class ExportSpec(StrictModel):
    """An export of a checkpoint's student. An option the chosen format would ignore is an error naming
    that option (the API's 422 points at it), so a spec never promises what the file will not hold.
    The JSON schema carries the formats' facts under `x-export-formats`, so the lab's form can offer
    each format only the options it honours."""

    model_config = ConfigDict(json_schema_extra={"x-export-formats": format_facts()})
    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", weights_field="checkpoint")

    kind: Literal["export"] = "export"
    checkpoint: Annotated[str, PathField(PathRoot.WEIGHTS)] = Field(
        description="OBoW Lab checkpoint or an official/torchvision file"
    )
    format: ExportFormatName = "torchvision"  # declared before the options: their validator reads it
    no_fc: bool = Field(False, description="torchvision: leave out the BoW classifier fc (common for transfer)")
    plain: bool = Field(False, description="torchvision: a plain state dict instead of {'network': ...}")
    rgb2bgr: bool = Field(False, description="caffe2: flip conv1's input channels for BGR readers (OpenCV)")
    output_name: str | None = Field(None, pattern=SAFE_NAME, description="File name (default: the original's)")

    @field_validator(*EXPORT_OPTIONS)
    @classmethod
    def _option_fits_format(cls, value: bool, info: ValidationInfo) -> bool:
        fmt = info.data.get("format")  # absent when the format itself was invalid: that error is enough
        if value and fmt is not None and info.field_name is not None:
            problem = option_error(fmt, info.field_name)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _options_fit_format(self) -> ExportSpec:
        """The same rule when `format` is changed by assignment after the options were set."""
        for option in EXPORT_OPTIONS:
            problem = option_error(self.format, option) if getattr(self, option) else None
            if problem:
                raise ValueError(problem)
        return self

    @classmethod
    def export_formats(cls) -> dict[str, dict[str, Any]]:
        """`{format: {"options": [...], "suffixes": [...], "needs_stock_resnet": bool, "description": str}}`,
        the facts the validator checks against, for the API and the form."""
        return format_facts()


class ImportSpec(StrictModel):
    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", upload_field="path")

    kind: Literal["import"] = "import"
    path: Annotated[str, PathField(PathRoot.UPLOAD)] = Field(
        description="The uploaded official OBoW or torchvision file"
    )
    name: str | None = Field(None, pattern=SAFE_NAME, description="Output file name (default: derived)")
