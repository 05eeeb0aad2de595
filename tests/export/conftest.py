from pathlib import Path

import pytest
import torch

from obow.config import load_pretrain_config
from obow.models.obow import build_obow
from obow.train.checkpoint import FORMAT_VERSION, PRETRAIN_FORMAT, save_atomic


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
def r50_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("r50") / "checkpoint_0003.pt"
    model = write_training_checkpoint(
        path, "ImageNetFull/ResNet50_OBoW_full", ["model.bow_extractor_opts.num_words=256"]
    )
    return path, model
