"""Load anything the evaluators can score, behind one small interface.

``load_retrieval_model(spec, device)`` accepts:

- a saved mclip_hbt directory (``MultilingualCLIP.from_pretrained``);
- a preset name of ``mclip_hbt.model.clip.create_model`` (``tiny``, ``e5-small-vit-b32``, ...);
- ``open_clip:ARCH:TAG`` — any open_clip model; ``TAG`` is a pretrained tag or a local checkpoint
  path; ``open_clip:ARCH`` alone is a randomly initialised model;
- ``bundled:multilingual-e5-small`` or ``hf:NAME_OR_PATH`` — a bare text encoder (mean pooling,
  "query: " prefix as E5 expects, no projection): text-only settings only.

Texts are encoded in batches of similar token length (``mclip_hbt.model.encoding``); images through a
``DataLoader`` with worker processes. Embeddings come back L2-normalised, float32, on the CPU, in
input order. On CUDA the forward passes run under bfloat16 autocast, as CLIP_benchmark runs under AMP.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mclip_hbt.data.images import ImageError, open_image
from mclip_hbt.fileio import parse_json
from mclip_hbt.model.clip import CONFIG_NAME, PRESETS, MultilingualCLIP, create_model
from mclip_hbt.model.encoding import encode_in_length_order
from mclip_hbt.model.text_tower import TextTower
from mclip_hbt.offline.bundled_e5 import BUNDLED_PREFIX, E5_QUERY_PREFIX
from mclip_hbt.offline.hub import ModelUnavailableError, load_or_explain

from .text_cache import TextFeatureCache, encoder_fingerprint

OPEN_CLIP_PREFIX = "open_clip:"
HF_PREFIX = "hf:"
SPEC_FORMS = (f"a saved model directory, a preset ({', '.join(PRESETS)}), open_clip:ARCH[:TAG_OR_CHECKPOINT], "
              "bundled:multilingual-e5-small or hf:NAME_OR_PATH")


def blank_pixels(preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """What stands in for a picture that cannot be read: a black one, preprocessed like any other."""
    return preprocess(Image.new("RGB", (224, 224)))


class ImageFiles(Dataset):
    """Decoded, preprocessed images, opened as training opens them (``mclip_hbt.data.images.open_image``); a
    file that cannot be used (undecodable, truncated, a decompression bomb) yields a black image and
    ``ok=False``."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            return self.preprocess(open_image(self.paths[i])), True
        except ImageError:
            return blank_pixels(self.preprocess), False


@dataclass
class RetrievalModel:
    """A model reduced to what retrieval needs: normalised text and image embeddings."""

    name: str
    pretrained: str
    module: nn.Module
    tokenize: Callable[[list[str]], Mapping[str, torch.Tensor]]
    text_features: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
    image_features: Callable[[torch.Tensor], torch.Tensor] | None = None
    preprocess: Callable[[Image.Image], torch.Tensor] | None = None
    device: torch.device = torch.device("cpu")
    #: Folder the weights came from (a saved model directory), else None.
    source_dir: Path | None = None
    #: ``text_features`` split as ``text_head(text_encoder(tokens))`` where the model has a Hugging Face
    #: text encoder (its pooled outputs can then come from a :class:`~mclip_hbt.retrieval.text_cache.TextFeatureCache`).
    text_encoder: TextTower | None = None
    text_head: Callable[[torch.Tensor], torch.Tensor] | None = None
    _fingerprint: str | None = None

    @property
    def supports_images(self) -> bool:
        return self.image_features is not None

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True,
                     cache: TextFeatureCache | None = None) -> torch.Tensor:
        """Normalised embeddings of ``texts``; with ``cache`` (and a Hugging Face text encoder) the encoder's
        pooled outputs are read from it or added to it, and only the projection head runs here."""
        def encode_with(features_of: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]):
            def encode(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with self._autocast():
                    return features_of(batch).float().cpu()
            return lambda todo: encode_in_length_order(todo, self.tokenize, encode, batch_size, progress=progress)

        if cache is None or self.text_encoder is None:
            return F.normalize(encode_with(self.text_features)(texts), dim=-1)
        if self._fingerprint is None:
            tower = self.text_encoder
            self._fingerprint = encoder_fingerprint(tower, tower.tokenizer, {
                "prefix": tower.prefix, "pooling": tower.pooling, "max_length": tower.max_length})
        pooled = cache.features(self._fingerprint, texts, encode_with(self.text_encoder))
        with torch.inference_mode(), self._autocast():
            features = self.text_head(pooled.to(self.device))
        return F.normalize(features.float(), dim=-1).cpu()

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised float32 embeddings (on the CPU) of a batch of preprocessed images."""
        with torch.inference_mode(), self._autocast():
            features = self.image_features(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1).cpu()

    def fingerprint(self) -> str:
        """A digest of everything that decides the embeddings: the weights, the tokenizer, what the model is."""
        tokenizer = self.text_encoder.tokenizer if self.text_encoder is not None else None
        return encoder_fingerprint(self.module, tokenizer, {"name": self.name, "pretrained": self.pretrained})

    def _check_images(self) -> None:
        if not self.supports_images:
            raise ValueError(f"{self.name} is a text encoder only; it cannot encode images")

    def embedding_width(self) -> int:
        """The width of the image embeddings (a blank picture's, so it holds whatever the model's head is)."""
        self._check_images()
        return int(self.embed_pixels(blank_pixels(self.preprocess).unsqueeze(0)).shape[1])

    def encode_images(self, paths: Sequence[Path], batch_size: int = 64, num_workers: int = 2,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the images at ``paths`` and a boolean mask of those that could not be decoded
        (their rows embed a black image; the metrics score them as misses)."""
        self._check_images()
        loader = DataLoader(ImageFiles(paths, self.preprocess), batch_size=batch_size, num_workers=num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        out, readable = [], []
        with torch.inference_mode(), tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar:
            for pixels, ok in loader:
                out.append(self.embed_pixels(pixels))
                readable.append(ok)
                bar.update(len(pixels))
        unreadable = ~torch.cat(readable)
        if unreadable.any():
            failed = unreadable.nonzero().flatten().tolist()
            print(f"warning: {len(failed)} of {len(paths)} image(s) could not be decoded and are scored as misses, "
                  f"e.g. {', '.join(str(paths[i]) for i in failed[:5])}", file=sys.stderr)
        return torch.cat(out), unreadable


def _from_mclip(model: MultilingualCLIP, name: str, pretrained: str, device: torch.device,
                source_dir: Path | None = None) -> RetrievalModel:
    model = model.to(device).eval()
    return RetrievalModel(name=name, pretrained=pretrained, module=model, tokenize=model.tokenize,
                          text_features=lambda tokens: model.encode_text(tokens, normalize=False),
                          image_features=lambda pixels: model.encode_image(pixels, normalize=False),
                          preprocess=model.preprocess, device=device, source_dir=source_dir,
                          text_encoder=model.text, text_head=model.text_projection)


def _from_open_clip(spec: str, device: torch.device) -> RetrievalModel:
    arch, _, tag = spec[len(OPEN_CLIP_PREFIX):].partition(":")
    if arch not in open_clip.list_models():
        raise ModelUnavailableError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    model, _, preprocess = load_or_explain(
        lambda: open_clip.create_model_and_transforms(arch, pretrained=tag or None, device=device),
        "open_clip model", spec)
    tokenizer = open_clip.get_tokenizer(arch)
    model.eval()

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        ids = tokenizer(texts)
        # open_clip text towers take fixed-length input (pooling by position, positional tables),
        # so report every position as used: batches are never trimmed.
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return RetrievalModel(name=arch, pretrained=tag or "random-init", module=model, tokenize=tokenize,
                          text_features=lambda tokens: model.encode_text(tokens["input_ids"]),
                          image_features=model.encode_image, preprocess=preprocess, device=device)


def _from_text_encoder(name: str, device: torch.device) -> RetrievalModel:
    tower = TextTower.from_name(name, pooling="mean", prefix=E5_QUERY_PREFIX).to(device).eval()
    return RetrievalModel(name=name, pretrained="text-encoder (mean pooling, 'query: ' prefix)", module=tower,
                          tokenize=tower.tokenize, text_features=tower, device=device,
                          text_encoder=tower, text_head=nn.Identity())


def saved_model_name(folder: Path) -> str:
    """What a saved run is, for result records: ``mclip_hbt:PRESET``, or ``mclip_hbt:TEXT+VISION`` (the models it
    was created from) for a model built from a config of its own."""
    config = parse_json((folder / CONFIG_NAME).read_bytes())
    architecture = config.get("architecture") if isinstance(config, dict) else None
    preset = architecture.get("preset") if isinstance(architecture, dict) else None
    if isinstance(preset, str) and preset:
        return f"mclip_hbt:{preset}"
    origin = config.get("created_from") if isinstance(config, dict) else None
    origin = origin if isinstance(origin, dict) else {}  # it only names the run: an odd one is no reason to stop
    return f"mclip_hbt:{origin.get('text_model', 'unknown')}+{origin.get('vision_model', 'unknown')}"


def run_name(folder: Path) -> str:
    """Which run a saved model is: its folder's name, or the run folder's for the trainer's ``RUN/model``."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "model" else folder.name


def load_retrieval_model(spec: str, device: str | torch.device = "cpu") -> RetrievalModel:
    """Load ``spec`` (see the module docstring); raise :class:`ModelUnavailableError` with a plain
    message when it cannot be loaded."""
    device = torch.device(device)
    try:
        if spec.startswith(OPEN_CLIP_PREFIX):
            return _from_open_clip(spec, device)
        if spec.startswith(HF_PREFIX):
            return _from_text_encoder(spec[len(HF_PREFIX):], device)
        if spec.startswith(BUNDLED_PREFIX):
            return _from_text_encoder(spec, device)
        if (Path(spec) / CONFIG_NAME).is_file():
            return _from_mclip(MultilingualCLIP.from_pretrained(spec), name=saved_model_name(Path(spec)),
                               pretrained=run_name(Path(spec)), device=device, source_dir=Path(spec))
        if spec in PRESETS:
            model = create_model(spec)
            return _from_mclip(model, name=spec, pretrained=model.config.vision_pretrained or "preset", device=device)
    except ModelUnavailableError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as err:
        raise ModelUnavailableError(f"cannot load model {spec!r}: {type(err).__name__}: {err}") from err
    raise ModelUnavailableError(f"model {spec!r} is not recognised; give {SPEC_FORMS}")
