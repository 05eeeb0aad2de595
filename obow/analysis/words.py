"""Visual-word gallery: for each word of a level's vocabulary, the image patches that activate it most.

One pass over a dataset with the teacher in eval mode: each image gives, per word, its highest code
over the map locations (the BoW value before normalisation) and where that maximum is. A running
top-P per word (one image at most once per word) is merged batch by batch, so memory is O(K·P),
not O(K·images).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from obow.models import bow_ops


class TopKPerWord:
    """Keeps, for each of K words, the P highest (score, image id, location) seen so far."""

    def __init__(self, num_words: int, per_word: int) -> None:
        self.scores = torch.full((num_words, per_word), -math.inf)
        self.image_ids = torch.full((num_words, per_word), -1, dtype=torch.long)
        self.locations = torch.full((num_words, per_word), -1, dtype=torch.long)

    def update(self, scores: torch.Tensor, image_ids: torch.Tensor, locations: torch.Tensor) -> None:
        """scores [B, K] (each image's best code per word), image_ids [B], locations [B, K] (flat index)."""
        k = self.scores.shape[0]
        all_scores = torch.cat([self.scores, scores.t().float()], dim=1)
        all_ids = torch.cat([self.image_ids, image_ids.view(1, -1).expand(k, -1)], dim=1)
        all_locs = torch.cat([self.locations, locations.t()], dim=1)
        best, order = all_scores.topk(self.scores.shape[1], dim=1)
        self.scores = best
        self.image_ids = all_ids.gather(1, order)
        self.locations = all_locs.gather(1, order)


@dataclass
class LevelCodes:
    scores: torch.Tensor  # [B, K] max code over locations
    locations: torch.Tensor  # [B, K] flat index into the cropped map
    map_size: tuple[int, int]  # (h, w) of the cropped map
    nearest: torch.Tensor  # [B, h*w] nearest word per location (usage counts)


def level_codes(feature_map: torch.Tensor, words: torch.Tensor, inv_delta: float, mu: torch.Tensor) -> LevelCodes:
    """The same soft codes the teacher uses for its targets, reduced to per-word maxima and positions."""
    fmap = bow_ops.border_crop(feature_map.float())
    distances = bow_ops.squared_distances(fmap, words)
    codes = bow_ops.soft_codes(distances, inv_delta, mu)
    flat = codes.flatten(2)  # [B, K, h*w]
    scores, locations = flat.max(dim=2)
    return LevelCodes(scores, locations, (fmap.shape[2], fmap.shape[3]), distances.flatten(2).argmin(dim=1))


def location_box(location: int, map_size: tuple[int, int], stride: int, image_size: int) -> tuple[int, int, int, int]:
    """The input-image box (x0, y0, x1, y1) centred on a cropped-map location, two strides wide.

    The cropped map's (y, x) is the full map's (y + 1, x + 1), whose receptive-field centre sits at
    (index + 0.5)·stride in the input.
    """
    y, x = divmod(location, map_size[1])
    cy, cx = (y + 1.5) * stride, (x + 1.5) * stride
    half = stride
    x0, y0 = max(0, round(cx - half)), max(0, round(cy - half))
    x1, y1 = min(image_size, round(cx + half)), min(image_size, round(cy + half))
    return x0, y0, x1, y1


def collect_top_patches(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Any,
    words: torch.Tensor,
    inv_delta: float,
    mu: torch.Tensor,
    per_word: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[TopKPerWord, torch.Tensor, tuple[int, int]]:
    """Stream (images, image_ids) batches; returns the per-word top lists, word usage counts, map size."""
    top = TopKPerWord(words.shape[0], per_word)
    usage = torch.zeros(words.shape[0], dtype=torch.long)
    map_size = (0, 0)
    with torch.no_grad():
        for images, image_ids in batches:
            codes = level_codes(feature_fn(images), words, inv_delta, mu)
            top.update(codes.scores.cpu(), image_ids.cpu(), codes.locations.cpu())
            usage += torch.bincount(codes.nearest.flatten().cpu(), minlength=words.shape[0])
            map_size = codes.map_size
            if on_batch is not None:
                on_batch(len(image_ids))
    return top, usage, map_size


def contact_sheet(
    rows: list[tuple[int, list[Image.Image]]], patch_px: int = 48, label_px: int = 64
) -> Image.Image:
    """One row per word: its id on the left, then its patches left to right (best first)."""
    cols = max((len(p) for _, p in rows), default=1)
    sheet = Image.new("RGB", (label_px + cols * (patch_px + 2), max(1, len(rows)) * (patch_px + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (word, patches) in enumerate(rows):
        top = r * (patch_px + 2)
        draw.text((4, top + patch_px // 2 - 6), f"#{word}", fill="black")
        for c, patch in enumerate(patches):
            sheet.paste(patch.resize((patch_px, patch_px)), (label_px + c * (patch_px + 2), top))
    return sheet


def write_gallery(
    out_dir: Path,
    level_name: str,
    top: TopKPerWord,
    usage: torch.Tensor,
    map_size: tuple[int, int],
    stride: int,
    image_size: int,
    load_view: Callable[[int], Image.Image],
    num_words: int,
) -> dict[str, Any]:
    """The most used words' patches as a PNG contact sheet plus a JSON index; returns the index."""
    chosen = usage.argsort(descending=True)[:num_words].tolist()
    index: dict[str, Any] = {"level": level_name, "map_size": list(map_size), "stride": stride,
                             "image_size": image_size, "words": []}
    rows = []
    for word in chosen:
        entries, patches = [], []
        for score, image_id, loc in zip(
            top.scores[word].tolist(), top.image_ids[word].tolist(), top.locations[word].tolist(), strict=True
        ):
            if image_id < 0:
                continue
            box = location_box(loc, map_size, stride, image_size)
            entries.append({"image_id": image_id, "box": list(box), "score": score})
            patches.append(load_view(image_id).crop(box))
        index["words"].append({"word": word, "usage": int(usage[word]), "patches": entries})
        rows.append((word, patches))
    out_dir.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows).save(out_dir / f"visual_words_{level_name}.png")
    (out_dir / f"visual_words_{level_name}.json").write_text(json.dumps(index))
    return index
