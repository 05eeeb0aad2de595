"""Specs of the evaluation runs: linear probe, semi-supervised fine-tuning, few-shot, kNN and SVM.

Every spec names the checkpoint to evaluate and the labelled dataset. Image geometry and normalisation
default per dataset (`image_defaults`): Fashion-MNIST/MNIST images (28 px, grey) are resized to 40 px
and normalised with their own grey statistics repeated over RGB, as in the pretraining presets;
ImageNet-like folders use Resize 256 → CenterCrop 224 and the ImageNet statistics, as the original.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from obow.config.kinds import KindInfo, Number, PathField, PathRoot
from obow.config.pretrain import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_BATCH,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_LR,
    MAX_PX,
    MAX_SCALE,
    MAX_SEED,
    DatasetName,
    Epochs,
    PixelStat,
    StrictModel,
)

GREY_DATASETS = {"FashionMNIST": (0.286, 0.353), "MNIST": (0.1307, 0.3081)}


def image_defaults(dataset: str) -> dict[str, Any]:
    """Default `resize`, `size`, `mean`, `std` of a dataset (the evaluation view)."""
    if dataset in GREY_DATASETS:
        mean, std = GREY_DATASETS[dataset]
        return {"resize": 40, "size": 40, "mean": [mean] * 3, "std": [std] * 3}
    if dataset == "Synthetic":
        return {"resize": 32, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    return {"resize": 256, "size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


class EvalSpec(StrictModel):
    lab: ClassVar[KindInfo] = KindInfo(queue="gpu", weights_field="checkpoint")

    """What every evaluation shares: the checkpoint, the data, the views and how to run."""

    checkpoint: Annotated[str, PathField(PathRoot.WEIGHTS)] = Field(
        description="OBoW Lab checkpoint, or an official OBoW / torchvision file"
    )
    dataset: DatasetName = "FashionMNIST"
    data_dir: Annotated[str | None, PathField(PathRoot.DATA)] = Field(
        None, description="Dataset folder (Fashion-MNIST: the system copy if unset)"
    )
    train_split: Literal["train", "val", "test"] = "train"
    test_split: Literal["train", "val", "test"] = Field(
        "val", description="Held-out split; ImageFolder 'test' falls back to val/, IDX 'val' is the test file"
    )
    subset: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Use only the first N training images of each class"
    )
    test_subset: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Use only the first N test images of each class"
    )
    # Defaults shown are the default dataset's; unset values follow the chosen dataset (image_defaults).
    resize: int = Field(40, ge=8, le=MAX_PX, description="Shorter side before the crop (default: per dataset)")
    size: int = Field(40, ge=8, le=MAX_PX, description="Crop size fed to the network (default: per dataset)")
    mean: list[PixelStat] = Field(default_factory=lambda: [0.286] * 3, min_length=3, max_length=3)
    std: list[Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=lambda: [0.353] * 3, min_length=3, max_length=3
    )
    batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    workers: int = Field(2, ge=0, le=256)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="before")
    @classmethod
    def _dataset_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = image_defaults(data.get("dataset", "FashionMNIST"))
            data = {**data, **{k: v for k, v in defaults.items() if data.get(k) is None}}
        return data

    @model_validator(mode="after")
    def _crop_fits(self) -> EvalSpec:
        if self.size > self.resize:
            raise ValueError(f"size ({self.size}) must not exceed resize ({self.resize})")
        return self


class StepOrCosine(StrictModel):
    """Mixin fields of the eval optimisers: SGD with a cosine or a step schedule."""

    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)
    lr: float = Field(10.0, gt=0, le=MAX_LR)
    momentum: float = Field(0.9, ge=0, lt=1)
    wd: float = Field(0.0, ge=0, le=1, description="Weight decay")
    nesterov: bool = False
    cos_schedule: bool = Field(False, description="Cosine decay per epoch instead of the step schedule")
    schedule: list[Epochs] = Field(
        default_factory=lambda: [15, 30, 45], max_length=1000, description="Step milestones (epochs)"
    )
    lr_decay: float = Field(0.1, gt=0, le=1, description="Factor applied at each milestone")
    eval_every: int = Field(
        1, ge=1, le=MAX_EPOCHS, description="Evaluate on the test split every N epochs (and at the end)"
    )

    @field_validator("schedule")
    @classmethod
    def _sorted(cls, value: list[int]) -> list[int]:
        return sorted(value)


TOP1 = Number("result", "top1", "test top-1")
TOP5 = Number("result", "top5", "test top-5")
KNN_TOP1 = Number("result", "top1.*", "kNN top-1 (k={key})")
FEWSHOT = Number("result", "shots.*.accuracy", "{key}-shot accuracy")
MAP = Number("result", "mAP", "mAP")
TOP1_ANY = Number("result", "headline", "top-1")  # a baseline's number under its protocol's name


class LinearSpec(EvalSpec, StepOrCosine):
    """Linear probe on the frozen student's global-pooled features (ImageNet / Places205 protocols)."""

    lab: ClassVar[KindInfo] = KindInfo(queue="gpu", weights_field="checkpoint", numbers=(TOP1, TOP5), headline=(TOP1,))

    kind: Literal["linear"] = "linear"
    batch_norm: bool = Field(False, description="Non-affine BatchNorm before the linear layer (Places205)")
    train_aug: Literal["random_resized_crop", "resize_random_crop"] = Field(
        "random_resized_crop",
        description="ImageNet: RandomResizedCrop+flip; Places205: Resize→RandomCrop+flip",
    )
    precache: bool = Field(False, description="Train on cached features of fixed views (much faster epochs)")
    cache_dir: Annotated[str | None, PathField(PathRoot.CACHE)] = Field(
        None, description="Feature cache folder (default: <out_dir>/cache_features)"
    )
    cache_views: Literal["center_flip", "ten_crop"] = Field(
        "center_flip", description="Cached training views: center crop + flip (2) or FiveCrop + flips (10)"
    )
    keep_cache: bool = Field(True, description="Keep the cache for later runs (the original deleted it)")


class SemisupSpec(EvalSpec, StepOrCosine):
    """Fine-tune the whole network on a labelled fraction of the training split."""

    lab: ClassVar[KindInfo] = KindInfo(queue="gpu", weights_field="checkpoint", numbers=(TOP1, TOP5), headline=(TOP1,))

    kind: Literal["semisup"] = "semisup"
    epochs: int = Field(40, ge=1, le=MAX_EPOCHS)
    lr: float = Field(2e-4, gt=0, le=MAX_LR, description="Learning rate of the backbone")
    lr_head: float = Field(0.5, gt=0, le=MAX_LR, description="Learning rate of the linear head")
    schedule: list[Epochs] = Field(default_factory=lambda: [24, 32], max_length=1000)
    lr_decay: float = Field(0.2, gt=0, le=1)
    percentage: float = Field(1.0, gt=0, le=100, description="Labelled percentage of each class")
    split_file: Annotated[str | None, PathField(PathRoot.DATA)] = Field(
        None, description="Standard split list (one image file name per line)"
    )


class FewshotSpec(EvalSpec):
    """Cosine-prototype few-shot classification over seeded episodes of novel classes.

    Images come from `split`, capped per class by `test_subset`. The official OBoW split file
    (IMAGENET_LOWSHOT_BENCHMARK_CATEGORY_SPLITS.json) works with `novel_key="novel_classes_2"`: its
    indices are used as ImageFolder label ids, as the original does.
    """

    lab: ClassVar[KindInfo] = KindInfo(
        queue="gpu", weights_field="checkpoint", numbers=(FEWSHOT, Number("result", "shots.*.ci95", "{key}-shot ±95%")),
        headline=(FEWSHOT,),
    )

    kind: Literal["fewshot"] = "fewshot"
    split: Literal["train", "val", "test"] = Field("val", description="Split the episodes are drawn from")
    episodes: int = Field(200, ge=1, le=1_000_000)
    n_way: int = Field(50, ge=2, le=100_000)
    k_shot: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=lambda: [1], min_length=1, max_length=100
    )
    n_query: int = Field(1, ge=1, le=100_000, description="Query images per class and episode")
    scale: float = Field(10.0, gt=0, le=MAX_SCALE, description="Cosine similarity scale of the prototype classifier")
    novel_classes_file: Annotated[str | None, PathField(PathRoot.DATA)] = Field(
        None, description='JSON {"novel_classes": [names or indices]}'
    )
    novel_key: str = Field("novel_classes", min_length=1, description="Key of the class list in that JSON file")
    novel_fraction: float = Field(1.0, gt=0, le=1, description="Seeded share of classes used as novel")

    @field_validator("k_shot")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError("every k_shot must be at least 1")
        return sorted(set(value))


class KnnSpec(EvalSpec):
    """Weighted kNN on L2-normalised features (votes exp(cos/T))."""

    lab: ClassVar[KindInfo] = KindInfo(
        queue="gpu", weights_field="checkpoint", numbers=(KNN_TOP1,), headline=(KNN_TOP1,)
    )

    kind: Literal["knn"] = "knn"
    k: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(default_factory=lambda: [20], min_length=1, max_length=100)
    temperature: float = Field(0.07, gt=0, le=MAX_SCALE)


class SvmSpec(EvalSpec):
    """VOC07-style one-vs-rest linear SVMs over a cost grid chosen by k-fold cross-validation (mAP)."""

    lab: ClassVar[KindInfo] = KindInfo(
        queue="gpu", weights_field="checkpoint", headline=(MAP,),
        numbers=(MAP, Number("result", "mAP_interpolated", "mAP (interpolated)"),
                 Number("result", "mAP_voc07_11pt", "mAP (VOC07 11-point)")),
    )

    kind: Literal["svm"] = "svm"
    costs: list[Annotated[float, Field(gt=0, le=1e6)]] = Field(
        default_factory=lambda: [0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 5.0], min_length=1, max_length=100
    )
    folds: int = Field(3, ge=2, le=100)
    normalize: Literal["none", "l2", "bn"] = Field(
        "bn", description="bn: per-dimension standardisation by train statistics (pool5_bn); l2; none (pool5)"
    )
    labels_file: Annotated[str | None, PathField(PathRoot.DATA)] = Field(
        None, description='Multi-label JSON {"classes": [...], "labels": {"<image file name>": [classes]}, '
        '"ignore": {"<image file name>": [classes]} (optional, e.g. VOC difficult)}'
    )
    max_iter: int = Field(2000, ge=10, le=10_000_000)

    @field_validator("costs")
    @classmethod
    def _positive_costs(cls, value: list[float]) -> list[float]:
        if any(c <= 0 for c in value):
            raise ValueError("every SVM cost must be > 0")
        return value


def places205_defaults() -> dict[str, Any]:
    """The Places205 linear protocol (§4.2): BN, wd 1e-5, lr 0.01, 28 epochs, steps at 10 and 20."""
    return {"batch_norm": True, "wd": 1e-5, "lr": 0.01, "epochs": 28, "schedule": [10, 20], "lr_decay": 0.1,
            "batch_size": 256, "train_aug": "resize_random_crop"}


BASELINE_PROTOCOLS = ("linear", "knn")
# protocol fields that do not change the number (where files go, how many loader processes, on what device)
NOT_PROTOCOL = ("checkpoint", "cache_dir", "keep_cache", "workers", "device", "eval_every", "kind")


class BaselineSpec(StrictModel):
    """The same protocol as an evaluation (`evaluation`: its spec without the checkpoint), run on features
    that need no training: the raw pixels of the evaluation view, or a randomly initialised backbone of
    the evaluated architecture. The lab computes each once and shows evaluations against them."""

    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", numbers=(TOP1_ANY,), headline=(TOP1_ANY,))

    kind: Literal["baseline"] = "baseline"
    features: Literal["raw_pixels", "random_init"]
    protocol: Literal["linear", "knn"]
    dataset: DatasetName = "FashionMNIST"
    data_dir: Annotated[str | None, PathField(PathRoot.DATA)] = None
    arch: Literal["resnet18", "resnet50"] = Field("resnet18", description="random_init: the backbone to draw")
    small_stem: bool = False
    width: float = Field(1.0, gt=0, le=4)
    block4_width: float | None = Field(None, gt=0, le=4, description="random_init: block4's own width, if apart")
    evaluation: dict[str, Any] = Field(
        default_factory=dict, description="The evaluation's protocol: its spec without checkpoint, dataset, data_dir"
    )

    @model_validator(mode="after")
    def _protocol_valid(self) -> BaselineSpec:
        owned = {"checkpoint", "dataset", "data_dir", "cache_dir"} & set(self.evaluation)
        if owned:
            raise ValueError(f"evaluation must not set {', '.join(sorted(owned))} (the baseline sets them)")
        self.evaluation_spec()  # a bad protocol is an error now, naming its field
        return self

    def evaluation_spec(self, checkpoint: str = "-") -> EvalSpec:
        """The protocol as its evaluation spec (the checkpoint a stand-in: the baseline brings its features)."""
        data = {**self.evaluation, "kind": self.protocol, "checkpoint": checkpoint, "dataset": self.dataset,
                "data_dir": self.data_dir}
        return EVAL_SPECS[self.protocol].model_validate(data)


def protocol_of(spec: EvalSpec) -> dict[str, Any]:
    """What decides an evaluation's number, apart from the weights and the data (which baselines keep
    beside it): where files go, loader processes and the device do not."""
    values = spec.model_dump(mode="json")
    return {k: v for k, v in values.items() if k not in (*NOT_PROTOCOL, "dataset", "data_dir")}


def baseline_key(spec: BaselineSpec) -> str:
    """The identity of a baseline's number: the same key means the same protocol on the same data and
    features, so it is computed once. Raw pixels do not depend on an architecture."""
    ident: dict[str, Any] = {"features": spec.features, "protocol": spec.protocol, "dataset": spec.dataset,
                             "data_dir": spec.data_dir, "evaluation": protocol_of(spec.evaluation_spec())}
    if spec.features == "random_init":
        ident.update(arch=spec.arch, small_stem=spec.small_stem, width=spec.width)
        if spec.block4_width is not None:  # only then, so that earlier baselines keep their keys
            ident["block4_width"] = spec.block4_width
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


EVAL_SPECS: dict[str, type[EvalSpec]] = {
    "linear": LinearSpec, "semisup": SemisupSpec, "fewshot": FewshotSpec, "knn": KnnSpec, "svm": SvmSpec,
}
