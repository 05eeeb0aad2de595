"""The teacher side of OBoW: per-level online vocabulary and BoW target extraction.

Everything resume needs (the queue, its write pointer, the adaptive temperature) lives in persistent
buffers, so a state dict round trip restores a level exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from obow import distributed as dist_utils
from obow.models import bow_ops


class VocabularyLevel(nn.Module):
    """One BoW level: a FIFO queue of K words over a feature map of `num_channels` channels."""

    def __init__(
        self,
        num_channels: int,
        num_words: int,
        inv_delta: float,
        bow_pool: str = "max",
        update_type: str = "local_average",
        min_distance_decay: float = 0.99,
    ) -> None:
        super().__init__()
        self.num_words, self.inv_delta = num_words, inv_delta
        self.bow_pool, self.update_type, self.min_distance_decay = bow_pool, update_type, min_distance_decay
        # ReLU'd Gaussian init: teacher features are post-ReLU, so the start lives in the same orthant.
        self.register_buffer("_embedding", torch.randn(num_words, num_channels).clamp(min=0))
        self.register_buffer("_embedding_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("_track_num_batches", torch.zeros(1))
        self.register_buffer("_min_distance_mean", torch.full((1,), 0.5))

    @property
    def words(self) -> torch.Tensor:
        return self._embedding

    @torch.no_grad()
    def forward(
        self, features: torch.Tensor, update: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """BoW targets [B, K] and codes [B, K, h, w] of a teacher map; in training also refresh the queue.

        Order matters and follows the method: the temperature statistic is updated before the codes
        are computed, and the queue is written after the distances (to the pre-update words).
        `generator` draws the insert locations (None: the global RNG).
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._extract(bow_ops.border_crop(bow_ops.at_least_fp32(features)), update, generator)

    def _extract(
        self, features: torch.Tensor, update: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        b, _c, h, w = features.shape
        rows = bow_ops.to_rows(features)  # [B·h·w, C]
        # Distances to the words as they are before this step's insert (the insert below rewrites them).
        partial = bow_ops.partial_distances(rows, self._embedding, bow_ops.word_norms(self._embedding))
        stats: dict[str, torch.Tensor] = {}
        if update:
            min_distance, nearest = bow_ops.nearest_words(partial, rows.pow(2).sum(dim=1))
            batch_min = dist_utils.all_reduce_mean(min_distance.mean())
            self._min_distance_mean.copy_(
                bow_ops.update_mean_min_distance(self._min_distance_mean, batch_min, self.min_distance_decay)
            )
            self._track_num_batches += 1
            stats["min_distance"] = batch_min.detach()
            usage = torch.bincount(nearest, minlength=self.num_words)
            stats["usage_counts"] = dist_utils.all_reduce_sum(usage)
            candidates = bow_ops.vocabulary_candidates(features, self.update_type, generator)
            bow_ops.queue_insert(self._embedding, self._embedding_ptr, dist_utils.gather_concat(candidates))
        codes = bow_ops.soft_code_rows(partial, self.inv_delta, self._min_distance_mean)
        bow = bow_ops.pool_bow_rows(codes, b, self.bow_pool)
        return bow, codes.view(b, h, w, -1).permute(0, 3, 1, 2), stats


class BoWExtractor(nn.Module):
    def __init__(self, levels: list[VocabularyLevel]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def vocabularies(self) -> list[torch.Tensor]:
        """The current words of every level, cloned: what the student predicts against this step."""
        return [level.words.detach().clone() for level in self.levels]

    def forward(
        self, feature_maps: list[torch.Tensor], update: bool, generator: torch.Generator | None = None
    ) -> tuple[list[torch.Tensor], list[dict]]:
        bows, stats = [], []
        for level, fmap in zip(self.levels, feature_maps, strict=True):
            bow, _, level_stats = level(fmap, update, generator)
            bows.append(bow)
            stats.append(level_stats)
        return bows, stats
