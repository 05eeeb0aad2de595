"""Request and response bodies of the sweep API (pydantic), apart from the run schemas in `server.schemas`
so that sweeps stay one feature in their own files. The ORM rows are `server.core.models.Sweep` and
`SweepTrial`; the validation that needs the kind's spec class lives in `server.services.sweeps`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.schemas import INT32_MAX

# a dotted spec path: "optim.lr", "model.bow_extractor_opts.inv_delta"
SPACE_KEY = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
Scalar = bool | int | float | str | None


class Choice(BaseModel):
    """One of the listed values (a grid sweep tries each)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["choice"]
    values: list[Scalar] = Field(..., min_length=1, max_length=1000)


class Uniform(BaseModel):
    """A float drawn uniformly in [low, high] (not in a grid sweep)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["uniform"]
    low: float
    high: float


class LogUniform(BaseModel):
    """A float drawn uniformly in log space in [low, high], low > 0 (not in a grid sweep)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["loguniform"]
    low: float
    high: float


class IntRange(BaseModel):
    """An integer in [low, high] on `step` (a grid sweep tries every one of them)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["int"]
    low: int = Field(..., ge=-INT32_MAX, le=INT32_MAX)
    high: int = Field(..., ge=-INT32_MAX, le=INT32_MAX)
    step: int = Field(1, ge=1, le=INT32_MAX)
    log: bool = False


Dimension = Annotated[Choice | Uniform | LogUniform | IntRange, Field(discriminator="type")]


class Objective(BaseModel):
    """What a trial scores: `metric` of the trial run itself (`source: trial`, e.g. `knn_acc@1` of the
    pretraining's kNN monitor), or of an evaluation child started after each trial (`source: knn`,
    `linear`, ...; metric e.g. `top1.20`, a dotted path into its result), with `eval_spec` overrides."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field(..., min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    source: str = Field("trial", min_length=1, max_length=40, pattern=r"^[a-z_]+$")
    eval_spec: dict[str, Any] = Field(default_factory=dict)


class Pruner(BaseModel):
    """Early stopping of poor trials on their intermediate curve (`metric`, default the pretraining's
    kNN monitor, reported every `every` epochs): Optuna's MedianPruner or SuccessiveHalvingPruner,
    with their keyword `options` (e.g. `n_startup_trials`, `reduction_factor`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["none", "median", "successive_halving"] = "none"
    metric: str = Field("knn_acc@1", min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    every: int = Field(1, ge=1, le=10_000, description="runtime.knn_monitor_every set on the trials")
    options: dict[str, int | float | str] = Field(default_factory=dict)


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, pattern=r"^[A-Za-z0-9_.\-/ ]+$")
    kind: str = Field("pretrain", description="The run kind of every trial")
    preset: str | None = Field(None, description="A preset name from GET /api/v1/presets")
    spec: dict[str, Any] = Field(default_factory=dict, description="Overrides of the preset for every trial")
    space: dict[Annotated[str, Field(pattern=SPACE_KEY, max_length=200)], Dimension] = Field(
        ..., min_length=1, max_length=32, description="Dotted spec key -> its distribution"
    )
    method: Literal["grid", "random", "tpe"] = "tpe"
    seed: int = Field(0, ge=0, le=INT32_MAX)
    budget: int = Field(..., ge=1, le=1000, description="Trials in all (a grid sweep: at most the grid's size)")
    parallel: int = Field(1, ge=1, le=64, description="Trials running at once")
    objective: Objective
    direction: Literal["maximize", "minimize"] = "maximize"
    pruner: Pruner = Field(default_factory=Pruner)


class TrialOut(BaseModel):
    number: int
    params: dict[str, Any]
    state: str
    value: float | None
    run_id: int | None
    run_state: str | None
    eval_run_id: int | None
    eval_state: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    note: str | None


class BestOut(BaseModel):
    number: int
    value: float
    params: dict[str, Any]
    run_id: int | None


class SweepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    preset: str | None
    base_spec: dict[str, Any]
    space: dict[str, Any]
    method: str
    seed: int
    budget: int
    parallel: int
    objective: dict[str, Any]
    direction: str
    pruner: dict[str, Any]
    state: str
    error: str | None
    best_number: int | None
    best_value: float | None
    created_at: datetime
    finished_at: datetime | None


class SweepDetail(SweepOut):
    trials: list[TrialOut]
    counts: dict[str, int]
    best: BestOut | None
    importance: dict[str, float] | None = Field(
        description="Optuna's fANOVA importance of each param (None until 2 trials complete)"
    )


class SweepPage(BaseModel):
    items: list[SweepOut]
    total: int
    limit: int
    offset: int
