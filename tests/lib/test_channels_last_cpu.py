"""`runtime.channels_last` on the CPU with a narrow network: no crash, exact shortcut gradients.

oneDNN's channels-last weight gradient of a 1x1 stride-2 convolution with fewer than 16 input channels
segfaults, corrupts the heap or returns a gradient 30% off on an AVX-512 CPU (torch 2.14.1); an
eighth-width ResNet18 (the Fashion-MNIST presets) has 8 such channels into block2, so the backbone runs
that one convolution NCHW. The checks run in a child process: without the guard the child dies of a
segfault or an abort, which fails the test instead of taking the pytest worker with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = r"""
import json, sys
import torch
import torch.nn.functional as F
from obow.models.backbone import ResNetBackbone, ShortcutProjection

CL = torch.channels_last
precision = sys.argv[1]
result = {}

# one projection alone, 8 -> 16 channels on 64x64 maps: both gradients against float64 NCHW
torch.manual_seed(0)
proj = ShortcutProjection(8, 16, kernel_size=1, stride=2, bias=False).to(memory_format=CL)
x = torch.randn(3, 8, 64, 64)
g = torch.randn(3, 16, 32, 32, dtype=torch.float64)
xin = x.contiguous(memory_format=CL).requires_grad_(True)
with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
    y = proj(xin)
y.float().backward(g.float().contiguous(memory_format=CL))
x64 = x.double().requires_grad_(True)
w64 = proj.weight.detach().double().contiguous().requires_grad_(True)
F.conv2d(x64, w64, stride=2).backward(g)
rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()
result["weight_grad"] = rel(proj.weight.grad, w64.grad)
result["input_grad"] = rel(xin.grad, x64.grad)
result["output_channels_last"] = y.is_contiguous(memory_format=CL)

# the whole eighth-width small-stem network channels-last, three steps on maps that crashed it
torch.manual_seed(0)
net = ResNetBackbone("resnet18", small_stem=True, width=0.125).to(memory_format=CL)
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = net(torch.randn(3, 3, 40, 36).contiguous(memory_format=CL), ("pooled",))["pooled"]
    out.float().sum().backward()
result["finite"] = all(bool(p.grad.isfinite().all()) for p in net.parameters())
print("RESULT " + json.dumps(result))
"""


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_narrow_network_channels_last_on_cpu(precision: str, tol: float) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, precision], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, f"the child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["weight_grad"] < tol, result
    assert result["input_grad"] < tol, result
    assert result["output_channels_last"], "the projection hands its output back channels-last"
    assert result["finite"], result
