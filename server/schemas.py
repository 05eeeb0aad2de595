"""Request and response bodies of the REST API (pydantic); the ORM tables are in `server.core.models`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, computed_field

from server.core import notes
from server.core.headlines import headline_of
from server.core.text import clean_json

# The integer columns a request's numbers end up compared with: run and artifact ids are 32-bit on
# PostgreSQL, log ids and metric steps 64-bit. A number beyond them is refused with a 422 here, not
# passed to the driver (which raises on SQLite and PostgreSQL alike: a 500).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Text a query compares with a column: PostgreSQL text cannot hold NUL (its driver raises), and no kind,
# state or metric key has a control character.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def _or(default: Any) -> Any:
    """Stored values pass `clean_json` on their way out: a row written before the checks (or by hand)
    with a lone surrogate or a NaN must never make a list or a page answer 500; an unreadable JSON
    column (None) becomes the field's empty value."""
    return lambda value: default() if value is None else clean_json(value)


# Output fields read from the database (never trusted to be encodable as they are)
OutText = Annotated[str, BeforeValidator(_or(str))]
OutOptText = Annotated[str | None, BeforeValidator(clean_json)]
OutDict = Annotated[dict[str, Any], BeforeValidator(_or(dict))]
OutOptDict = Annotated[dict[str, Any] | None, BeforeValidator(clean_json)]
OutKeys = Annotated[list[str], BeforeValidator(_or(list))]


def _finite_values(value: Any) -> dict[str, float]:
    """Latest metric values: only finite numbers (the reporter never stores others)."""
    cleaned = clean_json(value) if isinstance(value, dict) else {}
    return {k: v for k, v in cleaned.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


# What a user names and files runs with. Control characters never belong in them (NUL and lone
# surrogates are refused before this, by the strict JSON reader); tags are single words, so that the
# query language's `tag:x` and free words find them.
RunName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Tag = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\s,\"'\x00-\x1f\x7f]+$")
]
Tags = Annotated[list[Tag], Field(max_length=32), AfterValidator(_unique)]
Project = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
]
Note = Annotated[str, Field(max_length=notes.MAX_NOTE_CHARS, description="Markdown (raw HTML is shown as text)")]


class RunCreate(BaseModel):
    """A new run: a kind, and a preset and/or a spec (the spec's keys override the preset's)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(..., description="A run kind from GET /api/v1/kinds, e.g. 'pretrain'")
    preset: str | None = Field(None, description="A preset name from GET /api/v1/presets")
    spec: dict[str, Any] = Field(default_factory=dict, description="The run's spec, or overrides")
    parent_id: int | None = Field(
        None, ge=1, le=INT32_MAX, description="The run whose latest checkpoint an evaluation/export starts from"
    )
    name: RunName | None = Field(None, description="Display name (default: the spec's name, else the kind)")
    tags: Tags = Field(default_factory=list, description="Single words, at most 32")
    note: Note = ""
    project: Project = Field("", description="The project or experiment the run belongs to")


class RunPatch(BaseModel):
    """What can change on a run after launch: how it is named and filed, never its spec or state."""

    model_config = ConfigDict(extra="forbid")

    name: RunName | None = None
    tags: Tags | None = None
    note: Note | None = None
    project: Project | None = None
    archived: bool | None = Field(None, description="true hides the run and its children from the default list")


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = Field(..., min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")
    options: dict[str, Any] = Field(default_factory=dict)
    artifact_id: int | None = Field(
        None, ge=1, le=INT32_MAX, description="Which of the run's checkpoints to convert (default: the newest)"
    )


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    worker_host: OutText
    gpu: OutOptText
    pid: int
    started_at: datetime
    ended_at: datetime | None
    outcome: OutOptText
    error: OutOptText
    provenance: OutOptDict = Field(
        None, description="versions, host, GPUs, git commit, the resolved spec and the seed this attempt ran with"
    )


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    kind: OutText
    format: OutOptText
    options: OutDict
    name: OutText
    sha256: str
    size: int
    created_at: datetime
    download_url: str


class Headline(BaseModel):
    key: str = Field(description="where the number is: a dotted path into the run's result or last_metrics")
    label: str
    value: float
    unit: str


class RunSummary(BaseModel):
    """A run in a list (`GET /runs`, a run's children): everything but its spec, which can be up to the
    body cap in size; a page of runs stays small. `GET /runs/{id}` has the spec."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: OutText
    name: OutText
    preset: OutOptText
    parent_id: int | None
    retry_of_id: int | None
    queue: str
    state: str
    cancel_requested: bool
    progress_done: int
    progress_total: int
    phase: OutOptDict = Field(None, description="the current phase: label, unit, done, total, rate, eta_s")
    metric_keys: OutKeys
    last_metrics: Annotated[dict[str, float], BeforeValidator(_finite_values)]
    result: OutOptDict
    error: OutOptText
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    tags: OutKeys = []
    project: OutText = ""
    launched_by: OutOptText = None
    archived_at: datetime | None = None
    child_count: int | None = Field(None, description="Only with top_level=true: how many runs have it as parent")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def headline(self) -> Headline | None:
        """The kind's main number (its table in `KindInfo.headline`): what a list of runs shows."""
        found = headline_of(self.kind, self.result, self.last_metrics)
        return Headline(**found) if found else None


class RunOut(RunSummary):
    spec: OutDict
    note: OutText = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def note_html(self) -> str:
        """The note rendered as safe HTML (what the run page shows)."""
        return notes.render(self.note)


class RunDetail(RunOut):
    attempts: list[AttemptOut]
    artifacts: list[ArtifactOut]
    children: list[RunSummary]


class RunPage(BaseModel):
    items: list[RunSummary]
    total: int
    limit: int
    offset: int


class RunUsage(BaseModel):
    """What a run holds, with its children (and theirs): what deleting it removes."""

    run_id: int
    run_ids: list[int] = Field(description="The run and every run below it")
    active: list[int] = Field(description="Runs among them that are not finished (deleting is refused)")
    metric_points: int
    log_lines: int
    artifacts: int = Field(description="Artifact rows")
    files: int = Field(description="Files on disk: the runs' folders, their uploads, pins no other run uses")
    bytes: int


class UsageRow(BaseModel):
    run_id: int
    name: str
    kind: str
    state: str
    files: int
    bytes: int


class UsageTotal(BaseModel):
    """Disk use of the artifact store, by folder and by run (largest first)."""

    total_bytes: int
    total_files: int
    runs_bytes: int
    pinned_bytes: int
    uploads_bytes: int
    other_bytes: int
    runs: list[UsageRow]


class Series(BaseModel):
    key: str
    steps: list[int]
    values: list[float]
    downsampled: bool
    total_points: int


class MetricsOut(BaseModel):
    run_id: int
    series: list[Series]


class LogOut(BaseModel):
    id: int
    time: float
    level: OutText
    message: OutText


class PresetOut(BaseModel):
    name: str
    kind: str


class KindOut(BaseModel):
    kind: str
    queue: str
    needs_parent: bool = Field(description="evaluations and exports start from a parent run's weights")
    weights_field: str | None = Field(description="the spec field the server fills from the parent's weights")
    upload_field: str | None = Field(description="the spec field the server fills with an upload (imports)")
    path_fields: dict[str, str] = Field(
        description="dotted spec field -> where it may point: data (a data root), cache, weights, upload"
    )
    numbers: list[dict[str, str]] = Field(
        default_factory=list, description="the kind's main numbers: source (result/last_metrics), path, label, unit"
    )
    headline: list[dict[str, str]] = Field(
        default_factory=list, description="headline candidates, the first present is what lists show"
    )
    json_schema: dict[str, Any]


class WordsCreate(BaseModel):
    """A visual-word gallery of a run's latest checkpoint; small defaults so a CPU worker is quick."""

    model_config = ConfigDict(extra="forbid")

    words: int = Field(64, ge=1, le=8192)
    patches: int = Field(8, ge=1, le=64)
    max_images: int = Field(2000, ge=1, le=INT32_MAX)
    levels: list[str] | None = None
