"""Nearest neighbours among an index's embeddings: exact (one matrix product over every vector, rclip's way) or
approximate (a faiss inverted file, IVF-Flat, saved beside the catalog).

faiss's IVF-Flat, chosen by ``bench/search_vectors.py``: it takes keyed additions and removals, so an incremental
re-index edits the saved index instead of rebuilding it (faiss's HNSW cannot remove a vector), it builds a
million vectors in under 4 minutes where the HNSW graphs took 8 to 17 on 2 cores, and on clustered vectors (what
image embeddings are) it reached recall@10 0.97 at a million where HNSW at efSearch 256 stayed at 0.81-0.84.
Its lists are trained once (k-means on the vectors there) and trained again, from the catalog, whenever the index
has grown four-fold since. Scores are inner products of L2-normalised vectors (cosine similarity) both ways, so
exact and approximate results compare directly.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from mclip_hbt.fileio import parse_json, write_json_atomic

from .catalog import Catalog, SearchIndexError

ANN_FILE = "vectors.faiss"
#: The catalog generation the saved index matches, and the size its lists were trained at.
ANN_STAMP = "vectors.json"
#: Below this many images exact search answers within a millisecond on 2 cores (bench/search_vectors.py), and is
#: exact; ``--search approximate`` still uses the inverted file.
EXACT_BELOW = 15_000
#: Inverted lists per square root of the vector count (faiss's guidance: 4-16), each holding >= 39 vectors, and
#: lists searched per query: at a million clustered vectors, recall@10 0.970 at 2.1 ms p50 on 2 cores (4·√N lists
#: reached 0.910 at nprobe 64, 9.8 ms; bench/results/search_vectors_ivf*_cpu.json).
LISTS_PER_SQRT = 8
NPROBE = 32
TRAIN_PER_LIST = 50
#: Retrain the lists once the index holds this many times the vectors they were trained on.
RETRAIN_GROWTH = 4
SEARCH_MODES = ("auto", "exact", "approximate")
ADD_CHUNK = 50_000


@dataclass
class Neighbours:
    """For each query row: the ids of its k nearest images, best first, and their cosine similarities."""

    ids: list[list[int]]
    scores: list[list[float]]


class ExactSearch:
    """Every vector in one float32 matrix; a query is a matrix product and a partial sort."""

    def __init__(self, catalog: Catalog):
        self.ids, self.matrix = catalog.stacked_vectors()

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        scores = queries @ self.matrix.T
        k = min(k, len(self.ids))
        if k == 0:
            return Neighbours([[] for _ in queries], [[] for _ in queries])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-scores, top, axis=1).argsort(axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return Neighbours(self.ids[top].tolist(), np.take_along_axis(scores, top, axis=1).tolist())


class ApproximateSearch:
    """The saved inverted file (faiss's binary format: vectors and lists, no code)."""

    def __init__(self, folder: Path):
        index = _read_ann(folder)
        if index is None:
            raise SearchIndexError(f"{folder / ANN_FILE} is not a readable inverted file; delete it and run the index "
                                   "command again to rebuild it from the catalog (or query with --search exact)")
        self.index = index
        self.index.nprobe = min(NPROBE, self.index.nlist)

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), min(k, self.index.ntotal))
        found = ids >= 0  # -1 pads a row when the probed lists hold fewer than k vectors
        return Neighbours([row[keep].tolist() for row, keep in zip(ids, found)],
                          [row[keep].tolist() for row, keep in zip(scores, found)])


def list_count(n: int) -> int:
    return max(1, min(int(LISTS_PER_SQRT * math.sqrt(n)), n // 39))


def ann_is_current(folder: Path, catalog: Catalog) -> bool:
    """Whether the saved inverted file matches the catalog (an index run that was stopped leaves it behind)."""
    stamp, path = _read_stamp(folder / ANN_STAMP), folder / ANN_FILE
    if stamp.get("generation") != catalog.generation:
        return False
    # the size it was saved at: a file cut short or replaced since is rebuilt by the next index run
    return len(catalog) == 0 or (path.is_file() and path.stat().st_size == stamp.get("bytes"))


def _trained_index(catalog: Catalog) -> faiss.IndexIVFFlat:
    """An empty inverted file whose lists are trained on an even sample of the catalog's vectors."""
    n, dim = len(catalog), catalog.model.dim
    lists = list_count(n)
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(0).permutation(n)[:lists * TRAIN_PER_LIST]] = True
    sample, start = [], 0
    for _, vectors in catalog.vectors(chunk=ADD_CHUNK):
        sample.append(vectors[chosen[start:start + len(vectors)]])
        start += len(vectors)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.train(np.concatenate(sample))
    return index


def save_ann(folder: Path, catalog: Catalog, *, added_ids: list[int], removed_ids: list[int],
               base_generation: int | None, progress: bool = True) -> None:
    """Bring the saved inverted file up to the catalog: edit it when it was current at ``base_generation`` (this
    run's start) and its lists need no retraining, else build it anew from every vector in the catalog; then save
    it and stamp the generation."""
    stamp = _read_stamp(folder / ANN_STAMP)
    editable = (base_generation is not None and stamp.get("generation") == base_generation
                and len(catalog) <= RETRAIN_GROWTH * max(1, stamp.get("trained_on", 0)))
    saved = _read_ann(folder) if editable else None
    if saved is not None:
        index = saved
        if removed_ids:
            index.remove_ids(np.asarray(removed_ids, dtype=np.int64))
        to_add, total, trained_on = catalog.vectors(added_ids), len(added_ids), stamp["trained_on"]
    elif len(catalog) == 0:
        index, to_add, total, trained_on = None, [], 0, 0
    else:
        index, to_add, total, trained_on = _trained_index(catalog), catalog.vectors(chunk=ADD_CHUNK), len(catalog), \
            len(catalog)
    with tqdm(total=total, desc="search index", unit="vec", disable=not progress or total < ADD_CHUNK) as bar:
        for ids, vectors in to_add:
            index.add_with_ids(vectors, ids)
            bar.update(len(ids))
    if index is None:
        (folder / ANN_FILE).unlink(missing_ok=True)
    else:
        staging = folder / f".{ANN_FILE}.partial"
        faiss.write_index(index, str(staging))
        os.replace(staging, folder / ANN_FILE)
    saved_bytes = (folder / ANN_FILE).stat().st_size if index is not None else 0
    write_json_atomic(folder / ANN_STAMP, {"generation": catalog.generation, "count": len(catalog),
                                          "bytes": saved_bytes, "trained_on": trained_on,
                                          "lists": index.nlist if index is not None else 0})


def _read_ann(folder: Path) -> faiss.IndexIVFFlat | None:
    """The saved inverted file, or None when it is missing or not one faiss reads as an IVF-Flat index."""
    try:
        index = faiss.read_index(str(folder / ANN_FILE))
    except RuntimeError:  # faiss's one exception type, for a missing, truncated or foreign file alike
        return None
    return index if isinstance(index, faiss.IndexIVFFlat) else None


def _read_stamp(path: Path) -> dict:
    try:
        value = parse_json(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def open_search(folder: Path, catalog: Catalog, mode: str) -> tuple[ExactSearch | ApproximateSearch, str]:
    """The searcher ``mode`` asks for, and the mode it resolved to. ``auto`` is exact below :data:`EXACT_BELOW`
    images, and when the inverted file is older than the catalog (an index run was stopped before saving it)."""
    current = ann_is_current(folder, catalog)
    if mode == "approximate" and not current:
        raise SearchIndexError(f"{folder}: the approximate-search index is missing, damaged or older than the "
                               "catalog (an index run was stopped); run the index command again to finish it")
    if mode == "exact" or (mode == "auto" and (len(catalog) < EXACT_BELOW or not current)):
        return ExactSearch(catalog), "exact"
    return ApproximateSearch(folder), "approximate"
