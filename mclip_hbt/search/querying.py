"""Ask an index: by text (the same query in several languages at once, with how far their answers agree), by a
picture, or by an indexed image ("more like this").

The agreement of two phrasings of one query is the diagnostic no other image-search tool gives: where the
model serves a language as well as English, its phrasing finds the same pictures. Two figures per pair of
phrasings: overlap@k, the share of one's top k that is in the other's; and the Spearman correlation of the two
phrasings' scores over the pictures either put in its top k (1: they rank those pictures alike).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from mclip_hbt.data.images import ImageError, open_image
from mclip_hbt.retrieval.models import RetrievalModel, load_retrieval_model

from .catalog import Catalog, SearchIndexError
from .indexing import model_record
from .vectors import ApproximateSearch, ExactSearch, open_search

#: The web page's caps, also what the command line accepts: a query is a phrase, not a document.
MAX_QUERY_CHARS = 300
MAX_K = 100
MAX_PHRASINGS = 8


class QueryError(ValueError):
    """A query the index will not run (empty, too long, a bad k, an unreadable picture): its message says why."""


@dataclass
class Hit:
    id: int
    path: str
    score: float


@dataclass
class Agreement:
    a: int
    b: int
    overlap: float
    rank_correlation: float | None


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None where it is undefined (under 2 items, or one
    side constant)."""
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (starts + (counts - 1) / 2)[inverse]


class SearchIndex:
    """An index folder opened for queries with the model it was built with (any other is refused)."""

    def __init__(self, folder: str | Path, *, model: RetrievalModel | None = None, model_spec: str | None = None,
                 mode: str = "auto", device: str = "cpu"):
        self.folder = Path(folder)
        self.catalog = Catalog(self.folder, readonly=True)
        built_with = self.catalog.model
        if built_with is None:
            raise SearchIndexError(f"{self.folder} holds no finished index run; run the index command on it")
        if model is None:
            model = load_retrieval_model(model_spec or built_with.spec, device)
        record = model_record(model, model_spec or built_with.spec)
        if record.fingerprint != built_with.fingerprint:
            raise SearchIndexError(
                f"{self.folder} was built with the model {built_with.spec!r} (weights {built_with.fingerprint[:12]}); "
                f"{record.spec!r} is another model ({record.fingerprint[:12]}): its embeddings would be compared with "
                "another model's. Query with the model the index was built with, or index the pictures again")
        self.model = model
        self.searcher: ExactSearch | ApproximateSearch
        self.searcher, self.mode = open_search(self.folder, self.catalog, mode)

    def __len__(self) -> int:
        return len(self.catalog)

    @property
    def root(self) -> Path:
        return self.catalog.root

    def _hits(self, ids: list[int], scores: list[float]) -> list[Hit]:
        paths = self.catalog.paths_of(ids)
        return [Hit(i, paths[i], round(float(s), 6)) for i, s in zip(ids, scores) if i in paths]

    def by_texts(self, texts: list[str], k: int) -> tuple[list[list[Hit]], list[Agreement]]:
        """Each text's top ``k``, and for every pair of texts their agreement (see the module docstring)."""
        check_query(texts, k)
        queries = self.model.encode_texts(texts, progress=False).numpy()
        hits = self._search(queries, k)
        return hits, self._agreement(queries, hits, k)

    def search_texts(self, texts: list[str], k: int) -> list[list[Hit]]:
        """Each of many texts' top ``k`` (a benchmark's captions), without the caps of an interactive query."""
        return self._search(self.model.encode_texts(texts, progress=False).numpy(), k)

    def _search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        found = self.searcher.search(queries, k)
        return [self._hits(ids, scores) for ids, scores in zip(found.ids, found.scores)]

    def _agreement(self, queries: np.ndarray, hits: list[list[Hit]], k: int) -> list[Agreement]:
        pairs = []
        for a, b in combinations(range(len(hits)), 2):
            top_a, top_b = {h.id for h in hits[a]}, {h.id for h in hits[b]}
            _, vectors = self.catalog.stacked_vectors(top_a | top_b)
            pairs.append(Agreement(a, b, len(top_a & top_b) / k,
                                   spearman(vectors @ queries[a], vectors @ queries[b])))
        return pairs

    def by_image_file(self, path: str | Path, k: int) -> list[Hit]:
        check_query([], k)
        try:
            pixels = self.model.preprocess(open_image(path)).unsqueeze(0)
        except ImageError as err:
            raise QueryError(f"{path} is not a picture this can read ({err})") from err
        return self._search(self.model.embed_pixels(pixels).numpy(), k)[0]

    def by_id(self, image_id: int, k: int) -> list[Hit]:
        """More like an indexed image (it comes first, with score 1)."""
        check_query([], k)
        _, vectors = self.catalog.stacked_vectors([image_id])
        if len(vectors) == 0:
            raise KeyError(image_id)
        return self._search(vectors, k)[0]

    def path_of(self, image_id: int) -> Path | None:
        """The file of an indexed image, only when it still resolves inside the indexed folder."""
        relative = self.catalog.paths_of([image_id]).get(image_id)
        if relative is None:
            return None
        root = self.root.resolve()
        full = (root / relative).resolve()
        return full if full.is_relative_to(root) and full.is_file() else None


def check_query(texts: list[str], k: int) -> None:
    """QueryError for a query the index will not run: empty or overlong text, too many phrasings, a bad k."""
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    if len(texts) > MAX_PHRASINGS:
        raise QueryError(f"at most {MAX_PHRASINGS} phrasings of a query, got {len(texts)}")
    for text in texts:
        if not text.strip():
            raise QueryError("a query is empty; give some words")
        if len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"a query is {len(text)} characters; at most {MAX_QUERY_CHARS} are searched")


def agreement_summary(hits: list[list[Hit]], pairs: list[Agreement]) -> dict | None:
    """The agreement as the page and ``--json`` show it: every pair, the pictures all phrasings found, the mean
    overlap; None for a single phrasing."""
    if len(hits) < 2:
        return None
    shared = set.intersection(*({h.id for h in found} for found in hits))
    return {"pairs": [asdict(p) for p in pairs], "shared": [h.id for h in hits[0] if h.id in shared],
            "mean_overlap": float(np.mean([p.overlap for p in pairs]))}
