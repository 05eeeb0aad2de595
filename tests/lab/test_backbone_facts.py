"""The lab's torch-free backbone facts and its random-init baselines carry `block4_width` (a last stage
wider than the rest): export formats are refused for it by name, and a baseline draws the same network."""

from __future__ import annotations

from obow.config.eval import BaselineSpec, baseline_key
from obow.eval.baselines import baseline_features
from server.services.backbones import Backbone, _from_mapping, export_formats


def test_the_labs_facts_and_baselines_carry_it():
    facts = _from_mapping({"small_stem": True, "width": 0.125, "block4_width": 0.25}, "resnet18")
    assert facts == Backbone("resnet18", True, 0.125, 0.25)
    assert facts.as_dict()["block4_width"] == 0.25
    assert "block4_width" not in Backbone("resnet18", False, 1.0).as_dict()
    assert _from_mapping({"block4_width": "wide"}, "resnet18") is None
    refused = export_formats(Backbone("resnet18", False, 1.0, 2.0))
    assert not refused["torchvision"]["allowed"] and "block4_width" in refused["torchvision"]["reason"]
    assert refused["safetensors"]["allowed"]

    small = {"subset": 6, "test_subset": 3, "k": [3], "workers": 0, "device": "cpu"}
    common = {"features": "random_init", "protocol": "knn", "dataset": "Synthetic", "evaluation": small,
              "small_stem": True, "width": 0.125}
    plain, wide = BaselineSpec(**common), BaselineSpec(**common, block4_width=0.25)
    assert baseline_key(plain) != baseline_key(wide)
    assert baseline_features(wide, 32).out_dim == 128 and baseline_features(plain, 32).out_dim == 64
