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
        inv_delta: float | None,
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
    def forward(self, features: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """BoW targets [B, K] and codes [B, K, h, w] of a teacher map; in training also refresh the queue.

        Order matters and follows the method: the temperature statistic is updated before the codes
        are computed, and the queue is written after the distances (to the pre-update words).
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._extract(bow_ops.border_crop(features.float()), update)

    def _extract(self, features: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        distances = bow_ops.squared_distances(features, self._embedding)
        stats: dict[str, float] = {}
        if update:
            batch_min = distances.amin(dim=1).mean()
            batch_min = dist_utils.all_reduce_mean(batch_min)
            self._min_distance_mean.copy_(
                bow_ops.update_mean_min_distance(self._min_distance_mean, batch_min, self.min_distance_decay)
            )
            self._track_num_batches += 1
            stats["min_distance"] = batch_min.detach()
            usage = torch.bincount(distances.argmin(dim=1).flatten(), minlength=self.num_words)
            stats["usage_counts"] = dist_utils.all_reduce_sum(usage)
            candidates = bow_ops.vocabulary_candidates(features, self.update_type)
            bow_ops.queue_insert(self._embedding, self._embedding_ptr, dist_utils.gather_concat(candidates))
        if self.inv_delta is None:
            codes = bow_ops.hard_codes(distances)
        else:
            codes = bow_ops.soft_codes(distances, self.inv_delta, self._min_distance_mean)
        return bow_ops.pool_bow(codes, self.bow_pool), codes, stats


class BoWExtractor(nn.Module):
    def __init__(self, levels: list[VocabularyLevel]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def vocabularies(self) -> list[torch.Tensor]:
        """The current words of every level, cloned: what the student predicts against this step."""
        return [level.words.detach().clone() for level in self.levels]

    def forward(
        self, feature_maps: list[torch.Tensor], update: bool
    ) -> tuple[list[torch.Tensor], list[dict]]:
        bows, stats = [], []
        for level, fmap in zip(self.levels, feature_maps, strict=True):
            bow, _, level_stats = level(fmap, update)
            bows.append(bow)
            stats.append(level_stats)
        return bows, stats
