"""Evaluate one model on one split: encode every distinct caption and every image once, then score
every setting from those embeddings (``eval.retrieval_settings``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mclip_hbt.retrieval.models import RetrievalModel
from mclip_hbt.retrieval.text_cache import TextFeatureCache

from . import retrieval_settings
from .benchmark_data import RetrievalSplit
from .metrics import check_finite
from .results import clip_benchmark_language


@dataclass
class SplitResult:
    #: One CLIP_benchmark-style record per language (image–text settings; empty when text-only).
    records: list[dict]
    #: The split's summary (shape documented in ``eval.results``).
    summary: dict
    #: Image files that could not be decoded (scored as misses).
    unreadable_images: list[Path] = field(default_factory=list)


def _monolingual_captions(split: RetrievalSplit, lang: str, translate_test: bool) -> list[list[str]]:
    """Each image's captions scored for ``lang``; under translate-test the aligned English caption
    stands in for them (a perfect-translation upper bound for an English-only model)."""
    if translate_test:
        return [[caption] for caption in split.aligned["en"]]
    return split.captions[lang]


def evaluate_split(split: RetrievalSplit, model: RetrievalModel, *, langs: list[str], image_paths: list[Path] | None,
                   translate_test: bool = False, batch_size: int = 256, image_batch_size: int = 64,
                   num_workers: int = 2, device: str | torch.device = "cpu", progress: bool = True,
                   text_cache: TextFeatureCache | None = None, pool_langs: list[str] | None = None) -> SplitResult:
    """Score ``langs`` of ``split``. ``image_paths=None`` runs only the caption-to-caption settings;
    ``translate_test`` runs only the image–text settings; ``text_cache`` supplies and keeps the text
    encoder's outputs; ``pool_langs`` (default: ``langs``) are the languages of the multilingual pools
    and the targets of the cross-lingual matrix, whose cost grows with the square of their number. Raises
    :class:`~eval.metrics.NonFiniteEmbeddingsError` when the model's embeddings hold NaN or infinite values."""
    mono = {lang: _monolingual_captions(split, lang, translate_test) for lang in langs} if image_paths else {}
    aligned = {} if translate_test else {lang: split.aligned[lang] for lang in langs}
    pool_langs = langs if pool_langs is None else pool_langs

    texts = list(dict.fromkeys([c for caps in mono.values() for image in caps for c in image]
                               + [c for caps in aligned.values() for c in caps]))
    row = {text: i for i, text in enumerate(texts)}
    emb = model.encode_texts(texts, batch_size=batch_size, progress=progress, cache=text_cache)
    check_finite(emb, "text")

    summary: dict = {"monolingual": {}, "crosslingual": None, "multilingual_image": None, "multilingual_text": None}
    records, unreadable_paths = [], []
    aligned_emb = {lang: emb[[row[c] for c in caps]] for lang, caps in aligned.items()}
    if image_paths:
        image_emb, unreadable = model.encode_images(image_paths, batch_size=image_batch_size,
                                                    num_workers=num_workers, progress=progress)
        check_finite(image_emb, "image")
        unreadable_paths = [image_paths[i] for i in unreadable.nonzero().flatten().tolist()]
        for lang, caps in mono.items():
            flat = [(i, c) for i, image in enumerate(caps) for c in image]
            text_emb = emb[[row[c] for _, c in flat]]
            text_image = torch.tensor([i for i, _ in flat])
            recalls, summary["monolingual"][lang] = retrieval_settings.monolingual(
                text_emb, text_image, image_emb, device, unreadable)
            records.append({"dataset": split.dataset, "model": model.name, "pretrained": model.pretrained,
                            "task": "zeroshot_retrieval", "language": clip_benchmark_language(split.dataset, lang),
                            "metrics": recalls})
    pool_emb = {lang: e for lang, e in aligned_emb.items() if lang in pool_langs}
    if image_paths and pool_emb:
        summary["multilingual_image"] = retrieval_settings.multilingual_image(image_emb, pool_emb, device, unreadable)
    if len(pool_emb) >= 2:
        summary["crosslingual"] = retrieval_settings.crosslingual(aligned_emb, device, targets=pool_emb.keys())
        summary["multilingual_text"] = retrieval_settings.multilingual_text(pool_emb, device)
    return SplitResult(records, summary, unreadable_paths)
