"""Parameter-name translations from torchvision ResNets to the layouts of the export formats.

(The official OBoW names, which are read rather than written, are mapped in `obow.io.layouts`.)

All functions are pure string maps over torchvision keys (`conv1.weight`, `layer2.0.bn1.running_var`,
`layer3.0.downsample.1.weight`, ...), so each is tested against names built independently.
"""

from __future__ import annotations

# Ordered rewrites that turn a torchvision key into a Caffe2 (Detectron / fair benchmark) blob name.
_CAFFE2_REWRITES: tuple[tuple[str, str], ...] = (
    (".downsample.1.", ".branch1_bn."),
    (".downsample.0.", ".branch1."),
    (".conv1.", ".branch2a."),
    (".bn1.", ".branch2a_bn."),
    (".conv2.", ".branch2b."),
    (".bn2.", ".branch2b_bn."),
    (".conv3.", ".branch2c."),
    (".bn3.", ".branch2c_bn."),
    ("layer1.", "res2."),
    ("layer2.", "res3."),
    ("layer3.", "res4."),
    ("layer4.", "res5."),
    ("bn1.", "conv1_bn."),
    ("conv1_", "res.conv1_"),
    ("_bn.weight", "_bn.scale"),
    ("_bn.scale", "_bn.s"),
    ("_bn.running_mean", "_bn.rm"),
    ("_bn.running_var", "_bn.riv"),
    (".weight", ".w"),
    (".bias", ".b"),
    ("_bn", ".bn"),
)


def caffe2_blob_name(key: str) -> str:
    """`layer1.0.bn1.running_var` -> `res2_0_branch2a_bn_riv` (riv holds the variance itself)."""
    for old, new in _CAFFE2_REWRITES:
        key = key.replace(old, new)
    return key.replace(".", "_")


def detectron2_name(key: str) -> str:
    """`layer1.0.bn1.weight` -> `res2.0.conv1.norm.weight`; stem parameters go under `stem.`."""
    if not key.startswith("layer"):
        key = "stem." + key
    for stage in (1, 2, 3, 4):
        key = key.replace(f"layer{stage}.", f"res{stage + 1}.")
    for i in (1, 2, 3):
        key = key.replace(f"bn{i}.", f"conv{i}.norm.")
    return key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
