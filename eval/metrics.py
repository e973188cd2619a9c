"""Retrieval metrics, all derived from one quantity: the rank of every relevant item of every query.

Relevance is given by group ids: item ``j`` is relevant to query ``i`` iff
``item_groups[j] == query_groups[i]`` (text→image: a caption's group is its image; image→text:
an image's group is itself, each caption's group its image; caption→caption: both are the image).
That covers every XTD10/M3C setting without a dense relevance matrix.

Ranks start at 1. Ties are resolved against the query, so a model can never gain from scoring
items alike (a collapsed model, with every embedding equal, ranks every relevant item last and scores
R@k = 0): recall and mAP place a relevant item after every irrelevant item it ties with; rank
distance places the best relevant item before the irrelevant items it ties with and the worst one
after them (the widest spread). Relevant items tied only with each other share a rank. With
real-valued embeddings ties are rare, and recall@k equals CLIP_benchmark's
(``metrics/zeroshot_retrieval.py``): a query scores a hit when at least one relevant item is in its
top k. On ties the two differ: CLIP_benchmark's ``torch.topk`` keeps the tied items of lowest
index (on the CPU; the order is unspecified), which scores a collapsed model k/N.

Embeddings holding NaN or infinite values are refused (:class:`NonFiniteEmbeddingsError`): every
comparison with NaN is false, so they would otherwise rank first. Queries or items whose input
could not be read (an undecodable image) are passed as ``missing_*`` masks: they score below every
real item, so they are never a hit.

Similarities are computed per chunk of queries on the given device, so the full query × item
matrix (11,000 × 11,000 for XTD10's caption pool) never exists at once.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

#: Padding value in :attr:`RelevantRanks.ranks` (beyond any real rank).
RANK_PAD = torch.iinfo(torch.int64).max

#: Elements of the chunk's (queries × relevant × items) comparison tensor held at once.
_COMPARE_BUDGET = 1 << 25
#: Above this many relevant items per query, ranks are counted in sorted rows (see relevant_ranks).
_SORT_ABOVE_WIDTH = 16


class NonFiniteEmbeddingsError(ValueError):
    """Embeddings with NaN or infinite values: the model that made them cannot be scored."""


def check_finite(embeddings: torch.Tensor, side: str) -> None:
    """Refuse ``embeddings`` [N, D] holding NaN or infinite values; ``side`` names them ("text", "image")."""
    bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
    if bad:
        raise NonFiniteEmbeddingsError(
            f"{bad} of {len(embeddings)} {side} embeddings hold NaN or infinite values; the model (its weights, "
            "or its arithmetic in this precision) is broken and cannot be scored: re-export or re-train it")


@dataclass(frozen=True)
class RelevantRanks:
    """Ranks of each query's relevant items: ``ranks[i, :count[i]]`` ascending, the rest :data:`RANK_PAD`.

    ``ranks`` place each relevant item after the irrelevant items it ties with; ``best_before_ties``
    is the best one's rank placed before them (used by rank distance only).
    """

    ranks: torch.Tensor  # [Q, R] int64
    count: torch.Tensor  # [Q] int64, >= 1
    best_before_ties: torch.Tensor  # [Q] int64

    def __len__(self) -> int:
        return self.ranks.shape[0]

    def subset(self, index: torch.Tensor) -> "RelevantRanks":
        """The ranks of the queries selected by ``index`` (a boolean mask or indices)."""
        return RelevantRanks(self.ranks[index], self.count[index], self.best_before_ties[index])

    @property
    def best(self) -> torch.Tensor:
        return self.ranks[:, 0]

    @property
    def worst(self) -> torch.Tensor:
        return self.ranks.gather(1, (self.count - 1).unsqueeze(1)).squeeze(1)


def _group_members(item_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct group ids and, per group, its item indices (``[G, Rmax]``, -1 padded)."""
    groups, inverse = torch.unique(item_groups, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    sizes = torch.bincount(inverse, minlength=len(groups))
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(len(order)) - starts[inverse[order]]
    members = torch.full((len(groups), int(sizes.max())), -1, dtype=torch.long)
    members[inverse[order], slot] = order
    return groups, members


def relevant_ranks(queries: torch.Tensor, items: torch.Tensor, query_groups: torch.Tensor,
                   item_groups: torch.Tensor, *, query_item_index: torch.Tensor | None = None,
                   missing_queries: torch.Tensor | None = None, missing_items: torch.Tensor | None = None,
                   chunk_size: int = 1024, device: str | torch.device = "cpu") -> RelevantRanks:
    """Rank every relevant item of every query among all items by dot-product similarity.

    ``queries`` [Q, D] and ``items`` [N, D] are embeddings (normalised: dot = cosine), all finite.
    ``query_item_index`` [Q] (optional): the position of each query in the item pool, for pools
    that contain the queries themselves (caption → all other captions); that item is removed from
    the query's pool and from its relevant set.
    ``missing_queries`` [Q] / ``missing_items`` [N] (optional, boolean): inputs that could not be
    read. A missing item scores below every other item; a missing query scores every item alike,
    so its relevant items rank last.
    """
    check_finite(queries, "query")
    check_finite(items, "item")
    query_groups = torch.as_tensor(query_groups, dtype=torch.long).cpu()
    item_groups = torch.as_tensor(item_groups, dtype=torch.long).cpu()
    if len(queries) != len(query_groups) or len(items) != len(item_groups):
        raise ValueError("one group id per query and per item is needed")
    groups, members = _group_members(item_groups)
    slot = torch.searchsorted(groups, query_groups).clamp(max=len(groups) - 1)
    if not torch.equal(groups[slot], query_groups):
        raise ValueError("some queries have no relevant item in the pool")
    relevant = members[slot]  # [Q, Rmax], -1 padded
    if query_item_index is not None:
        query_item_index = torch.as_tensor(query_item_index, dtype=torch.long).cpu()
        relevant = torch.where(relevant == query_item_index.unsqueeze(1), -1, relevant)
    count = (relevant >= 0).sum(1)
    if bool((count == 0).any()):
        raise ValueError("some queries have no relevant item left once the query itself is removed")
    width = int(count.max())
    # Move each row's valid indices to the front so rows are [valid..., -1...] of width `width`.
    relevant = relevant.gather(1, torch.argsort((relevant < 0).to(torch.int8), dim=1, stable=True))[:, :width]

    device = torch.device(device)
    if missing_items is not None:
        missing_items = torch.as_tensor(missing_items, dtype=torch.bool).to(device)
    if missing_queries is not None:
        missing_queries = torch.as_tensor(missing_queries, dtype=torch.bool).to(device)
    items_dev = items.to(device, torch.float32)
    # With many relevant items per query (a multilingual pool), counting the pool items above each one by
    # comparison costs width x N per query; a sorted row answers every count by binary search instead.
    by_sorting = width > _SORT_ABOVE_WIDTH
    chunk = max(1, min(chunk_size, _COMPARE_BUDGET // max(1, (1 if by_sorting else width) * len(items))))
    out, best_before_ties = [], []
    for start in range(0, len(queries), chunk):
        end = min(start + chunk, len(queries))
        sims = queries[start:end].to(device, torch.float32) @ items_dev.T
        if missing_items is not None:
            sims[:, missing_items] = float("-inf")
        if missing_queries is not None:
            sims[missing_queries[start:end]] = float("-inf")
        rel = relevant[start:end].to(device)
        valid = rel >= 0
        rel_scores = sims.gather(1, rel.clamp(min=0)).unsqueeze(2)  # same matmul row as the pool: no rounding mismatch
        if by_sorting:
            ordered = sims.sort(dim=1).values
            scores = rel_scores[:, :, 0].contiguous()
            above = sims.shape[1] - torch.searchsorted(ordered, scores, right=True)
            at_or_above = sims.shape[1] - torch.searchsorted(ordered, scores, right=False)
        else:
            above = (sims.unsqueeze(1) > rel_scores).sum(2)
            at_or_above = (sims.unsqueeze(1) >= rel_scores).sum(2)
        if query_item_index is not None:  # the query's own item is not in its pool
            own = sims.gather(1, query_item_index[start:end].to(device).unsqueeze(1))
            above -= (own > rel_scores[:, :, 0]).long()
            at_or_above -= (own >= rel_scores[:, :, 0]).long()
        # at_or_above counts the item itself and every relevant item it ties with: they share its rank.
        tied_relevant = ((rel_scores == rel_scores.transpose(1, 2)) & valid.unsqueeze(1)).sum(2)
        ranks = torch.where(valid, at_or_above - tied_relevant + 1, RANK_PAD)
        out.append(torch.sort(ranks, dim=1).values.cpu())
        best_before_ties.append(torch.where(valid, above + 1, RANK_PAD).min(1).values.cpu())
    return RelevantRanks(torch.cat(out), count, torch.cat(best_before_ties))


def hits_at_k(r: RelevantRanks, k: int) -> torch.Tensor:
    """Per query: at least one relevant item in the top ``k`` (CLIP_benchmark's recall@k before averaging)."""
    return r.best <= k


def recall_at_k(r: RelevantRanks, k: int) -> float:
    """Fraction of queries with at least one relevant item in the top ``k``."""
    return hits_at_k(r, k).double().mean().item()


def average_precision(r: RelevantRanks) -> torch.Tensor:
    """Per query: mean over its relevant items of the precision at each one's position.

    The j-th relevant item (by rank) sits at position ``j + max_{i<=j}(rank_i - i)``: its rank
    when relevant items do not tie with each other, and one past the previous one when they do.
    """
    j = torch.arange(1, r.ranks.shape[1] + 1, dtype=torch.int64)
    valid = j.unsqueeze(0) <= r.count.unsqueeze(1)
    ranks = torch.where(valid, r.ranks, 0)  # keep padding out of the running maximum
    position = j + torch.cummax(ranks - j, dim=1).values
    precision = torch.where(valid, j.double() / position.clamp(min=1).double(), 0.0)
    return precision.sum(1) / r.count.double()


def mean_average_precision(r: RelevantRanks) -> float:
    return average_precision(r).mean().item()


def rank_distances(r: RelevantRanks) -> torch.Tensor:
    """Per query: worst rank − best rank among its relevant items (language bias when they are one per
    language), the best placed before the irrelevant items it ties with: ties widen the distance."""
    return torch.where(r.count > 1, r.worst - r.best_before_ties, 0).double()


def rank_distance(r: RelevantRanks) -> float:
    return rank_distances(r).mean().item()


def mean_recall(recalls: Mapping[str, float], ks: tuple[int, ...] = (1, 5, 10)) -> float:
    """M3P's mean recall: the mean of R@k over ``ks`` in both directions (CLIP_benchmark key names)."""
    keys = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in ks]
    return sum(recalls[key] for key in keys) / len(keys)


def retrieval_recalls(text_emb: torch.Tensor, image_emb: torch.Tensor, text_image_index: torch.Tensor, *,
                      unreadable_images: torch.Tensor | None = None, ks: tuple[int, ...] = (1, 5, 10),
                      device: str | torch.device = "cpu", chunk_size: int = 1024) -> dict[str, float]:
    """Text→image and image→text recall@k for captions of images (several captions per image allowed).

    Keys as in CLIP_benchmark: ``image_retrieval_recall@k`` (text→image) and
    ``text_retrieval_recall@k`` (image→text: a hit when any of the image's captions is in the top k).
    ``unreadable_images`` [images] (boolean): images that could not be read; never a hit either way.
    """
    check_finite(text_emb, "text")
    check_finite(image_emb, "image")
    text_image_index = torch.as_tensor(text_image_index, dtype=torch.long)
    image_ids = torch.arange(len(image_emb))
    t2i = relevant_ranks(text_emb, image_emb, text_image_index, image_ids, missing_items=unreadable_images,
                         device=device, chunk_size=chunk_size)
    i2t = relevant_ranks(image_emb, text_emb, image_ids, text_image_index, missing_queries=unreadable_images,
                         device=device, chunk_size=chunk_size)
    metrics = {f"image_retrieval_recall@{k}": recall_at_k(t2i, k) for k in ks}
    metrics.update({f"text_retrieval_recall@{k}": recall_at_k(i2t, k) for k in ks})
    return metrics
