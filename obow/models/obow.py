"""The OBoW module: student, EMA teacher, online vocabulary, dynamic BoW head and monitor head.

The teacher/student pairs and the trainable parameters are declared here in one place
(`ema_pairs`, `trainable_parameters`), and one training step's order of operations is `forward`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from obow.config.pretrain import PretrainSpec
from obow.models import bow_ops
from obow.models.backbone import ResNetBackbone, build_backbone
from obow.models.predictor import BoWPredictor
from obow.models.vocabulary import BoWExtractor, VocabularyLevel


class MonitorHead(nn.Module):
    """Linear probe on detached teacher features (GAP → non-affine BN → Linear): a free quality signal."""

    def __init__(self, num_channels: int, num_classes: int) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(num_channels, affine=False)
        self.prediction_layer = nn.Linear(num_channels, num_classes)
        nn.init.normal_(self.prediction_layer.weight, 0.0, 0.01)
        nn.init.zeros_(self.prediction_layer.bias)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.prediction_layer(self.batch_norm(feature_map.mean(dim=(2, 3))))


class OBoW(nn.Module):
    def __init__(
        self,
        student: ResNetBackbone,
        bow_levels: list[str],
        num_words: list[int],
        inv_delta: list[float],
        kappa: list[float],
        alpha: float = 0.99,
        alpha_cosine: bool = True,
        num_classes: int | None = None,
        bow_pool: str = "max",
        update_type: str = "local_average",
        min_distance_decay: float = 0.99,
        learn_kappa: bool = False,
    ) -> None:
        super().__init__()
        self.bow_levels = list(bow_levels)
        self.base_alpha, self.alpha_cosine = alpha, alpha_cosine
        self.total_iterations = 0  # set by the engine before training (cosine schedule length)
        self.register_buffer("_alpha", torch.full((1,), alpha))
        self.register_buffer("_iteration", torch.zeros(1))
        self.student = student
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        word_dims = [student.channels[level] for level in self.bow_levels]
        self.bow_predictor = BoWPredictor(word_dims, student.out_dim, kappa, learn_kappa)
        self.bow_extractor = BoWExtractor(
            [
                VocabularyLevel(dim, k, d, bow_pool, update_type, min_distance_decay)
                for dim, k, d in zip(word_dims, num_words, inv_delta, strict=True)
            ]
        )
        self.last_usage_counts: list[torch.Tensor] = []  # per level, this step's nearest-word counts
        self.linear_classifier = (
            MonitorHead(word_dims[-1], num_classes) if num_classes else None
        )

    # -- declarations ------------------------------------------------------------------------------
    def ema_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(teacher, student) parameter pairs: parameters only, BN buffers are the teacher's own."""
        return list(zip(self.teacher.parameters(), self.student.parameters(), strict=True))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student, weight generators and monitor head: one SGD group as in the original."""
        modules: list[nn.Module] = [self.student, self.bow_predictor]
        if self.linear_classifier is not None:
            modules.append(self.linear_classifier)
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    # -- teacher -----------------------------------------------------------------------------------
    def current_momentum(self) -> float:
        if not self.alpha_cosine:
            return self.base_alpha
        return bow_ops.cosine_momentum(self.base_alpha, int(self._iteration.item()), self.total_iterations)

    @torch.no_grad()
    def update_teacher(self) -> float:
        alpha = self.current_momentum()
        self._alpha.fill_(alpha)
        if alpha < 1.0:
            for t, s in self.ema_pairs():
                t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        if self.alpha_cosine:
            self._iteration += 1
        return alpha

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        teacher_img: torch.Tensor,
        crop_groups: list[torch.Tensor],
        labels: torch.Tensor | None = None,
        location_generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One training step's loss and its monitoring values.

        `crop_groups` holds one [B, n, 3, s, s] tensor per crop type (e.g. the 160 px crops and the
        96 px patches); each type is a separate student batch, as BN statistics differ by size.
        The classifier weights κ·G(V) are generated once per step and shared by every crop type, as in
        the method (the generator BN sees the K words once per step). `location_generator` draws the
        queue-insert locations (None: the global RNG), so tests and external checks can fix them.
        """
        vocabularies = self.bow_extractor.vocabularies()  # the words as they are before this step
        weights = self.bow_predictor.classifier_weights(vocabularies)
        logits_per_type: list[list[torch.Tensor]] = []
        for group in crop_groups:
            pooled = self.student(group.flatten(0, 1), taps=("pooled",))["pooled"]
            logits_per_type.append(self.bow_predictor(pooled, weights))

        with torch.no_grad():
            alpha = self.update_teacher()
            teacher_maps = self.teacher(teacher_img, taps=tuple(self.bow_levels))
            targets, level_stats = self.bow_extractor(
                [teacher_maps[level] for level in self.bow_levels], update=True, generator=location_generator
            )

        self.last_usage_counts = [stats.pop("usage_counts") for stats in level_stats]
        # Monitoring values stay tensors until one transfer at the end: one device sync per step.
        watched: dict[str, torch.Tensor] = {}
        total = teacher_img.new_zeros((), dtype=torch.promote_types(teacher_img.dtype, torch.float32))
        for group, level_logits in zip(crop_groups, logits_per_type, strict=True):
            n, size = group.shape[1], group.shape[-1]
            per_level = [
                bow_ops.bow_loss(bow_ops.at_least_fp32(logits), bow_ops.expand_target(target, n))
                for logits, target in zip(level_logits, targets, strict=True)
            ]
            loss = torch.stack(per_level).mean()
            total = total + loss
            key = f"loss_crop{size}"
            watched[key] = watched[key] + loss.detach() if key in watched else loss.detach()

        for i, (target, stats) in enumerate(zip(targets, level_stats, strict=True)):
            watched[f"perp_b_lev@{i}"], watched[f"perp_i_lev@{i}"] = bow_ops.bow_perplexity(target)
            watched[f"min_distance_lev@{i}"] = stats["min_distance"]
            watched[f"temperature_mu_lev@{i}"] = self.bow_extractor.levels[i]._min_distance_mean[0]

        if self.linear_classifier is not None and labels is not None:
            scores = self.linear_classifier(bow_ops.at_least_fp32(teacher_maps[self.bow_levels[-1]].detach()))
            monitor = F.cross_entropy(scores, labels)
            total = total + monitor
            watched["loss_cls"] = monitor.detach()
            watched["linear_acc@1"] = (scores.argmax(1) == labels).float().mean() * 100
        watched["loss_total"] = total.detach()
        numbers = torch.stack([v.double().reshape(()) for v in watched.values()]).tolist()
        values = {"alpha": alpha, **dict(zip(watched, numbers, strict=True))}
        return total, values

    @torch.no_grad()
    def bow_classifier_weights(self, level: int = -1) -> torch.Tensor:
        """κ_l·G_l(V_l) [K, C] in eval mode (generator BN on running stats): the torchvision export's fc."""
        was_training = self.bow_predictor.training
        self.bow_predictor.eval()
        try:
            index = level % len(self.bow_levels)
            vocab = self.bow_extractor.levels[index].words
            return self.bow_predictor.scale[index] * self.bow_predictor.layers_w[index](vocab)
        finally:
            self.bow_predictor.train(was_training)


def build_obow(spec: PretrainSpec) -> OBoW:
    m = spec.model
    fe = m.feature_extractor_opts
    student = build_backbone(
        m.feature_extractor_arch, small_stem=fe.small_stem, width=fe.width, block4_width=fe.block4_width
    )
    ex = m.bow_extractor_opts
    return OBoW(
        student,
        bow_levels=m.bow_levels,
        num_words=m.per_level("num_words"),
        inv_delta=m.per_level("inv_delta"),
        kappa=m.per_level("kappa"),
        alpha=m.alpha,
        alpha_cosine=m.alpha_cosine,
        num_classes=m.num_classes,
        bow_pool=ex.bow_pool,
        update_type=ex.update_type,
        min_distance_decay=ex.min_distance_decay,
        learn_kappa=m.bow_predictor_opts.learn_kappa,
    )
