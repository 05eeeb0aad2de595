from pathlib import Path

import pytest
import torch

from obow.config import load_pretrain_config
from obow.io.atomic import save_atomic
from obow.io.checkpoint import FORMAT_VERSION, PRETRAIN_FORMAT
from obow.models.obow import build_obow


def randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine values, so a mixed-up name cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            if m.affine:
                m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
            m.num_batches_tracked = torch.tensor(7)


def write_training_checkpoint(path: Path, preset: str, overrides: list[str], epoch: int = 3):
    spec = load_pretrain_config(preset, overrides)
    torch.manual_seed(0)
    model = build_obow(spec)
    randomise_bn(model)
    payload = {"format": PRETRAIN_FORMAT, "format_version": FORMAT_VERSION, "epoch": epoch, "iteration": 10,
               "iteration_in_epoch": 0, "spec": spec.model_dump(mode="json"), "model": model.state_dict(),
               "optimizer": {}, "rng": None}
    save_atomic(payload, path)
    return model


@pytest.fixture(scope="session")
def r18_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("r18") / "checkpoint_0003.pt"
    model = write_training_checkpoint(
        path, "ImageNet20/ResNet18_OBoW_full", ["model.bow_extractor_opts.num_words=256", "data.batch_size=128"]
    )
    return path, model


@pytest.fixture(scope="session")
def r50_backbone(tmp_path_factory):
    """A ResNet50 student as an OBoW Lab backbone file (what `obow import` makes of a feature extractor).

    A whole ResNet50 OBoW checkpoint (student, teacher, generators) is ~330 MB; the backbone-only file
    exercises the same ResNet50 name mappings at a third of the disk traffic.
    """
    from obow.models.backbone import build_backbone
    from obow.models.state import backbone_payload

    torch.manual_seed(1)
    backbone = build_backbone("resnet50")
    randomise_bn(backbone, seed=1)
    path = tmp_path_factory.mktemp("r50") / "resnet50_backbone.pt"
    save_atomic(backbone_payload(backbone, {"path": "test", "epoch": 200}), path)
    return path, backbone.eval()
