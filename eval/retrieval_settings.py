"""The retrieval settings of docs/design.md §4, computed from embeddings (no model, no files).

- monolingual: one language's captions vs the images, both directions;
- cross-lingual: caption in X → its counterpart among the captions in Y, every ordered pair X≠Y;
- multilingual image: image → pool of the captions in all languages (L relevant per image);
- multilingual text: caption → pool of all other captions (the query removed; relevant = the same
  image's captions in the other L−1 languages).

Each function returns plain floats in the shape of the result JSON's ``summary`` (see
``eval.results``).
"""
from __future__ import annotations

from collections.abc import Collection

import torch

from .metrics import (
    average_precision,
    mean_average_precision,
    mean_recall,
    rank_distance,
    rank_distances,
    recall_at_k,
    relevant_ranks,
    retrieval_recalls,
)

KS = (1, 5, 10)


def monolingual(text_emb: torch.Tensor, text_image_index: torch.Tensor, image_emb: torch.Tensor,
                device: str | torch.device = "cpu", unreadable_images: torch.Tensor | None = None
                ) -> tuple[dict[str, float], dict[str, float]]:
    """CLIP_benchmark's metric dict and our summary entry for one language's captions vs the images
    (``unreadable_images``: a boolean mask of images that could not be read, never a hit)."""
    recalls = retrieval_recalls(text_emb, image_emb, text_image_index, unreadable_images=unreadable_images, ks=KS,
                                device=device)
    summary = {f"t2i_r@{k}": recalls[f"image_retrieval_recall@{k}"] for k in KS}
    summary.update({f"i2t_r@{k}": recalls[f"text_retrieval_recall@{k}"] for k in KS})
    summary["mean_recall"] = mean_recall(recalls, KS)
    return recalls, summary


def crosslingual(aligned: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                 targets: Collection[str] | None = None) -> dict[str, dict]:
    """R@1 and mAP (= mean reciprocal rank: one counterpart per caption) for every ordered pair X≠Y;
    ``targets``: only those Y (every language is still a query X)."""
    r1: dict[str, dict[str, float]] = {}
    m_ap: dict[str, dict[str, float]] = {}
    for x, qx in aligned.items():
        ids = torch.arange(len(qx))
        r1[x], m_ap[x] = {}, {}
        for y, iy in aligned.items():
            if x == y or (targets is not None and y not in targets):
                continue
            ranks = relevant_ranks(qx, iy, ids, ids, device=device)
            r1[x][y] = recall_at_k(ranks, 1)
            m_ap[x][y] = mean_average_precision(ranks)
    return {"r@1": r1, "map": m_ap}


def _pool(aligned: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All captions stacked language after language, with each caption's image and language index."""
    emb = torch.cat(list(aligned.values()))
    n = len(next(iter(aligned.values())))
    image = torch.arange(n).repeat(len(aligned))
    language = torch.arange(len(aligned)).repeat_interleave(n)
    return emb, image, language


def multilingual_image(image_emb: torch.Tensor, aligned: dict[str, torch.Tensor],
                       device: str | torch.device = "cpu", unreadable_images: torch.Tensor | None = None
                       ) -> dict[str, float]:
    """Image → captions of every language; one relevant caption per language."""
    pool, image, _ = _pool(aligned)
    ranks = relevant_ranks(image_emb, pool, torch.arange(len(image_emb)), image, missing_queries=unreadable_images,
                           device=device)
    out = {"map": mean_average_precision(ranks)}
    out.update({f"r@{k}": recall_at_k(ranks, k) for k in KS})
    out["rank_distance"] = rank_distance(ranks)
    return out


def multilingual_text(aligned: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> dict:
    """Caption → all other captions; relevant = the same image's captions in the other languages."""
    if len(aligned) < 2:
        raise ValueError("the multilingual caption pool needs at least two languages")
    pool, image, language = _pool(aligned)
    ranks = relevant_ranks(pool, pool, image, image, query_item_index=torch.arange(len(pool)), device=device)
    ap, rd = average_precision(ranks), rank_distances(ranks)
    per_language = {lang: {"map": ap[language == i].mean().item(), "rank_distance": rd[language == i].mean().item()}
                    for i, lang in enumerate(aligned)}
    return {"map": ap.mean().item(), "rank_distance": rd.mean().item(), "per_language": per_language}
