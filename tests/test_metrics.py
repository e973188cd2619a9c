"""Retrieval metrics: hand-worked cases, CLIP_benchmark's recall@k, brute-force mAP and rank distance."""
from __future__ import annotations

import pytest
import torch

from eval.metrics import (
    average_precision,
    mean_average_precision,
    mean_recall,
    rank_distance,
    rank_distances,
    recall_at_k,
    relevant_ranks,
    retrieval_recalls,
)


def ranks_for_scores(scores: list[list[float]], query_groups, item_groups, **kwargs):
    """Queries = unit vectors, items = the score matrix's columns, so query·item = scores[q][i] exactly."""
    s = torch.tensor(scores, dtype=torch.float32)
    return relevant_ranks(torch.eye(s.shape[0]), s.T.contiguous(), torch.tensor(query_groups),
                          torch.tensor(item_groups), **kwargs)


def test_two_relevant_items_hand_worked():
    # Relevant: items 1 (0.8, rank 2) and 3 (0.6, rank 4).
    r = ranks_for_scores([[0.9, 0.8, 0.7, 0.6, 0.5]], [0], [1, 0, 1, 0, 2])
    assert r.ranks.tolist() == [[2, 4]]
    assert recall_at_k(r, 1) == 0.0
    assert recall_at_k(r, 2) == 1.0  # a hit needs only one relevant item in the top k
    assert mean_average_precision(r) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert rank_distance(r) == 2.0


def test_recall_averages_over_queries_with_different_relevant_counts():
    r = ranks_for_scores([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5]], [7, 3], [3, 7, 7])
    # query 0 (group 7): items 1 (rank 3) and 2 (rank 2); query 1 (group 3): item 0 (rank 1)
    assert r.count.tolist() == [2, 1]
    assert recall_at_k(r, 1) == 0.5 and recall_at_k(r, 2) == 1.0
    assert average_precision(r).tolist() == pytest.approx([(1 / 2 + 2 / 3) / 2, 1.0])
    assert rank_distances(r).tolist() == [1.0, 0.0]


def test_query_removed_from_its_own_pool():
    # Item 0 is the query itself (score 1.0); relevant = items 2 and 3 (same group, not the query).
    scores = [[1.0, 0.2, 0.9, 0.5]]
    kept = ranks_for_scores(scores, [0], [0, 1, 0, 0])
    removed = ranks_for_scores(scores, [0], [0, 1, 0, 0], query_item_index=torch.tensor([0]))
    assert kept.ranks.tolist() == [[1, 2, 3]]
    assert removed.ranks.tolist() == [[1, 2]]
    assert mean_average_precision(removed) == 1.0 and rank_distance(removed) == 1.0


def test_relevant_items_tied_with_each_other_share_a_rank_and_ap_positions_stay_distinct():
    # Two relevant items tie at 0.5 behind an irrelevant 0.9: both rank 2; AP counts positions 2 and 3.
    r = ranks_for_scores([[0.5, 0.5, 0.9]], [0], [0, 0, 1])
    assert r.ranks.tolist() == [[2, 2]]
    assert rank_distance(r) == 0.0
    assert mean_average_precision(r) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ties_with_irrelevant_items_go_against_the_query():
    # A relevant item tied with an irrelevant one at the top ranks after it: rank 2, no hit at 1.
    r = ranks_for_scores([[0.5, 0.5]], [0], [1, 0])
    assert r.ranks.tolist() == [[2]] and recall_at_k(r, 1) == 0.0 and mean_average_precision(r) == 0.5
    # Relevant items 0 (0.9) and 2 (0.5) with irrelevant 1 (0.5) and 3 (0.5): item 2 ranks after both
    # (rank 4, AP (1/1 + 2/4) / 2); rank distance counts from the best one (rank 1) to 4.
    r = ranks_for_scores([[0.9, 0.5, 0.5, 0.5]], [0], [0, 1, 0, 1])
    assert r.ranks.tolist() == [[1, 4]]
    assert mean_average_precision(r) == pytest.approx((1 + 2 / 4) / 2) and rank_distance(r) == 3.0
    # The best relevant item tied with irrelevant ones: rank distance places it before them (rank 1) and
    # the worst after its own ties (rank 4): relevant 0 and 3 at 0.5 tied with irrelevant 1 at 0.5, then
    # relevant 2 at 0.1 behind them all.
    r = ranks_for_scores([[0.5, 0.5, 0.1, 0.5]], [0], [0, 1, 0, 0])
    assert r.ranks.tolist() == [[2, 2, 4]] and rank_distance(r) == 3.0


def test_mean_recall_is_the_mean_of_six_recalls():
    recalls = {f"{d}_retrieval_recall@{k}": v for d, vals in (("image", (0.1, 0.2, 0.3)), ("text", (0.4, 0.5, 0.6)))
               for k, v in zip((1, 5, 10), vals)}
    assert mean_recall(recalls) == pytest.approx(0.35)


def test_query_without_relevant_item_is_refused():
    with pytest.raises(ValueError, match="no relevant item"):
        ranks_for_scores([[0.1, 0.2]], [5], [0, 1])
    with pytest.raises(ValueError, match="once the query itself is removed"):
        ranks_for_scores([[1.0, 0.2]], [0], [0, 1], query_item_index=torch.tensor([0]))


# --- CLIP_benchmark's computation, re-implemented as the reference --------------------------------
# LAION-AI/CLIP_benchmark, clip_benchmark/metrics/zeroshot_retrieval.py: `recall_at_k` and `batchify`,
# and how `evaluate` turns them into image/text retrieval recall@k (the per-query recall > 0, averaged).

def clip_benchmark_recall_at_k(scores, positive_pairs, k):
    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def clip_benchmark_batchify(func, X, Y, batch_size, *args, **kwargs):
    return torch.cat([func(X[s:s + batch_size], Y[s:s + batch_size], *args, **kwargs)
                      for s in range(0, len(X), batch_size)])


def clip_benchmark_metrics(texts_emb, images_emb, texts_image_index, ks, batch_size=16):
    scores = texts_emb @ images_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = (clip_benchmark_batchify(
            clip_benchmark_recall_at_k, scores, positive_pairs, batch_size, k=k) > 0).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (clip_benchmark_batchify(
            clip_benchmark_recall_at_k, scores.T, positive_pairs.T, batch_size, k=k) > 0).float().mean().item()
    return metrics


def random_caption_set(seed: int, n_images: int = 60, dim: int = 16):
    """Images with 1 to 5 captions each; captions near their image so recalls are neither 0 nor 1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    per_image = torch.randint(1, 6, (n_images,), generator=g)
    index = torch.repeat_interleave(torch.arange(n_images), per_image)
    texts = torch.nn.functional.normalize(images[index] + 0.9 * torch.randn(len(index), dim, generator=g), dim=-1)
    return texts, images, index


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_equals_clip_benchmark_with_several_captions_per_image(seed):
    texts, images, index = random_caption_set(seed)
    ks = (1, 5, 10)
    ours = retrieval_recalls(texts, images, index, ks=ks, chunk_size=13)
    reference = clip_benchmark_metrics(texts, images, index, ks)
    assert ours.keys() == reference.keys()
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key
    assert 0 < ours["image_retrieval_recall@1"] < 1  # the case is informative, not saturated


def brute_force(scores: torch.Tensor, relevant: torch.Tensor) -> tuple[list[float], list[float]]:
    """AP and rank distance from a full descending sort of every query's scores."""
    aps, rds = [], []
    for row, rel in zip(scores, relevant):
        order = torch.argsort(row, descending=True)
        positions = (rel[order].nonzero().flatten() + 1).double()
        aps.append((torch.arange(1, len(positions) + 1) / positions).mean().item())
        rds.append((positions.max() - positions.min()).item())
    return aps, rds


def test_multilingual_pool_matches_brute_force_and_chunking_changes_nothing():
    g = torch.Generator().manual_seed(3)
    n_images, n_langs, dim = 25, 4, 12
    base = torch.randn(n_images, dim, generator=g)
    pool = torch.nn.functional.normalize(base.repeat(n_langs, 1) + torch.randn(n_images * n_langs, dim, generator=g),
                                         dim=-1)
    groups = torch.arange(n_images).repeat(n_langs)
    self_index = torch.arange(len(pool))
    small = relevant_ranks(pool, pool, groups, groups, query_item_index=self_index, chunk_size=7)
    whole = relevant_ranks(pool, pool, groups, groups, query_item_index=self_index, chunk_size=10_000)
    assert torch.equal(small.ranks, whole.ranks) and torch.equal(small.count, whole.count)
    assert small.count.tolist() == [n_langs - 1] * len(pool)

    scores = pool @ pool.T
    scores.fill_diagonal_(float("-inf"))
    relevant = (groups[:, None] == groups[None, :]) & ~torch.eye(len(pool), dtype=torch.bool)
    aps, rds = brute_force(scores, relevant)
    assert average_precision(small).tolist() == pytest.approx(aps)
    assert rank_distances(small).tolist() == pytest.approx(rds)


@pytest.mark.parametrize("with_missing", [False, True])
def test_counting_ranks_in_sorted_rows_equals_comparing(monkeypatch, with_missing):
    """Pools with many relevant items per query take the sorted-row path; on tied, quantised scores, with
    the query in its own pool and unreadable inputs, both paths give the same ranks."""
    import eval.metrics as metrics
    g = torch.Generator().manual_seed(5)
    n_images, n_langs = 30, 20
    pool = torch.randint(-2, 3, (n_images * n_langs, 6), generator=g).float()  # many exact ties
    groups = torch.arange(n_images).repeat(n_langs)
    kwargs = dict(query_item_index=torch.arange(len(pool)), chunk_size=64)
    if with_missing:
        kwargs["missing_items"] = torch.rand(len(pool), generator=g) < 0.05
        kwargs["missing_queries"] = kwargs["missing_items"]
    results = []
    for threshold in (10**9, 0):  # compare everything, then sort everything
        monkeypatch.setattr(metrics, "_SORT_ABOVE_WIDTH", threshold)
        results.append(relevant_ranks(pool, pool, groups, groups, **kwargs))
    compared, sorted_ = results
    assert torch.equal(compared.ranks, sorted_.ranks)
    assert torch.equal(compared.best_before_ties, sorted_.best_before_ties)
    assert compared.count.tolist() == [n_langs - 1] * len(pool)
