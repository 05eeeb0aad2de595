"""The student side of OBoW: dynamic BoW prediction head.

A weight generator per level turns the current vocabulary into classifier weights, so the head
follows the vocabulary as the queue refreshes instead of learning fixed per-word weights.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=1)


def weight_generator(level: int, word_dim: int, feature_dim: int) -> nn.Sequential:
    """L2-norm → Linear (no bias) → BN1d over the K words → ReLU → Linear → L2-norm: unit-norm weights."""
    hidden = 2 * feature_dim
    return nn.Sequential(
        OrderedDict({
            f"b{level}_l2norm_in": L2Normalize(),
            f"b{level}_fc": nn.Linear(word_dim, hidden, bias=False),
            f"b{level}_bn": nn.BatchNorm1d(hidden),
            f"b{level}_rl": nn.ReLU(inplace=True),
            f"b{level}_last_layer": nn.Linear(hidden, feature_dim),
            f"b{level}_l2norm_out": L2Normalize(),
        })
    )


class BoWPredictor(nn.Module):
    def __init__(
        self, word_dims: list[int], feature_dim: int, kappa: list[float], learn_kappa: bool = False
    ) -> None:
        super().__init__()
        self.layers_w = nn.ModuleList(
            [weight_generator(i, dim, feature_dim) for i, dim in enumerate(word_dims)]
        )
        self.scale = nn.Parameter(torch.tensor(kappa, dtype=torch.float32), requires_grad=learn_kappa)

    def classifier_weights(self, vocabularies: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, κ_l·G_l(V_l): [K_l, feature_dim].

        Call it once per training step and pass the result to `forward` for every crop type: the
        generators' BatchNorm then sees one batch of words per step (its running statistics, and so the
        exported eval-mode classifier, follow the method), and the K-row generator runs only once.
        """
        return [self.scale[i] * gen(v) for i, (gen, v) in enumerate(zip(self.layers_w, vocabularies, strict=True))]

    def forward(self, features: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """BoW logits per level for raw (un-normalised) pooled student features [N, C].

        `weights` are this step's `classifier_weights`, shared by every crop type.
        """
        return [features @ w.t() for w in weights]
