"""Retrieval metrics, all derived from one quantity: the rank of every relevant item of every query.

Relevance is given by group ids: item ``j`` is relevant to query ``i`` iff
``item_groups[j] == query_groups[i]`` (text→image: a caption's group is its image; image→text:
an image's group is itself, each caption's group its image; caption→caption: both are the image).
That covers every XTD10/M3C setting without a dense relevance matrix.

Ranks start at 1. The rank of a relevant item is ``1 +`` the number of pool items scoring strictly
higher, so an item tied with others takes the best rank of the tie ("competition" ranking). With
real-valued embeddings ties are rare; where a relevant item ties with the k-th score,
CLIP_benchmark's ``torch.topk`` keeps an unspecified one of the tied items while we count a hit.
Otherwise recall@k equals CLIP_benchmark's (``metrics/zeroshot_retrieval.py``): a query scores a hit
when at least one relevant item is in its top k.

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


@dataclass(frozen=True)
class RelevantRanks:
    """Ranks of each query's relevant items: ``ranks[i, :count[i]]`` ascending, the rest :data:`RANK_PAD`."""

    ranks: torch.Tensor  # [Q, R] int64
    count: torch.Tensor  # [Q] int64, >= 1

    def __len__(self) -> int:
        return self.ranks.shape[0]

    def subset(self, index: torch.Tensor) -> "RelevantRanks":
        """The ranks of the queries selected by ``index`` (a boolean mask or indices)."""
        return RelevantRanks(self.ranks[index], self.count[index])

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
                   chunk_size: int = 1024, device: str | torch.device = "cpu") -> RelevantRanks:
    """Rank every relevant item of every query among all items by dot-product similarity.

    ``queries`` [Q, D] and ``items`` [N, D] are embeddings (normalised: dot = cosine).
    ``query_item_index`` [Q] (optional): the position of each query in the item pool, for pools
    that contain the queries themselves (caption → all other captions); that item is removed from
    the query's pool and from its relevant set.
    """
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
    items_dev = items.to(device, torch.float32)
    chunk = max(1, min(chunk_size, _COMPARE_BUDGET // max(1, width * len(items))))
    out = []
    for start in range(0, len(queries), chunk):
        end = min(start + chunk, len(queries))
        sims = queries[start:end].to(device, torch.float32) @ items_dev.T
        if query_item_index is not None:
            rows = torch.arange(end - start, device=device)
            sims[rows, query_item_index[start:end].to(device)] = float("-inf")
        rel = relevant[start:end].to(device)
        rel_scores = sims.gather(1, rel.clamp(min=0))  # same matmul row as the pool: no rounding mismatch
        ranks = (sims.unsqueeze(1) > rel_scores.unsqueeze(2)).sum(2) + 1
        ranks = torch.where(rel >= 0, ranks, RANK_PAD)
        out.append(torch.sort(ranks, dim=1).values.cpu())
    return RelevantRanks(torch.cat(out), count)


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
    """Per query: worst rank − best rank among its relevant items (language bias when they are one per language)."""
    return (r.worst - r.best).double()


def rank_distance(r: RelevantRanks) -> float:
    return rank_distances(r).mean().item()


def mean_recall(recalls: Mapping[str, float], ks: tuple[int, ...] = (1, 5, 10)) -> float:
    """M3P's mean recall: the mean of R@k over ``ks`` in both directions (CLIP_benchmark key names)."""
    keys = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in ks]
    return sum(recalls[key] for key in keys) / len(keys)


def retrieval_recalls(text_emb: torch.Tensor, image_emb: torch.Tensor, text_image_index: torch.Tensor, *,
                      ks: tuple[int, ...] = (1, 5, 10), device: str | torch.device = "cpu",
                      chunk_size: int = 1024) -> dict[str, float]:
    """Text→image and image→text recall@k for captions of images (several captions per image allowed).

    Keys as in CLIP_benchmark: ``image_retrieval_recall@k`` (text→image) and
    ``text_retrieval_recall@k`` (image→text: a hit when any of the image's captions is in the top k).
    """
    text_image_index = torch.as_tensor(text_image_index, dtype=torch.long)
    image_ids = torch.arange(len(image_emb))
    t2i = relevant_ranks(text_emb, image_emb, text_image_index, image_ids, device=device, chunk_size=chunk_size)
    i2t = relevant_ranks(image_emb, text_emb, image_ids, text_image_index, device=device, chunk_size=chunk_size)
    metrics = {f"image_retrieval_recall@{k}": recall_at_k(t2i, k) for k in ks}
    metrics.update({f"text_retrieval_recall@{k}": recall_at_k(i2t, k) for k in ks})
    return metrics
