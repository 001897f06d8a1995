"""The VGG19 feature extractor and the weights-loading path that users use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.errors import WeightsError
from engine.layers import LAYER_INDEX
from engine.vgg import (
    CAFFE_VGG19,
    TORCHVISION_VGG19,
    VGGFeatures,
    hub_checkpoint_path,
    load_state_dict,
    load_vgg19_features,
)


def test_layer_names_follow_torchvision_indices() -> None:
    assert LAYER_INDEX["conv1_1"] == 0
    assert LAYER_INDEX["relu1_1"] == 1
    assert LAYER_INDEX["pool1"] == 4
    assert LAYER_INDEX["relu2_1"] == 6
    assert LAYER_INDEX["relu3_1"] == 11
    assert LAYER_INDEX["relu4_1"] == 20
    assert LAYER_INDEX["relu4_2"] == 22
    assert LAYER_INDEX["relu5_1"] == 29
    assert LAYER_INDEX["pool5"] == 36


def test_loads_explicit_path_cut_after_deepest_layer_and_frozen(vgg_checkpoint: Path) -> None:
    model = load_vgg19_features(vgg_checkpoint, "torchvision", download=False)
    assert len(model.layers) == LAYER_INDEX["relu5_1"] + 1
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.layers)
    state = torch.load(vgg_checkpoint, weights_only=True)
    assert torch.equal(model.layers[28].weight, state["features.28.weight"])
    assert torch.equal(model.layers[0].bias, state["features.0.bias"])


def test_loads_from_torch_hub_cache_honouring_torch_home(hub_cached: Path) -> None:
    assert hub_checkpoint_path() == hub_cached
    model = load_vgg19_features(None, "torchvision", download=False)
    state = torch.load(hub_cached, weights_only=True)
    assert torch.equal(model.layers[2].weight, state["features.2.weight"])


def test_missing_hub_weights_name_the_exact_file_and_url(torch_home: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_vgg19_features(None, "torchvision", download=False)
    message = str(info.value)
    expected = torch_home / "hub" / "checkpoints" / TORCHVISION_VGG19.filename
    assert str(expected) in message
    assert TORCHVISION_VGG19.url in message


def test_missing_caffe_weights_point_at_the_caffe_checkpoint(torch_home: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_vgg19_features(None, "caffe", download=False)
    assert CAFFE_VGG19.filename in str(info.value)
    assert CAFFE_VGG19.url in str(info.value)


def test_missing_explicit_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vgg.pth"
    with pytest.raises(WeightsError, match=str(missing)):
        load_vgg19_features(missing, "torchvision", download=False)


def test_garbage_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    garbage = tmp_path / "vgg.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read VGG19 weights"):
        load_state_dict(garbage)


def test_another_network_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, other)
    with pytest.raises(WeightsError, match="not a VGG19 checkpoint"):
        load_vgg19_features(other, "torchvision", download=False)
    wrong_shapes = {
        f"features.{i}.{k}": torch.zeros(1) for i in range(30) for k in ("weight", "bias")
    }
    torch.save(wrong_shapes, other)
    with pytest.raises(WeightsError, match="not a VGG19 checkpoint"):
        load_vgg19_features(other, "torchvision", download=False)


def test_features_have_the_expected_shapes_and_pooling_matters(vgg_checkpoint: Path) -> None:
    model = load_vgg19_features(vgg_checkpoint, "torchvision", download=False)
    image = torch.rand(2, 3, 64, 48)
    out = model(image, ["relu1_1", "relu4_2", "relu5_1"])
    assert out["relu1_1"].shape == (2, 64, 64, 48)
    assert out["relu4_2"].shape == (2, 512, 8, 6)
    assert out["relu5_1"].shape == (2, 512, 4, 3)
    assert (out["relu1_1"] >= 0).all()
    avg = model(image, ["relu5_1"], pooling="avg")["relu5_1"]
    assert not torch.allclose(avg, out["relu5_1"])


def test_caffe_preprocessing_is_bgr_0_255_minus_means(vgg_checkpoint: Path) -> None:
    state = load_state_dict(vgg_checkpoint)
    model = VGGFeatures(state, preprocess="caffe")
    pixel = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)  # RGB
    got = model.normalise(pixel).flatten().tolist()
    assert got == pytest.approx([0 - 103.939, 127.5 - 116.779, 255 - 123.68], abs=1e-3)
    tv = VGGFeatures(state, preprocess="torchvision").normalise(pixel).flatten().tolist()
    assert tv == pytest.approx([(1 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0 - 0.406) / 0.225])
