"""Request and response bodies of the evaluation routes (defaults, cost, result cards, export formats)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.schemas import Headline


class Speed(BaseModel):
    img_per_s: float
    source: str = Field(description="where the speed was measured, in words")
    run_id: int


class CostOut(BaseModel):
    images: int | None = Field(description="images the evaluation will process; null: unknown (a user's folder)")
    parts: list[str] = Field(description="how that count is made up")
    speed: Speed | None = Field(description="the last measured speed; null: none measured yet")
    seconds: float | None = Field(description="estimated time; null when the count or the speed is unknown")
    text: str = Field(description="the estimate in one sentence")


class DefaultsOut(BaseModel):
    kind: str
    parent_id: int
    spec: dict[str, Any] = Field(description="the spec values to launch with (the server fills the checkpoint)")
    notes: list[str] = Field(description="where the values came from")
    cost: CostOut


class CostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(..., min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")
    spec: dict[str, Any] = Field(default_factory=dict)


class CheckpointRef(BaseModel):
    run_id: int | None
    epoch: int | None
    name: str
    artifact_id: int | None


class BaselineOut(BaseModel):
    features: str = Field(description="raw_pixels or random_init")
    label: str
    run_id: int | None = Field(description="the baseline run (null: not computed)")
    state: str | None
    value: float | None = Field(description="its number under the same protocol, once computed")
    delta: float | None = Field(description="this evaluation's headline minus the baseline's")


class CardOut(BaseModel):
    run_id: int
    kind: str
    state: str
    headline: Headline | None
    numbers: list[Headline]
    protocol: str
    checkpoint: CheckpointRef | None
    baselines: list[BaselineOut]


class ExportFormatOut(BaseModel):
    options: list[str]
    suffixes: list[str]
    needs_stock_resnet: bool
    description: str
    allowed: bool
    reason: str | None = Field(description="why this checkpoint cannot take the format")


class ExportFormatsOut(BaseModel):
    backbone: dict[str, Any] | None = Field(
        description="arch, small_stem, width (and block4_width when set apart) of the weights; null: unknown"
    )
    formats: dict[str, ExportFormatOut]
