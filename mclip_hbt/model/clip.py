"""MultilingualCLIP: an open_clip image tower paired with a multilingual Hugging Face text tower.

The image tower is any open_clip architecture (by name, with a pretrained tag or local
checkpoint, or an explicit vision config) or the bundled ImageNet EfficientNet-Lite0
(``bundled:efficientnet-lite0``, see ``bundled_vision``); the text tower is any ``AutoModel`` (hub name, local
directory or ``bundled:NAME``), pooled and projected into the shared space; a learnable logit
scale (and an optional logit bias for the sigmoid loss) completes the model.

A saved model is a self-contained directory: ``config.json`` (everything needed to rebuild the
architecture, the text encoder's own config included), ``model.safetensors``, the tokenizer
files (in ``tokenizer/``) and ``preprocessor_config.json``. Reloading it needs neither a network nor the sources.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import load_state_dict
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.pretrained import download_pretrained, get_pretrained_cfg
from open_clip.transform import PreprocessCfg, image_transform
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoTokenizer, BatchEncoding

from mclip_hbt.fileio import atomic_directory, parse_json
from mclip_hbt.model.text_tower import POOLINGS, TextTower
from mclip_hbt.offline.bundled_e5 import BUNDLED_E5, E5_QUERY_PREFIX
from mclip_hbt.offline.bundled_vision import (
    BUNDLED_EFFICIENTNET_LITE0,
    IMAGENET_TAG,
    bundled_vision_arch,
    bundled_vision_name,
    bundled_vision_preprocess,
    trunk_state_dict,
)
from mclip_hbt.offline.hf_files import save_tokenizer
from mclip_hbt.offline.hub import ModelUnavailableError, load_or_explain

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESS_NAME = "preprocessor_config.json"
#: Written by the trainer into the final model folder (alpha, seed, steps, ...); read by the evaluators.
TRAIN_META_NAME = "train_meta.json"
TOKENIZER_DIR = "tokenizer"  # its own folder, so transformers never mistakes our config.json for the tokenizer's
PROJECTIONS = ("linear", "mlp", "orthogonal", "none")
T = TypeVar("T")


@dataclass
class MultilingualCLIPConfig:
    """Everything that defines a MultilingualCLIP's architecture and where its initial weights come from."""

    text_model: str = BUNDLED_E5
    #: False: random text weights from the encoder's config (tests, ablations).
    text_pretrained: bool = True
    #: Changes to the text encoder's config (e.g. a tiny ``num_hidden_layers`` for tests).
    text_config_overrides: dict = field(default_factory=dict)
    pooling: str = "mean"
    projection: str = "linear"
    #: Prepended to every caption (E5 encoders expect "query: ").
    text_prefix: str = ""
    max_length: int = 77
    #: An open_clip architecture name or ``bundled:efficientnet-lite0``; its vision config is the starting point.
    vision_model: str = "ViT-B-32"
    #: A pretrained tag of ``vision_model`` ("imagenet" for the bundled tower) or a local checkpoint path;
    #: None = random.
    vision_pretrained: str | None = None
    #: Fields overriding the architecture's vision config (e.g. a tiny ViT).
    vision_cfg: dict = field(default_factory=dict)
    #: Shared embedding width; None = the open_clip architecture's ``embed_dim``.
    embed_dim: int | None = None
    init_logit_scale: float = math.log(1 / 0.07)
    #: Set (e.g. -10) to give the model a logit bias for the sigmoid loss.
    init_logit_bias: float | None = None
    #: Image mean/std/interpolation overrides; by default the pretrained tag's, else OpenAI's.
    preprocess: dict = field(default_factory=dict)
    #: The preset the config was made from (with any overrides), so a saved model can say what it is.
    preset: str | None = None

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}; choose one of {PROJECTIONS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {POOLINGS}")

    @classmethod
    def from_dict(cls, d: Mapping) -> "MultilingualCLIPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**dict(d))


PRESETS: dict[str, dict] = {
    # Random and small enough for unit tests on a CPU (the real bundled tokenizer, a 2-layer encoder).
    "tiny": dict(
        text_model=BUNDLED_E5, text_pretrained=False,
        text_config_overrides=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=80),
        text_prefix=E5_QUERY_PREFIX, max_length=64, vision_model="ViT-B-32",
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=2.0),
        embed_dim=32,
    ),
    # The offline encoder (works with no hub) + ViT-B/32, image weights from a tag/checkpoint when given.
    "e5-small-vit-b32": dict(text_model=BUNDLED_E5, text_prefix=E5_QUERY_PREFIX,
                             vision_model="ViT-B-32"),
    # The offline encoder + ImageNet-pretrained EfficientNet-Lite0 (the offline extra) at 64 px: the
    # pretrained counterpart of the small ViT that configs/e5-small-synth.yaml trains from scratch.
    "e5-small-effnet-lite0": dict(text_model=BUNDLED_E5, text_prefix=E5_QUERY_PREFIX,
                                  vision_model=BUNDLED_EFFICIENTNET_LITE0, vision_pretrained=IMAGENET_TAG,
                                  vision_cfg=dict(image_size=64), embed_dim=256),
    "xlmr-base-vit-b32": dict(text_model="xlm-roberta-base", vision_model="ViT-B-32",
                              vision_pretrained="laion2b_s34b_b79k"),
    "xlmr-large-vit-h14": dict(text_model="xlm-roberta-large", vision_model="ViT-H-14",
                               vision_pretrained="laion2b_s32b_b79k"),
}


def resolve_vision_cfg(config: MultilingualCLIPConfig) -> tuple[int, dict]:
    """The open_clip vision config dict and embedding width this config asks for."""
    bundled = bundled_vision_name(config.vision_model)
    arch = bundled_vision_arch(bundled) if bundled is not None else open_clip.get_model_config(config.vision_model)
    if arch is None:
        raise ValueError(f"unknown open_clip architecture {config.vision_model!r}; see open_clip.list_models() "
                         f"(or {BUNDLED_EFFICIENTNET_LITE0!r}, the bundled pretrained tower)")
    vision = {**arch["vision_cfg"], **config.vision_cfg}
    unknown = sorted(set(vision) - {f.name for f in dataclasses.fields(CLIPVisionCfg)})
    if unknown:
        raise ValueError(f"unknown vision config keys: {', '.join(unknown)}")
    return config.embed_dim or arch["embed_dim"], vision


def build_image_tower(embed_dim: int, vision_cfg: dict) -> nn.Module:
    """open_clip's image tower for ``vision_cfg`` (a ViT, a ResNet or a timm model), built by its public
    ``CLIP`` class: open_clip has no public builder for the image tower alone. The stub text tower built
    beside it (a few hundred parameters) is dropped with the rest of that CLIP."""
    stub_text = CLIPTextCfg(context_length=2, vocab_size=2, width=8, heads=1, layers=1)
    return CLIP(embed_dim, vision_cfg, stub_text).visual


def _load_vision_weights(visual: nn.Module, arch: str, pretrained: str) -> dict:
    """Load ``pretrained`` (a tag of ``arch`` or a checkpoint file with ``visual.*`` weights) into the
    image tower ``visual``; returns the preprocessing those weights were trained with."""
    bundled = bundled_vision_name(arch)
    if os.path.isfile(pretrained):
        path, pcfg = pretrained, {}
    elif bundled is not None and pretrained == IMAGENET_TAG:
        weights = load_or_explain(lambda: trunk_state_dict(bundled), "bundled image weights", bundled)
        visual.trunk.load_state_dict(weights)  # the projection head to embed_dim starts fresh
        return bundled_vision_preprocess(bundled)
    else:
        pcfg = get_pretrained_cfg(arch, pretrained)
        if not pcfg:
            tags = (IMAGENET_TAG if bundled is not None
                    else ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none")
            raise ModelUnavailableError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {arch} (tags: {tags})")
        path = load_or_explain(lambda: download_pretrained(pcfg), "open_clip image weights", f"{arch}/{pretrained}")
        if not path:
            raise ModelUnavailableError(f"open_clip gave no download location for {arch}/{pretrained}")
    state = load_state_dict(path)
    weights = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if not weights:
        raise ModelUnavailableError(f"checkpoint {path} holds no 'visual.*' weights")
    visual.load_state_dict(weights)
    return {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if pcfg.get(k)}


class MultilingualCLIP(nn.Module):
    """An open_clip image tower + a multilingual text tower in one contrastive embedding space."""

    def __init__(self, config: MultilingualCLIPConfig, text: TextTower, *, load_vision_weights: bool = True):
        super().__init__()
        self.config = config
        embed_dim, vision_cfg = resolve_vision_cfg(config)
        self.embed_dim, self.vision_cfg = embed_dim, vision_cfg
        self.visual = build_image_tower(embed_dim, vision_cfg)
        preprocess = {}
        if load_vision_weights and config.vision_pretrained:
            preprocess = _load_vision_weights(self.visual, config.vision_model, config.vision_pretrained)
        self.preprocess_cfg = PreprocessCfg(**{"size": vision_cfg["image_size"], **preprocess, **config.preprocess})
        self.text = text
        self.text_projection = self._make_projection(config.projection, text.width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(config.init_logit_bias)))
                           if config.init_logit_bias is not None else None)

    @staticmethod
    def _make_projection(kind: str, width: int, embed_dim: int) -> nn.Module:
        if kind == "linear":
            return nn.Linear(width, embed_dim, bias=False)
        if kind == "mlp":  # open_clip's HF-tower MLP head
            hidden = (width + embed_dim) // 2
            return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(),
                                 nn.Linear(hidden, embed_dim, bias=False))
        if width != embed_dim:
            raise ValueError(f"projection {kind!r} needs the text width ({width}) to equal embed_dim ({embed_dim})")
        if kind == "orthogonal":
            # A trainable rotation: it keeps every cosine similarity between the encoder's outputs, so text
            # retrieval (caption X → caption Y) is exactly the encoder's, whatever the images taught it.
            return nn.utils.parametrizations.orthogonal(nn.Linear(width, embed_dim, bias=False))
        return nn.Identity()

    # --- transforms -------------------------------------------------------------------------
    @property
    def preprocess(self):
        """Evaluation image transform (PIL image → normalised tensor)."""
        c = self.preprocess_cfg
        return image_transform(c.size, is_train=False, mean=c.mean, std=c.std,
                               interpolation=c.interpolation, resize_mode=c.resize_mode)

    @property
    def train_preprocess(self):
        """Training image transform (open_clip's random resized crop, no flips: captions say left/right)."""
        c = self.preprocess_cfg
        return image_transform(c.size, is_train=True, mean=c.mean, std=c.std, interpolation=c.interpolation)

    # --- encoding ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> BatchEncoding:
        """Tokenize captions, padded to the longest one in the batch (never to a fixed 77)."""
        return self.text.tokenize(texts)

    def encode_text(self, tokens: Mapping[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        return self.project_text(self.text(tokens), normalize)

    def project_text(self, pooled: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The text encoder's pooled output in the shared space."""
        features = self.text_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.visual(pixels)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, pixels: torch.Tensor | None = None, tokens: Mapping[str, torch.Tensor] | None = None,
                return_text_pooled: bool = False) -> dict:
        """Like open_clip's ``output_dict=True``: normalised features and the exponentiated logit scale; with
        ``return_text_pooled`` also the text encoder's pooled output (``text_pooled``, before the projection)."""
        pooled = self.text(tokens) if tokens is not None else None
        out = {
            "image_features": self.encode_image(pixels) if pixels is not None else None,
            "text_features": self.project_text(pooled) if pooled is not None else None,
            "logit_scale": self.logit_scale.exp(),
        }
        if return_text_pooled:
            out["text_pooled"] = pooled
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    # --- locking ----------------------------------------------------------------------------
    def lock_image_tower(self, unlocked_groups: int = 0) -> None:
        """LiT: freeze the image tower except its top ``unlocked_groups`` layer groups (open_clip's groups)."""
        self.visual.lock(unlocked_groups=unlocked_groups)
        self.train(self.training)  # puts the newly locked batch norms in eval mode

    def train(self, mode: bool = True) -> "MultilingualCLIP":
        """``nn.Module.train``, except that a locked batch norm stays in eval mode: it keeps normalising
        with its pretrained statistics, so a locked tower computes the same features in training as in
        evaluation and its running statistics do not drift."""
        super().train(mode)
        for module in self.visual.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
        return self

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_embeddings: bool = True) -> None:
        """Freeze the text encoder except its top ``unlocked_layers`` blocks; the projection stays trainable."""
        self.text.lock(unlocked_layers, freeze_embeddings)

    def freeze_word_embeddings(self) -> None:
        self.text.freeze_word_embeddings()

    def parameter_summary(self) -> dict[str, dict[str, int]]:
        """Trainable and frozen parameter counts per part (image, text, projection, logit)."""
        parts = {"image": self.visual, "text": self.text, "text_projection": self.text_projection}
        summary = {name: _count(module.parameters()) for name, module in parts.items()}
        summary["logit"] = _count(p for p in (self.logit_scale, self.logit_bias) if p is not None)
        summary["total"] = _count(self.parameters())
        return summary

    def describe_parameters(self) -> str:
        rows = [f"{name:>16}: {c['trainable']:>12,} trainable {c['frozen']:>12,} frozen"
                for name, c in self.parameter_summary().items()]
        return "\n".join(rows)

    # --- persistence ------------------------------------------------------------------------
    def to_config_dict(self) -> dict:
        """The saved form of the config: the resolved vision config and the text encoder's own config."""
        config = dataclasses.asdict(self.config)
        config.update(embed_dim=self.embed_dim, vision_cfg=self.vision_cfg, vision_pretrained=None,
                      preprocess=dataclasses.asdict(self.preprocess_cfg),
                      text_model="saved", text_pretrained=False, text_config_overrides={})
        return {"model_type": "mclip_hbt", "format_version": 1, "architecture": config,
                "text_config": self.text.transformer.config.to_dict(),
                "created_from": {"text_model": self.config.text_model,
                                 "vision_model": self.config.vision_model,
                                 "vision_pretrained": self.config.vision_pretrained}}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a self-contained model directory, atomically (a temporary sibling renamed into place)."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.to_config_dict(), indent=2) + "\n")
            (tmp / PREPROCESS_NAME).write_text(json.dumps(dataclasses.asdict(self.preprocess_cfg), indent=2) + "\n")
            save_tokenizer(self.text.tokenizer, tmp / TOKENIZER_DIR)
            save_model(self, str(tmp / WEIGHTS_NAME), force_contiguous=True)  # channels-last weights
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> "MultilingualCLIP":
        """Load a directory written by :meth:`save_pretrained` (no network, no original sources needed).

        A damaged file in it (malformed ``config.json``, truncated or corrupt weights, a broken
        tokenizer) raises :class:`ModelUnavailableError` naming that file.
        """
        directory = Path(directory)
        config_file = directory / CONFIG_NAME
        if not config_file.is_file():
            raise ModelUnavailableError(f"{directory} is not a saved mclip_hbt model (no {CONFIG_NAME})")
        saved = _read_saved_file(config_file, lambda: parse_json(config_file.read_bytes()))
        model_type = saved.get("model_type") if isinstance(saved, dict) else None
        if model_type != "mclip_hbt":
            raise ModelUnavailableError(f"{config_file} is not an mclip_hbt config (model_type={model_type!r})")
        config = _read_saved_file(config_file, lambda: MultilingualCLIPConfig.from_dict(saved["architecture"]))
        tokenizer = _read_saved_file(directory / TOKENIZER_DIR,
                                     lambda: AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR))
        model = _read_saved_file(config_file, lambda: cls(
            config, TextTower(TextTower.transformer_from_config(saved["text_config"]), tokenizer,
                              pooling=config.pooling, prefix=config.text_prefix, max_length=config.max_length),
            load_vision_weights=False))
        weights = directory / WEIGHTS_NAME
        _read_saved_file(weights, lambda: load_model(model, str(weights), device=str(map_location)))
        return model


def _read_saved_file(path: Path, read: Callable[[], T]) -> T:
    """Run ``read``, which reads ``path`` of a saved model folder; any failure is a
    :class:`ModelUnavailableError` saying that file is damaged and how to get a good one."""
    try:
        return read()
    except ModelUnavailableError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, SafetensorError) as err:
        reason = next(iter(str(err).strip().splitlines()), "")  # load_model lists missing keys over many lines
        raise ModelUnavailableError(f"{path} is damaged or incomplete ({type(err).__name__}: {reason}); "
                                    "re-export the model with save_pretrained or re-train it") from err


def _count(params) -> dict[str, int]:
    trainable = frozen = 0
    for p in params:
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return {"trainable": trainable, "frozen": frozen}


def create_model(name_or_config: str | Mapping | MultilingualCLIPConfig, **overrides) -> MultilingualCLIP:
    """Build a model from a preset name, a saved directory, a config dict or a config object.

    ``overrides`` replace config fields (e.g. ``vision_pretrained="/path/ckpt.pt"``).
    """
    if isinstance(name_or_config, MultilingualCLIPConfig):
        config = dataclasses.replace(name_or_config, **overrides)
    elif isinstance(name_or_config, Mapping):
        config = MultilingualCLIPConfig.from_dict({**name_or_config, **overrides})
    elif name_or_config in PRESETS:
        config = MultilingualCLIPConfig.from_dict({**PRESETS[name_or_config], "preset": name_or_config, **overrides})
    elif (Path(name_or_config) / CONFIG_NAME).is_file():
        if overrides:
            raise ValueError("overrides cannot be applied to a saved model directory")
        return MultilingualCLIP.from_pretrained(name_or_config)
    else:
        raise ModelUnavailableError(f"{name_or_config!r} is neither a preset ({', '.join(PRESETS)}) "
                                    f"nor a saved model directory")
    text = TextTower.from_name(config.text_model, pretrained=config.text_pretrained,
                               config_overrides=config.text_config_overrides, pooling=config.pooling,
                               prefix=config.text_prefix, max_length=config.max_length)
    return MultilingualCLIP(config, text)
