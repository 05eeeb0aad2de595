"""OBoW training views: a teacher view, random resized crops and grid patches, every size a parameter.

All randomness of sample i in epoch e comes from a generator seeded by (seed, e, i), so a batch does
not depend on the number of loader workers nor on whether training was resumed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import transforms as T

from obow.config.pretrain import DataSpec
from obow.data.sources import ImageSource


class RandomGaussianBlur:
    """PIL Gaussian blur with a radius drawn uniformly from [low, high] (torch RNG, so it is seeded)."""

    def __init__(self, sigma: Sequence[float]) -> None:
        self.low, self.high = float(sigma[0]), float(sigma[1])

    def __call__(self, image: Image.Image) -> Image.Image:
        radius = self.low + (self.high - self.low) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


def _normalise(d: DataSpec) -> list:
    return [T.ToTensor(), T.Normalize(d.mean, d.std)]


def _colour(d: DataSpec, blur: bool) -> list:
    steps: list = [T.RandomApply([T.ColorJitter(*d.cjitter)], p=d.cjitter_p), T.RandomGrayscale(p=d.gray_p)]
    if blur and d.gaussian_blur is not None and d.gaussian_blur_p > 0:
        steps.append(T.RandomApply([RandomGaussianBlur(d.gaussian_blur)], p=d.gaussian_blur_p))
    return steps


def grid_patches(image: torch.Tensor, patch_size: int, jitter: int, keep: int) -> torch.Tensor:
    """Cut a 3×3 grid of jittered patches from a [C, S, S] tensor and keep `keep` of them at random.

    Cell (i, j) starts at (i·offset + U{0..jitter}, j·offset + U{0..jitter}) with
    offset = (S − patch_size − jitter) // 2, so neighbouring patches overlap little and never leave the image.
    """
    size = image.shape[-1]
    offset = (size - patch_size - jitter) // 2
    patches = []
    for i in range(3):
        for j in range(3):
            dy, dx = (torch.randint(0, jitter + 1, (2,)).tolist() if jitter > 0 else (0, 0))
            y, x = i * offset + dy, j * offset + dx
            patches.append(image[:, y : y + patch_size, x : x + patch_size])
    order = torch.randperm(9)[:keep]
    return torch.stack([patches[k] for k in order.tolist()])


class MultiCropTransform:
    def __init__(self, d: DataSpec) -> None:
        self.spec = d
        self.teacher = T.Compose(
            [T.Resize(d.teacher_resize), T.CenterCrop(d.teacher_size), T.RandomHorizontalFlip(), *_normalise(d)]
        )
        lo, hi = d.image_crop_range
        self.crop = T.Compose(
            [
                T.RandomResizedCrop(d.image_crop_size, scale=(lo, hi)),
                *_colour(d, blur=True),
                T.RandomHorizontalFlip(),
                *_normalise(d),
            ]
        )
        plo, phi = d.img_patch_preresize_range
        self.patch_source = T.Compose(
            [
                T.RandomResizedCrop(d.img_patch_preresize, scale=(plo, phi)),
                *_colour(d, blur=False),  # one jitter for all the patches of an image
                T.RandomHorizontalFlip(),
                *_normalise(d),
            ]
        )

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, list[torch.Tensor]]:
        d = self.spec
        teacher = self.teacher(image)
        groups: list[torch.Tensor] = []
        if d.num_img_crops and not d.only_patches:
            groups.append(torch.stack([self.crop(image) for _ in range(d.num_img_crops)]))
        if d.num_img_patches:
            base = self.patch_source(image)
            groups.append(grid_patches(base, d.img_patch_size, d.img_patch_jitter, d.num_img_patches))
        return teacher, groups


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63 - 1)


class MultiCropDataset(Dataset):
    def __init__(self, source: ImageSource, spec: DataSpec, seed: int = 0) -> None:
        self.source, self.transform, self.seed = source, MultiCropTransform(spec), seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """`key` is a sample index, or (index, position in the epoch) so that an image drawn twice in one
        resampled epoch gets two different sets of views."""
        index, position = key if isinstance(key, tuple) else (key, key)
        image, label = self.source[index]
        seed = sample_seed(self.seed, self.epoch, position)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                teacher, groups = self.transform(image)
            finally:
                random.setstate(py_state)
        return teacher, groups, label


def collate_multicrop(batch: list) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    teachers, groups, labels = zip(*batch, strict=True)
    stacked = [torch.stack([g[i] for g in groups]) for i in range(len(groups[0]))]
    return torch.stack(teachers), stacked, torch.tensor(labels, dtype=torch.long)


def eval_transform(resize: int, size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Resize → CenterCrop → tensor → normalise: the test view of every evaluation."""
    return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


def train_linear_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """RandomResizedCrop + flip: the training view of linear probes and fine-tuning."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
