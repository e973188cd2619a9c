"""Pooled text-encoder outputs kept on disk, shared by every model whose text encoder is the same.

A model's text embedding is ``projection(encoder(caption))``. Models trained with a frozen text
encoder (LiT-style runs, every run of an α sweep, and the untrained encoder itself) share
``encoder``, and on a CPU encoding captions is most of an evaluation's time, the projection a small
part of it (docs/results.md). This cache stores the pooled
encoder output of each caption under a fingerprint of everything that determines it — the
encoder's weights (every byte of its state dict), its tokenizer, the caption prefix, pooling and
truncation — so a model whose encoder was fine-tuned, or one with another tokenizer, never reads
another's features.

One safetensors file per fingerprint holds the features and, in its metadata, the captions they
belong to; reading it runs no code. New captions are merged in under a file lock, and a file that
cannot be read or does not match its captions is rebuilt, not trusted.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from mclip_hbt.fileio import exclusive_lock, write_bytes_atomic

FEATURES_KEY = "features"
TEXTS_KEY = "texts"


def encoder_fingerprint(encoder: nn.Module, tokenizer, settings: dict) -> str:
    """A hex digest of ``encoder``'s weights, ``tokenizer`` and the text ``settings`` (prefix, pooling…)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if tokenizer is None:  # a model whose tokenizer has no state of its own (open_clip's, a test's)
        identity = ""
    elif backend is not None:
        identity = _fast_tokenizer_identity(backend)
    else:  # a slow tokenizer: its class, source and vocabulary size
        identity = f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}"
    digest.update(identity.encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fast_tokenizer_identity(backend) -> str:
    """A fast tokenizer serialised completely (vocabulary, normaliser, pre-tokeniser) but for the padding and
    truncation state its last call left behind, which is not part of what it computes. Both are switched off
    for the serialisation and restored: parsing the JSON to drop them costs seconds on a 250k vocabulary."""
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding(), backend.no_truncation()
    try:
        return backend.to_str()
    finally:
        if padding is not None:
            backend.enable_padding(**padding)
        if truncation is not None:
            backend.enable_truncation(**truncation)


class TextFeatureCache:
    """Pooled encoder features per caption, one file per encoder fingerprint under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _file(self, fingerprint: str) -> Path:
        return self.root / f"{fingerprint}.safetensors"

    def _read(self, fingerprint: str) -> tuple[list[str], torch.Tensor | None]:
        path = self._file(fingerprint)
        if not path.is_file():
            return [], None
        try:
            with safe_open(path, framework="pt") as handle:
                features = handle.get_tensor(FEATURES_KEY)
                texts = json.loads((handle.metadata() or {})[TEXTS_KEY])
            if (not isinstance(texts, list) or features.dim() != 2 or features.shape[0] != len(texts)
                    or not torch.isfinite(features).all()):
                raise ValueError("its captions and features do not match")
        except (OSError, SafetensorError, KeyError, ValueError, TypeError) as err:
            print(f"warning: text feature cache {path} is unusable ({type(err).__name__}: {err}); rebuilding it",
                  file=sys.stderr)
            return [], None
        return texts, features

    def features(self, fingerprint: str, texts: Sequence[str],
                 compute: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """The features of ``texts`` in their order; ``compute`` encodes those not cached yet, and they are
        stored unless they hold non-finite values (which the caller's check then reports)."""
        with exclusive_lock(self.root / f"{fingerprint}.lock"):
            cached_texts, cached = self._read(fingerprint)
            row = {text: i for i, text in enumerate(cached_texts)}
            missing = list(dict.fromkeys(t for t in texts if t not in row))
            if missing:
                fresh = compute(missing).float().cpu()
                row.update({text: len(cached_texts) + i for i, text in enumerate(missing)})
                cached = fresh if cached is None else torch.cat([cached, fresh])
                if torch.isfinite(fresh).all():
                    write_bytes_atomic(self._file(fingerprint), save(
                        {FEATURES_KEY: cached.contiguous()},
                        metadata={TEXTS_KEY: json.dumps(cached_texts + missing, ensure_ascii=False)}))
            return cached[[row[t] for t in texts]]
