"""Typed specification of an OBoW pretraining run.

The three sections (`model`, `optim`, `data`) use the key names of the original OBoW YAML files, so those
files validate as they are; everything this project adds (small-image stem, view sizes, runtime options)
has defaults that reproduce the original behaviour. Every model forbids unknown keys: a typo in a config
is an error naming the key, never a silently ignored setting.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from obow.config.kinds import KindInfo, Number, PathField, PathRoot

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BowLevel = Literal["block3", "block4"]


# Finite bounds for every number a spec holds. A spec may come from a request (hostile until validated):
# a number beyond what the library (torch/numpy seeds, int32 image counts) or a database column can hold
# must be an error naming the field at submit, not an overflow in the worker hours later. Non-finite
# floats ("inf", "nan", "Infinity" strings included) are refused by every spec model (allow_inf_nan).
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_COUNT = 2**31 - 1  # images, iterations, steps: what an int32 index holds
MAX_PX = 4_096  # image and crop sizes in pixels
MAX_LR = 1e4
MAX_SEED = 2**32 - 1  # numpy's seed range; torch's is wider
MAX_WORDS = 1_048_576  # vocabulary size per level
MAX_SCALE = 1e4  # inverse temperatures, logit scales
MAX_SECONDS = 1e9

Epochs = Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Scale = Annotated[float, Field(gt=0, le=MAX_SCALE)]
Words = Annotated[int, Field(ge=1, le=MAX_WORDS)]
PixelStat = Annotated[float, Field(ge=-10, le=10)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class FeatureExtractorOpts(StrictModel):
    """Backbone options. `small_stem`, `width` and `block4_width` exist for small images and CPU budgets."""

    # Every original config sets it; the student's features are always globally average-pooled, so any
    # other value would be silently ignored: it is refused instead.
    global_pooling: Literal[True] = Field(True, description="Global average pooling of block4 (always on)")
    small_stem: bool = Field(
        False, description="3x3 stride-1 first conv and no max-pool (stride 8 to block4), for small images"
    )
    width: float = Field(1.0, gt=0, le=4, description="Channel multiplier of every stage (1.0 = torchvision)")
    block4_width: float | None = Field(
        None, gt=0, le=4, description="Channel multiplier of block4 alone (default: width); widens the pooled "
        "features for little compute on a small-stem network"
    )

    @field_validator("width", "block4_width", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # pydantic would read true as a width of 1.0
            raise ValueError("a channel multiplier is a number, not true/false")
        return value


class BowExtractorOpts(StrictModel):
    inv_delta: Scale | list[Scale] = Field(10.0, description="Base inverse temperature of the soft assignment")
    num_words: Words | list[Words] = Field(8192, description="Vocabulary size K per level")
    bow_pool: Literal["max", "avg"] = "max"
    update_type: Literal["local_average", "no_averaging", "global_average"] = "local_average"
    min_distance_decay: float = Field(0.99, ge=0, lt=1, description="EMA decay of the mean minimum distance")


class BowPredictorOpts(StrictModel):
    kappa: Scale | list[Scale] = Field(5.0, description="Fixed scale of the BoW logits")
    learn_kappa: bool = False


class ModelSpec(StrictModel):
    alpha: float = Field(0.99, gt=0, le=1, description="Teacher EMA momentum (start value if cosine)")
    alpha_cosine: bool = True
    feature_extractor_arch: Literal["resnet18", "resnet50"] = "resnet18"
    feature_extractor_opts: FeatureExtractorOpts = FeatureExtractorOpts()
    bow_levels: list[BowLevel] = Field(default_factory=lambda: ["block4"], min_length=1)
    bow_extractor_opts: BowExtractorOpts = BowExtractorOpts()
    bow_predictor_opts: BowPredictorOpts = BowPredictorOpts()
    num_classes: int | None = Field(
        1000, ge=1, le=1_000_000, description="Classes of the detached monitoring linear head (None: no monitor head)"
    )

    @field_validator("bow_levels")
    @classmethod
    def _ordered_unique(cls, levels: list[str]) -> list[str]:
        if len(set(levels)) != len(levels):
            raise ValueError("bow_levels must not repeat a level")
        return sorted(levels)

    @model_validator(mode="after")
    def _per_level_lists(self) -> ModelSpec:
        n = len(self.bow_levels)
        for owner, key in (
            (self.bow_extractor_opts, "inv_delta"),
            (self.bow_extractor_opts, "num_words"),
            (self.bow_predictor_opts, "kappa"),
        ):
            value = getattr(owner, key)
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"{key} has {len(value)} values but there are {n} bow_levels")
        return self

    def per_level(self, key: str) -> list:
        """`inv_delta`, `num_words` or `kappa` as one value per BoW level."""
        owner = self.bow_predictor_opts if key == "kappa" else self.bow_extractor_opts
        value = getattr(owner, key)
        return list(value) if isinstance(value, list) else [value] * len(self.bow_levels)


class OptimSpec(StrictModel):
    optim_type: Literal["sgd"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    nesterov: bool = False
    num_epochs: int = Field(80, ge=1, le=MAX_EPOCHS)
    lr: float = Field(0.05, gt=0, le=MAX_LR)
    end_lr: float = Field(0.0, ge=0, le=MAX_LR)
    lr_schedule_type: Literal["cos", "cos_warmup", "step_lr"] = "cos"
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS)
    warmup_iters: int = Field(
        0, ge=0, le=MAX_COUNT, description="Linear lr warm-up over the first N iterations (schedule 'cos' only)"
    )
    lr_schedule: list[Epochs] = Field(default_factory=list, max_length=1000, description="Milestone epochs of step_lr")
    lr_decay: float = Field(0.1, gt=0, le=1)
    permanent: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="Keep every N-th epoch checkpoint")

    @model_validator(mode="after")
    def _warmup_fits(self) -> OptimSpec:
        if self.lr_schedule_type == "cos_warmup" and self.warmup_epochs >= self.num_epochs:
            raise ValueError("warmup_epochs must be smaller than num_epochs")
        if self.warmup_iters and self.lr_schedule_type != "cos":
            raise ValueError("warmup_iters applies to lr_schedule_type 'cos' only (cos_warmup has warmup_epochs)")
        return self


DatasetName = Literal["ImageNet", "ImageFolder", "FashionMNIST", "MNIST", "FoolboxImageNet", "Synthetic"]


class DataSpec(StrictModel):
    """Data and multi-crop settings; sizes default to the ImageNet ones of the paper."""

    dataset_name: DatasetName = "ImageNet"
    data_dir: Annotated[str | None, PathField(PathRoot.DATA)] = Field(
        None, description="Dataset folder (ImageFolder root with train/ and val/, or the IDX files); None: default"
    )
    batch_size: int = Field(256, ge=1, le=MAX_BATCH, description="Total batch size over all processes")
    epoch_size: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Resample the training set to this length"
    )
    subset: int | None = Field(
        None, ge=-1, le=MAX_COUNT, description="Keep the first N images of each class (-1/None: all)"
    )
    # teacher view
    teacher_resize: int = Field(256, ge=8, le=MAX_PX)
    teacher_size: int = Field(224, ge=8, le=MAX_PX)
    # random resized crops
    cjitter: list[Annotated[float, Field(ge=0, le=10)]] = Field(
        default_factory=lambda: [0.4, 0.4, 0.4, 0.1], min_length=4, max_length=4
    )
    cjitter_p: float = Field(0.8, ge=0, le=1)
    gray_p: float = Field(0.2, ge=0, le=1)
    gaussian_blur: list[Annotated[float, Field(ge=0, le=100)]] | None = Field(
        default_factory=lambda: [0.1, 2.0], max_length=2
    )
    gaussian_blur_p: float = Field(0.5, ge=0, le=1)
    num_img_crops: int = Field(2, ge=0, le=64)
    image_crop_size: int = Field(160, ge=8, le=MAX_PX)
    image_crop_range: list[Fraction] = Field(default_factory=lambda: [0.08, 0.6], min_length=2, max_length=2)
    # grid patches
    num_img_patches: int = Field(0, ge=0, le=9)
    img_patch_preresize: int = Field(256, ge=8, le=MAX_PX)
    img_patch_preresize_range: list[Fraction] = Field(
        default_factory=lambda: [0.6, 1.0], min_length=2, max_length=2
    )
    img_patch_size: int = Field(96, ge=4, le=MAX_PX)
    img_patch_jitter: int = Field(24, ge=0, le=MAX_PX)
    only_patches: bool = False
    # normalisation
    mean: list[PixelStat] = Field(default_factory=lambda: list(IMAGENET_MEAN), min_length=3, max_length=3)
    std: list[Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=lambda: list(IMAGENET_STD), min_length=3, max_length=3
    )
    # held-out split used by the monitor head / kNN monitor
    val_split: Literal["val", "test", "none"] = "val"

    @field_validator("subset")
    @classmethod
    def _subset_all(cls, value: int | None) -> int | None:
        return None if value is None or value < 0 else value

    @model_validator(mode="after")
    def _geometry(self) -> DataSpec:
        if self.teacher_size > self.teacher_resize:
            raise ValueError("teacher_size must not exceed teacher_resize")
        if self.num_img_patches:
            room = self.img_patch_preresize - self.img_patch_size - self.img_patch_jitter
            if room < 0:
                raise ValueError("img_patch_preresize must be at least img_patch_size + img_patch_jitter")
        if self.num_img_crops == 0 and self.num_img_patches == 0:
            raise ValueError("at least one of num_img_crops and num_img_patches must be > 0")
        lo, hi = self.image_crop_range
        if not 0 < lo <= hi <= 1:
            raise ValueError("image_crop_range must satisfy 0 < min <= max <= 1")
        return self


class RuntimeSpec(StrictModel):
    """How to run, not what to learn: nothing here changes the method, except that `budget_schedule` fits
    the lr and momentum schedules to the steps that `time_budget_s` allows."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    workers: int = Field(2, ge=0, le=256)
    threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch intra-op threads of each training process; None: on the CPU, the cores per process "
        "less its loader workers (unless OMP_NUM_THREADS is set), on a GPU torch's default",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_processes: int = Field(
        1, ge=1, le=64, description="DDP processes on this node (one per GPU; gloo processes on CPU)"
    )
    dist_url: str | None = Field(None, description="torch.distributed init method; None: a free local port")
    resume: bool = Field(True, description="Continue from the newest checkpoint in the output folder")
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    data_pipeline: Literal["pil", "batched"] = Field(
        "pil",
        description="Views per sample with PIL in the loader workers, or per batch with tensor ops on the "
        "training device (decoded by torchvision.io, on the GPU when training there)",
    )
    compile: bool = False
    print_freq: int = Field(50, ge=1, le=MAX_COUNT)
    save_every_iters: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Also checkpoint inside an epoch every N iterations (resume granularity)"
    )
    max_iters_per_epoch: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Cap on iterations per epoch (smoke runs)"
    )
    time_budget_s: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="End the run after this many seconds, as a finished run (final monitor and checkpoint)",
    )
    budget_schedule: bool = Field(
        False,
        description="With time_budget_s: measure the step time over the first steps, fix the run's length "
        "to the steps the budget allows (at most num_epochs) and run the lr and teacher-momentum cosines "
        "to their end within it",
    )
    budget_probe_steps: int = Field(
        20, ge=1, le=10_000, description="Steps timed (after 3 unmeasured ones) to fit a budgeted schedule"
    )
    budget_reserve: float = Field(
        0.05, ge=0, lt=1, description="Share of the remaining budget kept free of steps (epoch ends, checkpoints)"
    )
    knn_monitor_every: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="kNN accuracy on held-out data every N epochs"
    )
    health_window: int = Field(
        50, ge=1, le=MAX_COUNT, description="Steps over which vocabulary usage is summarised"
    )
    collapse_threshold: float = Field(
        0.05, ge=0, le=1, description="Warn when fewer than this share of the words is used in a window"
    )
    knn_monitor_at_start: bool = Field(
        False,
        description="With knn_monitor_every: also score the untrained student at step 0, so the kNN curve "
        "shows what training adds to the network's initial features",
    )
    knn_monitor_train_size: int = Field(5000, ge=10, le=MAX_COUNT)
    knn_monitor_test_size: int = Field(2000, ge=10, le=MAX_COUNT)
    bn_recalibration_images: int = Field(
        0,
        ge=0,
        le=MAX_COUNT,
        description="At the end of training, re-estimate the student's BatchNorm statistics on this many clean "
        "teacher-size views of the training split (0: keep the training-crop averages), before the last "
        "kNN monitor and checkpoint",
    )


KNN_MONITOR = Number("last_metrics", "knn_acc@1", "kNN monitor top-1")
LOSS = Number("last_metrics", "loss_total", "loss", unit="")


class PretrainSpec(StrictModel):
    lab: ClassVar[KindInfo] = KindInfo(queue="gpu", numbers=(KNN_MONITOR, LOSS), headline=(KNN_MONITOR, LOSS))

    kind: Literal["pretrain"] = "pretrain"
    name: str = Field("custom", pattern=r"^[A-Za-z0-9_.\-/]+$", max_length=200)
    model: ModelSpec = ModelSpec()
    optim: OptimSpec = OptimSpec()
    data: DataSpec = DataSpec()
    runtime: RuntimeSpec = RuntimeSpec()

    @field_validator("name")
    @classmethod
    def _no_traversal(cls, value: str) -> str:
        if any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError("name parts must be non-empty and not '.' or '..'")
        return value

    @model_validator(mode="after")
    def _budget_schedule_has_a_budget(self) -> PretrainSpec:
        if self.runtime.budget_schedule:
            if self.runtime.time_budget_s is None:
                raise ValueError("runtime.budget_schedule needs runtime.time_budget_s (the budget to fit)")
            if self.optim.lr_schedule_type != "cos":
                raise ValueError(
                    "runtime.budget_schedule needs optim.lr_schedule_type 'cos' (use optim.warmup_iters for a "
                    "warm-up)"
                )
        return self

    @model_validator(mode="after")
    def _vocabulary_fits_batch(self) -> PretrainSpec:
        for k in self.model.per_level("num_words"):
            if k % self.data.batch_size != 0:
                raise ValueError(
                    f"num_words ({k}) must be a multiple of the total batch size ({self.data.batch_size}): "
                    f"the queue is refreshed by whole batches; pick e.g. num_words="
                    f"{max(1, k // self.data.batch_size) * self.data.batch_size}"
                )
        return self
