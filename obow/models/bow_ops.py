"""Pure tensor functions of the OBoW method: BoW targets, vocabulary queue, loss and perplexity.

Each function is small and side-effect free (except `queue_insert`, which writes the queue in place
on purpose), so each is tested against a naive loop or a hand-computed example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32 and leave float32/float64 alone: targets and losses are computed
    in full precision under autocast, and a float64 model (the exact-step tests) stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def border_crop(features: torch.Tensor) -> torch.Tensor:
    """Drop one location on every side of a [B, C, H, W] map (padding-affected borders)."""
    return features[:, :, 1:-1, 1:-1]


def to_rows(features: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B·h·w, C], one row per location (image-major, then row-major in the map)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def word_norms(words: torch.Tensor) -> torch.Tensor:
    """‖v_k‖² of every word [K]: computed once per step and shared by every distance of the step."""
    return words.pow(2).sum(dim=1)


def partial_distances(rows: torch.Tensor, words: torch.Tensor, words_sq: torch.Tensor) -> torch.Tensor:
    """‖v_k‖² − 2⟨f_u, v_k⟩ for every row u and word k -> [N, K], as one `addmm`.

    This is the squared distance minus ‖f_u‖², a per-row constant: the nearest word, the soft codes
    (a softmax over k is shift invariant) and the word usage need nothing more, and adding ‖f_u‖² back
    costs a full pass over the [N, K] matrix, so only the per-row minimum gets it.
    """
    return torch.addmm(words_sq, rows, words.t(), beta=1.0, alpha=-2.0)


def nearest_words(partial: torch.Tensor, rows_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance to the nearest word [N], its index [N]) from one min/argmin pass over [N, K]."""
    values, index = partial.min(dim=1)
    return (values + rows_sq).clamp_min_(0.0), index


def squared_distances(features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of every location of [B, C, h, w] to every word of [K, C] -> [B, K, h, w].

    Expanded as ||f||² + ||v||² − 2<f, v>: one matrix product instead of a [B, K, C, h, w] difference.
    The result is a [B, K, h, w] view of a location-major buffer (no transposing copy).
    """
    b, _c, h, w = features.shape
    rows = to_rows(features)
    d = partial_distances(rows, words, word_norms(words)).add_(rows.pow(2).sum(dim=1, keepdim=True))
    return d.clamp_min_(0.0).view(b, h, w, -1).permute(0, 3, 1, 2)


def soft_code_rows(partial: torch.Tensor, inv_delta: float, mean_min_distance: torch.Tensor) -> torch.Tensor:
    """Soft codes of [N, K] `partial_distances`: softmax over K of −(inv_delta / μ)·d.

    Equal to `soft_codes` of the full distances, because the missing ‖f_u‖² is constant along K.
    """
    return F.softmax(partial * (-inv_delta / mean_min_distance), dim=1)


def pool_bow_rows(codes: torch.Tensor, batch: int, mode: str = "max") -> torch.Tensor:
    """Pool [B·h·w, K] location-major codes over each image's locations -> L1-normalised BoW [B, K]."""
    per_image = codes.view(batch, -1, codes.shape[1])
    pooled = per_image.amax(dim=1) if mode == "max" else per_image.mean(dim=1)
    return F.normalize(pooled, p=1, dim=1)


def update_mean_min_distance(current: torch.Tensor, batch_mean_min: torch.Tensor, decay: float) -> torch.Tensor:
    """EMA of the mean minimum distance: the adaptive scale of the assignment temperature."""
    return decay * current + (1.0 - decay) * batch_mean_min


def soft_codes(distances: torch.Tensor, inv_delta: float, mean_min_distance: torch.Tensor) -> torch.Tensor:
    """Soft assignment of every location to the words: softmax over K of −(inv_delta / μ)·d."""
    return F.softmax(distances * (-inv_delta / mean_min_distance), dim=1)


def pool_bow(codes: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Spatially pool [B, K, h, w] codes to a bag of words [B, K], then L1-normalise it to a distribution."""
    pooled = codes.flatten(2).amax(dim=2) if mode == "max" else codes.flatten(2).mean(dim=2)
    return F.normalize(pooled, p=1, dim=1)


def local_average(features: torch.Tensor) -> torch.Tensor:
    """3×3 average pooling, stride 1, no padding: candidate vocabulary entries at every valid position."""
    return F.avg_pool2d(features, kernel_size=3, stride=1, padding=0)


def sample_one_per_image(features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniformly drawn location per image of a [B, C, h, w] map -> [B, C]."""
    b, c, h, w = features.shape
    index = torch.randint(0, h * w, (b,), device=features.device, generator=generator)
    flat = features.flatten(2)  # [B, C, h*w]
    return flat.gather(2, index.view(b, 1, 1).expand(b, c, 1)).squeeze(2)


def vocabulary_candidates(
    features: torch.Tensor, update_type: str = "local_average", generator: torch.Generator | None = None
) -> torch.Tensor:
    """The new queue entries an image contributes: one feature vector per image, [B, C]."""
    if update_type == "local_average":
        return sample_one_per_image(local_average(features), generator)
    if update_type == "no_averaging":
        return sample_one_per_image(features, generator)
    if update_type == "global_average":
        return features.mean(dim=(2, 3))
    raise ValueError(f"unknown update_type '{update_type}'")


def queue_insert(queue: torch.Tensor, ptr: torch.Tensor, entries: torch.Tensor) -> None:
    """FIFO write of `entries` [N, C] into `queue` [K, C] at `ptr`, wrapping around; advances `ptr` in place."""
    k, n = queue.shape[0], entries.shape[0]
    if n > k:
        raise ValueError(f"cannot insert {n} entries into a queue of {k}")
    start = int(ptr.item())
    rows = (torch.arange(n, device=queue.device) + start) % k
    queue.index_copy_(0, rows, entries.to(queue.dtype))
    ptr.fill_((start + n) % k)


def expand_target(target: torch.Tensor, num_crops: int) -> torch.Tensor:
    """Repeat each image's target for its crops, image-major (img0crop0, img0crop1, ..., img1crop0, ...)."""
    return target.repeat_interleave(num_crops, dim=0)


def bow_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) summed over words, averaged over rows.

    Equal to the soft-target cross-entropy minus the (constant) target entropy, as the original logs it.
    """
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")


def bow_perplexity(bow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch perplexity, mean per-image perplexity) of [B, K] BoW distributions.

    The batch one is exp(entropy) of the summed, renormalised BoW: a vocabulary-usage measure. The
    per-image one tells how spread a single image's words are.
    """
    batch = bow.sum(dim=0)
    batch = batch / batch.sum().clamp_min(1e-12)
    batch_perp = torch.exp(-(batch * torch.log(batch + 1e-5)).sum())
    image_perp = torch.exp(-(bow * torch.log(bow + 1e-5)).sum(dim=1)).mean()
    return batch_perp, image_perp


def cosine_momentum(base: float, iteration: int, total: int) -> float:
    """Teacher EMA momentum at an iteration: 1 − (1 − base)·½(1 + cos(π·i/T)), from base to 1.0."""
    import math

    if total <= 0:
        return base
    progress = min(max(iteration / total, 0.0), 1.0)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * progress))
