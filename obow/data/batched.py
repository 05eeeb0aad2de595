"""Batched OBoW views: decode with `torchvision.io`, then make every view of a whole batch with tensor ops.

The PIL path (`multicrop.py`) builds each view of each sample in Python, which a GPU at thousands of
images/s outruns. Here only the geometry is per sample (one antialiased `resized_crop` per view, on
the device that holds the decoded image); colour jitter, grayscale, blur, flip, normalisation and
the patch grid run once per batch with per-sample parameters.

Parameters: sample i of epoch e draws everything from one `torch.rand` of a generator seeded with
`sample_seed(seed, e, position)` (the PIL path's seed), so a batch is a pure function of
(seed, epoch, positions) whatever the device or the number of loader workers, and resume stays exact.
The distributions are the PIL path's (torchvision's RandomResizedCrop, ColorJitter with a random order,
RandomGrayscale, the blur σ ~ U[lo, hi], the 3×3 jittered patch grid); the pixels are not bit-equal
to PIL's (different resampling and blur kernels).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from obow.config.pretrain import DataSpec

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range
ATTEMPTS = 10  # RandomResizedCrop's rejection-sampling attempts before the central fallback
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma as torchvision rounds it for tensors


# -- parameters ------------------------------------------------------------------------------------
def resized_crop_box(u: torch.Tensor, height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop from 2·ATTEMPTS + 2 uniforms in [0, 1).

    Area fraction ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3); the first attempt that fits
    wins, else a central crop with the ratio clamped (torchvision's algorithm).
    """
    area = height * width
    lo, hi = math.log(RATIO[0]), math.log(RATIO[1])
    for a in range(ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(u[2 * a]))
        aspect = math.exp(lo + (hi - lo) * float(u[2 * a + 1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(float(u[-2]) * (height - h + 1)), height - h)
            left = min(int(float(u[-1]) * (width - w + 1)), width - w)
            return top, left, h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


BOX_DRAWS = 2 * ATTEMPTS + 2
COLOUR_DRAWS = 1 + 4 + 4 + 1  # apply, four factors, four order keys, grayscale


@dataclass
class ViewParams:
    """Parameters of a set of views (one row per view); colour factors are identity where not applied."""

    boxes: list[tuple[int, int, int, int]]
    jitter: torch.Tensor  # [n] bool
    factors: torch.Tensor  # [n, 4] brightness, contrast, saturation, hue
    order: torch.Tensor  # [n, 4] permutation of the four colour ops
    gray: torch.Tensor  # [n] bool
    blur: torch.Tensor  # [n] bool
    sigma: torch.Tensor  # [n]
    flip: torch.Tensor  # [n] bool


@dataclass
class SampleParams:
    teacher_flip: bool
    crops: ViewParams
    patch_source: ViewParams
    grid_offsets: torch.Tensor  # [9, 2] (dy, dx) jitter of each cell
    keep: torch.Tensor  # [num_patches] kept cells


def _colour(u: torch.Tensor, d: DataSpec) -> tuple[bool, list[float], list[int], bool]:
    """(jitter applied, factors, op order, grayscale) from COLOUR_DRAWS uniforms."""
    b, c, s, h = d.cjitter
    apply = float(u[0]) < d.cjitter_p
    ranges = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)]
    factors = [lo + (hi - lo) * float(u[1 + i]) for i, (lo, hi) in enumerate(ranges)]
    if not apply:
        factors = [1.0, 1.0, 1.0, 0.0]
    order = torch.argsort(u[5:9]).tolist()  # argsort of i.i.d. uniforms: a uniform permutation
    return apply, factors, order, float(u[9]) < d.gray_p


def _views(u: torch.Tensor, n: int, height: int, width: int, size_range: list[float], d: DataSpec, blur: bool):
    per_view = BOX_DRAWS + COLOUR_DRAWS + 3
    boxes, jit, fac, order, gray, bl, sig, flip = [], [], [], [], [], [], [], []
    lo, hi = (d.gaussian_blur or [0.0, 0.0])[:2]
    for v in range(n):
        w = u[v * per_view : (v + 1) * per_view]
        boxes.append(resized_crop_box(w[:BOX_DRAWS], height, width, (size_range[0], size_range[1])))
        a, f, o, g = _colour(w[BOX_DRAWS : BOX_DRAWS + COLOUR_DRAWS], d)
        jit.append(a)
        fac.append(f)
        order.append(o)
        gray.append(g)
        rest = w[BOX_DRAWS + COLOUR_DRAWS :]
        use_blur = blur and d.gaussian_blur is not None and float(rest[0]) < d.gaussian_blur_p
        bl.append(use_blur)
        sig.append(lo + (hi - lo) * float(rest[1]))
        flip.append(float(rest[2]) < 0.5)
    return (
        ViewParams(
            boxes,
            torch.tensor(jit, dtype=torch.bool),
            torch.tensor(fac, dtype=torch.float32).view(n, 4),
            torch.tensor(order, dtype=torch.long).view(n, 4),
            torch.tensor(gray, dtype=torch.bool),
            torch.tensor(bl, dtype=torch.bool),
            torch.tensor(sig, dtype=torch.float32),
            torch.tensor(flip, dtype=torch.bool),
        ),
        n * per_view,
    )


def sample_params(seed: int, height: int, width: int, d: DataSpec) -> SampleParams:
    """Every random choice of one sample's views, from one generator seeded with `seed`."""
    crops = d.num_img_crops if not d.only_patches else 0
    per_view = BOX_DRAWS + COLOUR_DRAWS + 3
    total = 1 + crops * per_view + per_view + 18 + 9
    u = torch.rand(total, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    teacher_flip = float(u[0]) < 0.5
    crop_params, used = _views(u[1:], crops, height, width, d.image_crop_range, d, blur=True)
    start = 1 + used
    patch, used = _views(u[start:], 1, height, width, d.img_patch_preresize_range, d, blur=False)
    start += used
    offsets = (u[start : start + 18] * (d.img_patch_jitter + 1)).long().clamp_max(d.img_patch_jitter).view(9, 2)
    keep = torch.argsort(u[start + 18 : start + 27])[: d.num_img_patches]
    return SampleParams(teacher_flip, crop_params, patch, offsets, keep)


# -- batched pixel operations (x: float [N, 3, H, W] in [0, 1]) -------------------------------------
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma [N, 1, H, W] with the ITU-R 601-2 weights."""
    w = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with each image's mean luma (torchvision's definition)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` turns per image: RGB -> HSV, h + shift mod 1, HSV -> RGB."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    i = torch.floor(h * 6.0)
    fpart = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * fpart), v * (1 - s * (1 - fpart))
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (cr, cg, cb) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack((cr, cg, cb), dim=1), out)
    return out


COLOUR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def colour_jitter(x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-image factors and per-image op order; images with `apply` False are untouched.

    At each of the four slots, each op runs once on the images that have it in that slot.
    """
    x = x.clone()
    for slot in range(4):
        for op_index, op in enumerate(COLOUR_OPS):
            sel = (apply & (order[:, slot] == op_index)).nonzero().flatten()
            if sel.numel():
                x[sel] = op(x[sel], factors[sel, op_index])
    return x


def random_grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a σ per image (reflect padding), applied where `mask` is set."""
    sel = mask.nonzero().flatten()
    if not sel.numel():
        return x
    half = max(1, math.ceil(3 * max_sigma))
    taps = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma[sel].to(x).view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [n, k]
    n, c, h, w = x[sel].shape
    half = min(half, h - 1, w - 1)
    kernel = kernel[:, kernel.shape[1] // 2 - half : kernel.shape[1] // 2 + half + 1]
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    weight = kernel.repeat_interleave(c, dim=0)  # [n·c, k]
    y = x[sel].reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), weight.view(n * c, 1, -1, 1), groups=n * c)
    out = x.clone()
    out[sel] = y.view(n, c, h, w)
    return out


def random_flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def normalise(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)


def grid_patches_batch(x: torch.Tensor, offsets: torch.Tensor, keep: torch.Tensor, patch: int, jitter: int):
    """[N, 3, S, S] -> [N, keep, 3, patch, patch]: cell (i, j) of the 3×3 grid at (i·o + dy, j·o + dx).

    o = (S − patch − jitter) // 2, as the PIL path; one gather for the whole batch.
    """
    n, _c, size, _ = x.shape
    o = (size - patch - jitter) // 2
    cells = torch.arange(9, device=x.device)
    base = torch.stack((cells // 3, cells % 3), dim=1) * o  # [9, 2]
    corners = (base.unsqueeze(0) + offsets.to(x.device)).gather(1, keep.to(x.device).unsqueeze(2).expand(-1, -1, 2))
    ar = torch.arange(patch, device=x.device)
    ys = corners[..., 0:1] + ar  # [N, keep, patch]
    xs = corners[..., 1:2] + ar
    img = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    nhwc = x.permute(0, 2, 3, 1)
    out = nhwc[img, ys.unsqueeze(3), xs.unsqueeze(2)]  # [N, keep, patch, patch, C]
    return out.permute(0, 1, 4, 2, 3).contiguous()


# -- the pipeline ----------------------------------------------------------------------------------
def _stack_params(views: list[ViewParams], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        key: torch.cat([getattr(v, key) for v in views]).to(device)
        for key in ("jitter", "factors", "order", "gray", "blur", "sigma", "flip")
    }


def _crops(images: list[torch.Tensor], views: list[ViewParams], size: int) -> torch.Tensor:
    out = [
        TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        for img, v in zip(images, views, strict=True)
        for top, left, h, w in v.boxes
    ]
    return torch.stack(out).float().div_(255.0)


class BatchedMultiCrop:
    """The PIL path's views for a batch of decoded uint8 [3, H, W] images (any sizes, any device)."""

    def __init__(self, d: DataSpec) -> None:
        self.spec = d

    def params(self, images: list[torch.Tensor], seeds: list[int]) -> list[SampleParams]:
        shapes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        return [sample_params(s, h, w, self.spec) for (h, w), s in zip(shapes, seeds, strict=True)]

    def _augment(self, x: torch.Tensor, views: list[ViewParams], blur: bool) -> torch.Tensor:
        d, p = self.spec, _stack_params(views, x.device)
        x = colour_jitter(x, p["jitter"], p["factors"], p["order"])
        x = random_grayscale(x, p["gray"])
        if blur and d.gaussian_blur is not None:
            x = gaussian_blur(x, p["blur"], p["sigma"], float(d.gaussian_blur[1]))
        return normalise(random_flip(x, p["flip"]), d.mean, d.std)

    def __call__(self, images: list[torch.Tensor], seeds: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(teacher [B, 3, t, t], crop groups [B, n, 3, s, s]) normalised float32, on the images' device."""
        d, b = self.spec, len(images)
        params = self.params(images, seeds)
        teacher = torch.stack(
            [TF.center_crop(TF.resize(img, [d.teacher_resize], antialias=True), [d.teacher_size]) for img in images]
        ).float().div_(255.0)
        flips = torch.tensor([p.teacher_flip for p in params], device=teacher.device)
        teacher = normalise(random_flip(teacher, flips), d.mean, d.std)
        groups: list[torch.Tensor] = []
        n = d.num_img_crops if not d.only_patches else 0
        if n:
            views = [p.crops for p in params]
            crops = self._augment(_crops(images, views, d.image_crop_size), views, blur=True)
            groups.append(crops.view(b, n, *crops.shape[1:]))
        if d.num_img_patches:
            views = [p.patch_source for p in params]
            source = self._augment(_crops(images, views, d.img_patch_preresize), views, blur=False)
            offsets = torch.stack([p.grid_offsets for p in params])
            keep = torch.stack([p.keep for p in params])
            groups.append(grid_patches_batch(source, offsets, keep, d.img_patch_size, d.img_patch_jitter))
        return teacher, groups


# -- decoding and the loader side --------------------------------------------------------------------
def decode(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Encoded files (uint8 1-D) -> RGB uint8 [3, H, W] on `device`; JPEGs are decoded there on a GPU.

    Already decoded [3, H, W] tensors pass through (moved to `device`).
    """
    with warnings.catch_warnings():  # torchvision 0.29 announces a move of its decoders to torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpeg = [i for i, t in enumerate(encoded) if t.dim() == 1 and t.numel() > 2 and t[:2].tolist() == [0xFF, 0xD8]]
    if device.type == "cuda" and jpeg:
        decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpeg, decoded, strict=True):
            out[i] = img
    for i, t in enumerate(encoded):
        if out[i] is None:
            img = decode_image(t, mode=ImageReadMode.RGB) if t.dim() == 1 else t
            out[i] = img.to(device, non_blocking=True)
    return [img for img in out if img is not None]


class RawImageDataset(torch.utils.data.Dataset):
    """Sample i as (encoded file bytes or uint8 [3, H, W], label, view seed) for `BatchedMultiCrop`.

    With `decode_in_worker` the loader workers decode (CPU training); without it the encoded bytes
    travel to the main process, which decodes the whole batch on the GPU.
    """

    def __init__(self, source, seed: int = 0, decode_in_worker: bool = True) -> None:
        self.source, self.seed, self.decode_in_worker = source, seed, decode_in_worker
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def raw(self, index: int) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, read_file
        from torchvision.transforms.v2.functional import pil_to_tensor

        from obow.data.sources import ArraySource, FileListSource, SubsetSource

        source = self.source
        while isinstance(source, SubsetSource):
            source, index = source.base, source.indices[index]
        if isinstance(source, FileListSource):
            data = read_file(str(source.paths[index]))
            return decode_image(data, mode=ImageReadMode.RGB) if self.decode_in_worker else data
        if isinstance(source, ArraySource):
            array = torch.from_numpy(source.images[index])
            rgb = array.expand(3, *array.shape) if array.dim() == 2 else array.permute(2, 0, 1)
            return rgb.contiguous()
        return pil_to_tensor(source.get_image(index))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        from obow.data.multicrop import sample_seed

        index, position = key if isinstance(key, tuple) else (key, key)
        return self.raw(index), self.source.targets[index], sample_seed(self.seed, self.epoch, position)


def collate_raw(batch: list) -> tuple[list[torch.Tensor], torch.Tensor, list[int]]:
    images, labels, seeds = zip(*batch, strict=True)
    return list(images), torch.tensor(labels, dtype=torch.long), list(seeds)
