"""Presets, original YAML keys, overrides and bad config input."""

from pathlib import Path

import pytest
import yaml

from obow.config import list_presets, load_pretrain_config, preset_dict
from obow.errors import ConfigError

ORIGINALS = {
    # name: (arch, levels, inv_delta, kappa, wd, lr, schedule, epochs, batch, crops, patches, subset)
    "ImageNet20/ResNet18_OBoW_vanilla": ("resnet18", ["block4"], 10, 5, 5e-4, 0.05, "cos", 80, 256, 1, 0, 260),
    "ImageNet20/ResNet18_OBoW_full": ("resnet18", ["block3", "block4"], 10, 5, 5e-4, 0.05, "cos", 80, 128, 2, 5, 260),
    "ImageNetFull/ResNet50_OBoW_full": (
        "resnet50", ["block3", "block4"], 15, 8, 1e-4, 0.03, "cos_warmup", 200, 256, 2, 5, None,
    ),
}


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_original_presets_carry_the_papers_numbers(name):
    arch, levels, inv_delta, kappa, wd, lr, sched, epochs, batch, crops, patches, subset = ORIGINALS[name]
    spec = load_pretrain_config(name)
    assert spec.name == name
    m, o, d = spec.model, spec.optim, spec.data
    assert (m.feature_extractor_arch, m.bow_levels) == (arch, levels)
    assert m.per_level("inv_delta") == [inv_delta] * len(levels)
    assert m.per_level("kappa") == [kappa] * len(levels)
    assert m.per_level("num_words") == [8192] * len(levels)
    assert (m.alpha, m.alpha_cosine, m.num_classes) == (0.99, True, 1000)
    assert (o.weight_decay, o.lr, o.lr_schedule_type, o.num_epochs, o.momentum, o.nesterov) == (
        wd, lr, sched, epochs, 0.9, False,
    )
    assert (d.batch_size, d.num_img_crops, d.num_img_patches, d.subset) == (batch, crops, patches, subset)
    assert (d.image_crop_size, d.image_crop_range, d.img_patch_size, d.img_patch_jitter) == (160, [0.08, 0.6], 96, 24)
    assert (d.teacher_resize, d.teacher_size, d.cjitter, d.cjitter_p, d.gray_p) == (
        256, 224, [0.4, 0.4, 0.4, 0.1], 0.8, 0.2,
    )
    if name.startswith("ImageNetFull"):
        assert (o.warmup_epochs, o.end_lr, o.permanent) == (10, 3e-5, 10)


def test_every_preset_validates():
    assert len(list_presets()) >= 5
    for name in list_presets():
        load_pretrain_config(name)


def test_original_yaml_file_loads_with_name_from_config_folder(tmp_path: Path):
    folder = tmp_path / "config" / "ImageNetFull"
    folder.mkdir(parents=True)
    path = folder / "ResNet50_OBoW_full.yaml"
    path.write_text(yaml.safe_dump(preset_dict("ImageNetFull/ResNet50_OBoW_full")))
    spec = load_pretrain_config(str(path))
    assert spec.name == "ImageNetFull/ResNet50_OBoW_full"
    assert spec == load_pretrain_config("ImageNetFull/ResNet50_OBoW_full")


def test_overrides_apply_and_are_typed():
    spec = load_pretrain_config("FashionMNIST/tiny", ["optim.lr=0.2", "model.bow_levels=[block4]"])
    assert spec.optim.lr == 0.2 and spec.model.bow_levels == ["block4"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.not_a_key=1"], "model.not_a_key"),
        (["data.batch_size=48"], "multiple of the total batch size"),
        (["model.bow_extractor_opts.num_words=[256, 256, 256]"], "3 values but there are 2 bow_levels"),
        (["optim.lr=-1"], "optim.lr"),
        (["model.bow_levels=[block2]"], "model.bow_levels"),
        (["optim.lr_schedule_type=cos_warmup", "optim.warmup_epochs=5"], "warmup_epochs"),
        (["name=../../etc"], "name"),
        (["justtext"], "section.key=value"),
        # the original configs' `global_pooling: True` is accepted; False would be ignored, so it is refused
        (["model.feature_extractor_opts.global_pooling=false"], "model.feature_extractor_opts.global_pooling"),
    ],
)
def test_bad_config_gives_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_pretrain_config("FashionMNIST/tiny", overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown preset 'Nope/x'; known presets"):
        load_pretrain_config("Nope/x")
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrain_config("/nonexistent/config.yaml")


def test_bad_yaml_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pretrain_config(str(path))


@pytest.mark.parametrize("raw", ["\x00", "\x01", "\ud800", "[1, 2"])
def test_an_override_that_is_not_yaml_is_a_config_error_naming_it(raw):
    with pytest.raises(ConfigError, match=r"override 'runtime\.threads': its value is not valid YAML"):
        load_pretrain_config("FashionMNIST/tiny", [f"runtime.threads={raw}"])
