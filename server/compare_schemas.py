"""Request/response bodies of the comparison API (`server.api.routes.compare`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Axis = Literal["step", "epoch", "time", "images"]


class CompareRow(BaseModel):
    section: Literal["spec", "metric", "result", "evaluation"]
    key: str = Field(description="Dotted key: a spec field (optim.lr), a metric, a result, <eval kind>.<result>")
    values: list[Any] = Field(description="The value in each run, in the order of `runs` (null where missing)")
    present: list[bool] = Field(description="False where the run has no such key (missing, not a null value)")
    sources: list[int | None] | None = Field(None, description="Evaluations: the child run each value is from")


class CompareRun(BaseModel):
    id: int
    name: str
    kind: str
    state: str
    preset: str | None
    parent_id: int | None
    metric_keys: list[str]
    evaluations: dict[str, int] = Field(description="Evaluation kind -> its newest succeeded child run")


class CompareOut(BaseModel):
    runs: list[CompareRun]
    spec_diff: list[CompareRow] = Field(description="Only the spec keys whose value is not the same in every run")
    same_spec_keys: int = Field(description="How many spec keys are the same in every run (not listed)")
    metrics: list[CompareRow] = Field(description="Each metric's latest value")
    results: list[CompareRow] = Field(description="The numbers of each run's own result")
    evaluations: list[CompareRow] = Field(description="Results of each run's newest evaluation of each kind")


class SeriesRun(BaseModel):
    run_id: int
    x: list[float]
    y: list[float]
    downsampled: bool
    total_points: int
    note: str | None = Field(None, description="Why the run has no points on this axis, if it has none")


class CompareSeriesOut(BaseModel):
    key: str
    x_axis: Axis
    x_label: str
    runs: list[SeriesRun]
