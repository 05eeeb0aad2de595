"""ResNet backbone returning named intermediate features.

Parameter names are exactly torchvision's (`conv1`, `bn1`, `layer1..4`), so a backbone of width 1.0
loads into `torchvision.models.resnet{18,50}` with `strict=True` once `fc` is added. `block4_width` widens the
last stage alone: on a small-stem network block4 runs at 1/64 of the pixels, so doubling its channels
doubles the pooled features (what the linear probe and kNN see) for about a fifth more step time.
Feature taps are named as in OBoW: `block1`..`block4` (stage outputs) and `pooled` (global average of
block4, [N, C]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init
from torchvision.models.resnet import BasicBlock, Bottleneck

ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
TAPS = ("block1", "block2", "block3", "block4", "pooled")
# below this many input channels oneDNN's channels-last weight gradient of a 1x1 stride-2 conv is unsafe on the CPU
NARROW_PROJECTION = 16


class ShortcutProjection(nn.Conv2d):
    """The 1x1 (strided) convolution of a residual stage's shortcut; a plain `Conv2d` everywhere but one case.

    On the CPU, the channels-last weight gradient of a 1x1 stride-2 convolution with 2 to 15 input channels
    (torch 2.14.1, oneDNN on AVX-512, float32 and bfloat16) kills the process with a segfault, corrupts the
    heap or returns a gradient 30% off, depending on the map size (16 channels and more, 3x3 and stride-1
    convolutions are exact); on an AVX2-only CPU the same happens in float32 with 2 to 7 channels (30-98%
    off, or the call never returns); on an Intel Xeon with AMX it segfaults in float32 with 7 to 15 channels
    (bfloat16 exact there). An eighth-width ResNet18 has 8 such channels into block2, so with
    `runtime.channels_last` this one convolution runs NCHW there, which costs next to nothing at that width.
    The class keeps `Conv2d`'s parameters and names, so checkpoints and torchvision exports are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and self.stride != (1, 1)
            and self.in_channels < NARROW_PROJECTION
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()
        ):
            # a channels-last model's 1x1 weight has channels-last strides too (both layouts at once), which
            # would send the conv down the same path: both operands get plain NCHW strides
            weight = self.weight.clone(memory_format=torch.contiguous_format)
            nchw = self._conv_forward(x.contiguous(), weight, self.bias)
            return nchw.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class BlockConv3x3(nn.Conv2d):
    """A residual block's 3x3 convolution (padding 1); a matrix product where its output map is one pixel.

    That output pixel sees a 1x1 input through the kernel's centre tap alone and a 2x2 one through the
    centre and the taps right of and below it (the rest of the window is padding), so the convolution is
    `x @ w[:, :, 1:1+H, 1:1+W]`: the same sums in another order.
    On the CPU, oneDNN's kernels are slow on such maps (block4 of a 32 px crop, whose 3x3 maps are 1x1):
    forward and backward of a 40x512x1x1 map with ResNet18's 512->512 weights take 9.0 ms in float32 and
    10.0 ms in bfloat16 there against 4.0 and 1.4 ms as a product, and 2x2 -> 1x1 at stride 2 7.8 ms
    against 2.6 (Intel Xeon with AMX, 2 threads). Larger maps stay convolutions: built as products from
    gathered taps, 2x2 -> 2x2 took 5-7 times as long as the convolution. GPUs keep the convolution.
    Parameters and names are `Conv2d`'s, so checkpoints and torchvision exports are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or not self._one_pixel_out(x.shape[-2], x.shape[-1]):
            return super().forward(x)
        n, c, h, w = x.shape
        taps = self.weight[:, :, 1 : 1 + h, 1 : 1 + w]
        if h * w > 1 and not x.is_contiguous():  # channels-last: flatten as (y, x, c) without a copy
            flat_x, flat_w = x.permute(0, 2, 3, 1).reshape(n, h * w * c), taps.permute(0, 2, 3, 1)
        else:
            flat_x, flat_w = x.reshape(n, c * h * w), taps
        out = nn.functional.linear(flat_x, flat_w.reshape(self.out_channels, -1), self.bias)
        return out.view(n, self.out_channels, 1, 1)

    def _one_pixel_out(self, h: int, w: int) -> bool:
        return (
            self.kernel_size == (3, 3)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and 1 <= h <= min(2, self.stride[0])
            and 1 <= w <= min(2, self.stride[1])
        )


def _with_block_convs(block: nn.Module) -> nn.Module:
    """Make a torchvision block's 3x3 convolutions `BlockConv3x3`s holding the same parameters.

    `skip_init` builds each one without drawing from the random generator, so a seed gives the same
    initial weights as with torchvision's plain blocks.
    """
    for name, conv in list(block.named_children()):
        if type(conv) is nn.Conv2d and conv.kernel_size == (3, 3):
            swapped = skip_init(
                BlockConv3x3,
                conv.in_channels,
                conv.out_channels,
                3,
                stride=conv.stride,
                padding=conv.padding,
                dilation=conv.dilation,
                groups=conv.groups,
                bias=conv.bias is not None,
            )
            swapped.weight, swapped.bias = conv.weight, conv.bias
            setattr(block, name, swapped)
    return block


class ResNetBackbone(nn.Module):
    def __init__(
        self, arch: str = "resnet18", small_stem: bool = False, width: float = 1.0, block4_width: float | None = None
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch '{arch}', expected one of {sorted(ARCHS)}")
        block, depths = ARCHS[arch]
        planes = [max(1, round(64 * width * 2**i)) for i in range(4)]
        if block4_width is not None:
            block4_planes = max(1, round(512 * block4_width))
            if block4_planes == planes[3]:
                block4_width = None  # the same network as without it: one name for it
            planes[3] = block4_planes
        self.arch, self.small_stem, self.width, self.block4_width = arch, small_stem, width, block4_width
        self.inplanes = planes[0]
        if small_stem:
            self.conv1 = nn.Conv2d(3, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if small_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        self.layer1 = self._make_layer(block, planes[0], depths[0], stride=1)
        self.layer2 = self._make_layer(block, planes[1], depths[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], depths[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], depths[3], stride=2)
        expansion = block.expansion
        self.channels = {f"block{i + 1}": planes[i] * expansion for i in range(4)}
        self.channels["pooled"] = self.channels["block4"]
        self.out_dim = self.channels["block4"]
        self._init_weights()

    def facts(self) -> dict[str, Any]:
        """What a reader needs to rebuild this network: arch, stem and widths. `block4_width` only when
        block4 is widened apart, so the files and records of every other backbone read as before."""
        facts: dict[str, Any] = {"arch": self.arch, "small_stem": self.small_stem, "width": self.width}
        return facts if self.block4_width is None else {**facts, "block4_width": self.block4_width}

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                ShortcutProjection(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [_with_block_convs(block(self.inplanes, planes, stride, downsample))]
        self.inplanes = planes * block.expansion
        layers += [_with_block_convs(block(self.inplanes, planes)) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's default initialisation (zero_init_residual=False), which OBoW trains from.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def stride(self) -> dict[str, int]:
        base = 1 if self.small_stem else 4
        return {"block1": base, "block2": base * 2, "block3": base * 4, "block4": base * 8}

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1, bn1, relu and max-pool; the 7x7 stem runs channels-last on the CPU.

        With 3 input channels oneDNN's NCHW kernels are far from its channels-last ones on the CPU (ResNet18's
        stem on 8x3x192x192: 37 against 16 ms forward, the max-pool alone 20 against 2 ms), so an NCHW
        input is laid out channels-last for the stem and handed back NCHW (the rest of the network keeps the
        layout it was given; `runtime.channels_last` makes the whole network channels-last instead). The
        3x3 small stem is faster NCHW and is left alone, as is every GPU.
        """
        relayout = not (
            self.small_stem or x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last)
        )
        if relayout:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return x.contiguous() if relayout else x

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        """Run up to the deepest requested tap and return the requested features by name."""
        unknown = set(taps) - set(TAPS)
        if unknown:
            raise ValueError(f"unknown feature taps {sorted(unknown)}; available: {TAPS}")
        deepest = max(TAPS.index(t) for t in taps)
        out: dict[str, torch.Tensor] = {}
        x = self._stem(x)
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            name = f"block{i + 1}"
            if name in taps:
                out[name] = x
            if i >= deepest:
                return out
        if "pooled" in taps:
            out["pooled"] = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return out


def build_backbone(
    arch: str, small_stem: bool = False, width: float = 1.0, block4_width: float | None = None
) -> ResNetBackbone:
    return ResNetBackbone(arch=arch, small_stem=small_stem, width=width, block4_width=block4_width)
