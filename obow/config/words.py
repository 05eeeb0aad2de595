"""Spec of a visual-word gallery run."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from obow.config.kinds import KindInfo, PathField, PathRoot
from obow.config.pretrain import MAX_BATCH, MAX_COUNT, BowLevel, DatasetName, StrictModel


class WordsSpec(StrictModel):
    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", weights_field="checkpoint")  # a short inference pass

    kind: Literal["words"] = "words"
    checkpoint: Annotated[str, PathField(PathRoot.WEIGHTS)] = Field(
        description="OBoW Lab training checkpoint (needs the teacher and the vocabulary)"
    )
    dataset: DatasetName | None = Field(None, description="Default: the pretraining dataset")
    data_dir: Annotated[str | None, PathField(PathRoot.DATA)] = None
    split: Literal["train", "val", "test"] = "train"
    levels: list[BowLevel] | None = Field(None, description="Default: every BoW level of the model")
    words: int = Field(64, ge=1, le=8192, description="How many words to show (the most used first)")
    patches: int = Field(8, ge=1, le=64, description="Top patches per word, from distinct images")
    max_images: int | None = Field(None, ge=1, le=MAX_COUNT, description="Stop the pass after this many images")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    workers: int = Field(0, ge=0, le=256)
