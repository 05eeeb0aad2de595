"""The 7x7 stem runs channels-last on the CPU: same numbers, same layout handed on, same BN statistics.

The reference is the stem written out with `torch.nn.functional` on NCHW tensors, followed by copies of
the same residual stages, so a wrong layout, a skipped max-pool or a BatchNorm that sees another batch
would show in the features, the gradients or the running statistics.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from obow.models.backbone import ResNetBackbone


def reference_forward(net: ResNetBackbone, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """NCHW all the way: conv1, train-mode BN with running statistics, ReLU, 3x3/2 max-pool, then stages."""
    y = F.conv2d(x, net.conv1.weight, stride=2, padding=3)
    y = F.batch_norm(
        y, net.bn1.running_mean, net.bn1.running_var, net.bn1.weight, net.bn1.bias,
        training=net.training, momentum=net.bn1.momentum, eps=net.bn1.eps,
    )
    if net.training:
        net.bn1.num_batches_tracked += 1
    y = F.max_pool2d(F.relu(y), kernel_size=3, stride=2, padding=1)
    out = {}
    for i, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        y = layer(y)
        out[f"block{i + 1}"] = y
    out["pooled"] = y.mean(dim=(2, 3))
    return out


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("training", [True, False])
def test_cpu_stem_matches_plain_nchw(dtype: torch.dtype, tol: float, training: bool) -> None:
    torch.manual_seed(0)
    net = ResNetBackbone("resnet18", width=0.25).to(dtype).train(training)
    ref = copy.deepcopy(net)
    x = torch.randn(3, 3, 40, 36, dtype=dtype)
    taps = ("block1", "block3", "pooled")

    seen = {}
    net.conv1.register_forward_pre_hook(
        lambda _m, args: seen.update(channels_last=args[0].is_contiguous(memory_format=torch.channels_last))
    )
    got = net(x, taps)
    assert seen["channels_last"], "the 7x7 stem should run channels-last on the CPU"
    want = reference_forward(ref, x)
    for name in taps:
        assert got[name].is_contiguous(), f"{name} should be handed on NCHW-contiguous"
        torch.testing.assert_close(got[name], want[name], rtol=tol, atol=tol)

    # gradients of every parameter and the stem's BN statistics, through a loss on two taps
    weights = {name: torch.randn_like(want[name]) for name in ("block1", "pooled")}
    sum((got[n] * w).sum() for n, w in weights.items()).backward()
    sum((want[n] * w).sum() for n, w in weights.items()).backward()
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=tol * 10, atol=tol * 10, msg=f"grad of {name}")
    for (name, b), (_, c) in zip(net.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=tol, atol=tol, msg=f"buffer {name}")


def test_channels_last_input_keeps_its_layout() -> None:
    """With `runtime.channels_last` the whole network is channels-last: the stem must not undo that."""
    net = ResNetBackbone("resnet18", width=0.25).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = net(x, ("block1",))["block1"]
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()


def test_small_stem_left_nchw() -> None:
    """The 3x3 small stem is faster NCHW on the CPU: its input is passed as given."""
    net = ResNetBackbone("resnet18", small_stem=True, width=0.125)
    x = torch.randn(2, 3, 16, 16)
    seen = {}
    net.conv1.register_forward_pre_hook(lambda _m, args: seen.update(layout=args[0].is_contiguous()))
    net(x, ("block1",))
    assert seen["layout"] is True
