"""Synthetic unit vectors for the vector-search benchmark: clustered like image embeddings, or uniform on the
sphere (the hardest case for an index); and how meaningful their nearest neighbours are."""
from __future__ import annotations

import argparse

import numpy as np

K = 10


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_vectors(args: argparse.Namespace, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(base, queries, base cluster ids, query cluster ids); uniform data has cluster id -1 throughout."""
    rng = np.random.default_rng(args.seed + n)
    d, nq = args.dim, args.queries
    if args.distribution == "uniform":
        return (unit_rows(rng.standard_normal((n, d), dtype=np.float32)),
                unit_rows(rng.standard_normal((nq, d), dtype=np.float32)), np.full(n, -1), np.full(nq, -1))
    centres = unit_rows(rng.standard_normal((max(1, n // args.cluster_size), d), dtype=np.float32))
    variance = np.arange(1, d + 1, dtype=np.float64) ** -args.noise_decay
    noise_std = (args.noise_scale * np.sqrt(variance / variance.sum())).astype(np.float32)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        ids = rng.integers(0, len(centres), count)
        out = np.empty((count, d), np.float32)
        for s in range(0, count, 100_000):  # in blocks: the noise never needs a second N × d array
            block = rng.standard_normal((min(100_000, count - s), d), dtype=np.float32)
            block *= noise_std
            block += centres[ids[s:s + len(block)]]
            out[s:s + len(block)] = unit_rows(block)
        return out, ids

    base, base_ids = draw(n)
    queries, query_ids = draw(nq)
    return base, queries, base_ids, query_ids


def data_stats(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, base_ids: np.ndarray,
               query_ids: np.ndarray) -> dict:
    """How meaningful the neighbours are: cosine of a query to its 1st and 10th exact neighbour and to a
    random base vector, and the share of exact top-10 neighbours from the query's own cluster."""
    first = np.einsum("qd,qd->q", queries, base[truth[:, 0]])
    tenth = np.einsum("qd,qd->q", queries, base[truth[:, K - 1]])
    rand = np.einsum("qd,qd->q", queries, base[np.random.default_rng(0).integers(0, len(base), len(queries))])
    stats = {"mean_cos_top1": round(float(first.mean()), 4), "mean_cos_top10": round(float(tenth.mean()), 4),
             "mean_cos_random": round(float(rand.mean()), 4)}
    if query_ids[0] >= 0:
        stats["top10_from_own_cluster"] = round(float((base_ids[truth] == query_ids[:, None]).mean()), 4)
    return stats
