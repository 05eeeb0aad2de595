import pytest
import torch

from obow.config.pretrain import PretrainSpec
from obow.io.atomic import save_atomic
from obow.io.checkpoint import FORMAT_VERSION, PRETRAIN_FORMAT
from obow.models.backbone import ResNetBackbone


def randomise_bn_stats(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-default running statistics, so a probe that leaves BN in train mode visibly changes them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.05
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5


def write_tiny_checkpoint(path, seed: int = 0, arch: str = "resnet18", width: float = 0.125):
    torch.manual_seed(seed)
    backbone = ResNetBackbone(arch=arch, small_stem=True, width=width)
    randomise_bn_stats(backbone, seed)
    spec = PretrainSpec.model_validate({
        "model": {"feature_extractor_arch": arch, "feature_extractor_opts": {"small_stem": True, "width": width},
                  "bow_extractor_opts": {"num_words": 256}, "num_classes": 10},
        "data": {"dataset_name": "FashionMNIST", "batch_size": 32},
    })
    payload = {"format": PRETRAIN_FORMAT, "format_version": FORMAT_VERSION, "epoch": 1, "iteration": 1,
               "spec": spec.model_dump(mode="json"),
               "model": {f"student.{k}": v for k, v in backbone.state_dict().items()}}
    save_atomic(payload, path)
    return backbone


@pytest.fixture(scope="session")
def tiny_backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval_ckpt") / "checkpoint_0001.pt"
    backbone = write_tiny_checkpoint(path)
    return path, backbone.eval()
