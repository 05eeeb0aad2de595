"""A residual block's 3x3 convolution with a one-pixel output runs as a matrix product on the CPU.

The reference is `torch.nn.functional.conv2d` with the same weights (and, for a whole network,
torchvision's own ResNet18 loaded with the backbone's state dict), so a wrong tap slice, a channels-last
input flattened in the wrong order or a gradient that misses a tap would show. The product path is made
to be the one taken: `Conv2d._conv_forward` raises inside these checks wherever the output is one pixel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as torchvision_models

from obow.models import backbone
from obow.models.backbone import BlockConv3x3, ResNetBackbone

ONE_PIXEL_OUT = [  # (input height, input width, stride)
    (1, 1, 1),
    (1, 1, 2),
    (2, 2, 2),
    (1, 2, 2),
    (2, 1, 2),
]


@pytest.fixture
def no_conv_on_one_pixel_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = nn.Conv2d._conv_forward

    def guarded(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = plain(self, x, weight, bias)
        if isinstance(self, BlockConv3x3) and out.shape[-2:] == (1, 1):
            raise AssertionError(f"a one-pixel output of {tuple(x.shape)} went through the convolution")
        return out

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", guarded)


@pytest.mark.usefixtures("no_conv_on_one_pixel_outputs")
@pytest.mark.parametrize("h,w,stride", ONE_PIXEL_OUT)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_product_matches_the_convolution(h: int, w: int, stride: int, channels_last: bool, bias: bool) -> None:
    torch.manual_seed(0)
    conv = BlockConv3x3(5, 7, kernel_size=3, stride=stride, padding=1, bias=bias).double()
    x = torch.randn(4, 5, h, w, dtype=torch.float64)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x_got, x_want = x.clone().requires_grad_(), x.clone().requires_grad_()

    got = conv(x_got)
    want = F.conv2d(x_want, conv.weight, conv.bias, stride=stride, padding=1)
    assert got.shape == want.shape == (4, 7, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    upstream = torch.randn_like(want)
    params = [conv.weight] + ([conv.bias] if bias else [])
    grads_got = torch.autograd.grad(got, [x_got, *params], upstream)
    grads_want = torch.autograd.grad(want, [x_want, *params], upstream)
    for name, g, r in zip(["input", "weight", "bias"], grads_got, grads_want, strict=False):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12, msg=f"gradient of the {name}")
    # the taps the one output pixel cannot see get exactly zero gradient, as from the convolution
    assert grads_got[1][:, :, 0].abs().max() == 0 and grads_got[1][:, :, :, 0].abs().max() == 0


def test_larger_outputs_stay_convolutions() -> None:
    def conv(stride: int, padding: int = 1) -> BlockConv3x3:
        return BlockConv3x3(4, 4, kernel_size=3, stride=stride, padding=padding, bias=False)

    assert not conv(1)._one_pixel_out(2, 2)  # 2x2 -> 2x2 at stride 1
    assert conv(2)._one_pixel_out(2, 2)
    assert not conv(2)._one_pixel_out(3, 3)  # 3x3 -> 2x2
    assert not conv(3)._one_pixel_out(3, 3)  # one pixel out, but the window misses the third row
    assert not conv(2, padding=0)._one_pixel_out(2, 2)


@pytest.mark.usefixtures("no_conv_on_one_pixel_outputs")
@pytest.mark.parametrize("channels_last", [False, True])
def test_resnet18_on_32px_matches_torchvision(channels_last: bool) -> None:
    """At 32 px block4's 3x3 maps are 1x1 (its first convolution 2x2 -> 1x1): features, every parameter's
    gradient and the BatchNorm statistics equal torchvision's ResNet18 with the same state dict."""
    torch.manual_seed(0)
    net = ResNetBackbone("resnet18").double().train()
    ref = torchvision_models.resnet18(weights=None).double().train()
    missing, unexpected = ref.load_state_dict(net.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    got = net(x, ("block3", "pooled"))
    y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
    block3 = ref.layer3(ref.layer2(ref.layer1(y)))
    block4 = ref.layer4(block3)
    assert block4.shape[-2:] == (1, 1)
    pooled = torch.flatten(block4, 1)
    torch.testing.assert_close(got["block3"], block3, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got["pooled"], pooled, rtol=1e-10, atol=1e-10)

    upstream = torch.randn_like(pooled)
    (got["pooled"] * upstream).sum().backward()
    (pooled * upstream).sum().backward()
    ref_params = dict(ref.named_parameters())
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")
    ref_buffers = dict(ref.named_buffers())
    for name, b in net.named_buffers():
        torch.testing.assert_close(b, ref_buffers[name], rtol=1e-10, atol=1e-10, msg=f"buffer {name}")


@pytest.mark.usefixtures("no_conv_on_one_pixel_outputs")
def test_bf16_autocast_takes_the_product_in_bf16() -> None:
    """Under CPU autocast the product runs in bfloat16 as the convolution would, to the same rounding."""
    torch.manual_seed(0)
    conv = BlockConv3x3(64, 32, kernel_size=3, stride=2, padding=1, bias=False)
    x = torch.randn(6, 64, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        want = F.conv2d(x, conv.weight, stride=2, padding=1)
    assert got.dtype == want.dtype == torch.bfloat16
    exact = F.conv2d(x.double(), conv.weight.double(), stride=2, padding=1)
    # both round inputs and weights to bf16 and accumulate in float32: within a few bf16 steps of exact
    torch.testing.assert_close(got.double(), exact, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("arch,block_convs", [("resnet18", 16), ("resnet50", 16)])
def test_names_and_shapes_are_torchvisions(arch: str, block_convs: int) -> None:
    """Only the class of the blocks' 3x3 convolutions differs: the state dict is torchvision's less `fc`."""
    net = ResNetBackbone(arch)
    want = {k: v.shape for k, v in getattr(torchvision_models, arch)(weights=None).state_dict().items()}
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v for k, v in want.items() if "fc." not in k}
    assert sum(isinstance(m, BlockConv3x3) for m in net.modules()) == block_convs
    assert type(net.conv1) is nn.Conv2d  # the stem is not a block's


def test_a_seed_gives_the_weights_of_plain_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap draws nothing from the random generator: a seeded run starts from the same weights as
    with torchvision's blocks untouched (which the bf16 step test's near ties, for one, depend on)."""
    torch.manual_seed(3)
    swapped = ResNetBackbone("resnet18", width=0.25).state_dict()
    monkeypatch.setattr(backbone, "_with_block_convs", lambda block: block)
    torch.manual_seed(3)
    plain_net = ResNetBackbone("resnet18", width=0.25)
    assert not any(isinstance(m, BlockConv3x3) for m in plain_net.modules())
    plain = plain_net.state_dict()
    assert swapped.keys() == plain.keys()
    assert all(torch.equal(swapped[k], plain[k]) for k in plain)
