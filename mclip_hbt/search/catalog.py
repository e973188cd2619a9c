"""The index folder's catalog: one SQLite file with every indexed image (path, size, mtime, content hash, its
embedding), the images that could not be read, and the model and picture folder the index was built from.

The catalog is the index's source of truth: each batch of encoded images is committed in one transaction, so a
killed run loses at most the batch in flight, and the approximate-search file beside it
(:mod:`mclip_hbt.search.vectors`) can always be rebuilt from it. Paths are stored relative to the picture folder.
"""
from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mclip_hbt.fileio import OutputError

CATALOG_NAME = "catalog.sqlite"
#: Bumped when the tables change; an index of another format is refused with a message, not misread.
CATALOG_FORMAT = "1"
#: SQLite waits this long for another process's write lock instead of failing at once (never forever).
BUSY_TIMEOUT_S = 30

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    error TEXT NOT NULL);
"""


class SearchIndexError(OutputError):
    """An index folder that cannot be used as asked: missing, of another format, or built from another model or
    picture folder. A usage error: one line, exit status 2."""


@dataclass(frozen=True)
class ModelRecord:
    """The model an index was built with: how it was named, and a hash of its weights (the name alone does not
    say whether a saved run's folder was retrained since)."""

    spec: str
    fingerprint: str
    dim: int


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_index(folder: Path) -> bool:
    """A folder this project's indexer wrote."""
    return (folder / CATALOG_NAME).is_file()


class Catalog:
    """The SQLite catalog of one index folder; use as a context manager (the connection is closed at the end)."""

    def __init__(self, folder: str | Path, *, create: bool = False, readonly: bool = False):
        self.folder = Path(folder)
        path = self.folder / CATALOG_NAME
        if not path.is_file() and not create:
            raise SearchIndexError(f"{self.folder} is not a search index (no {CATALOG_NAME}); build one with "
                              "`python -m mclip_hbt.search index IMAGES --model MODEL --out INDEX`")
        try:
            uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
            # check_same_thread off: the web server's worker threads share it (Python's sqlite3 is built serialized)
            self.db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(SCHEMA)
            stored = self.meta().get("format")
        except sqlite3.DatabaseError as err:
            raise SearchIndexError(f"{path} is not a readable index catalog ({err}); index the pictures into a new "
                              "--out") from err
        if stored is not None and stored != CATALOG_FORMAT:
            self.db.close()
            raise SearchIndexError(f"{self.folder} is an index of format {stored}; this version reads format "
                              f"{CATALOG_FORMAT}: build it again into a new --out")

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()

    # ------------------------------------------------------------------ what the index was built from

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def record_origin(self, root: Path, model: ModelRecord) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                ("format", CATALOG_FORMAT), ("root", str(root)), ("model_spec", model.spec),
                ("model_fingerprint", model.fingerprint), ("dim", str(model.dim))])

    @property
    def root(self) -> Path | None:
        root = self.meta().get("root")
        return Path(root) if root else None

    @property
    def model(self) -> ModelRecord | None:
        meta = self.meta()
        if "model_fingerprint" not in meta:
            return None
        return ModelRecord(meta["model_spec"], meta["model_fingerprint"], int(meta["dim"]))

    @property
    def generation(self) -> int:
        """Counts committed changes; the approximate-search file records the generation it was saved at."""
        return int(self.meta().get("generation", "0"))

    # ------------------------------------------------------------------ images

    def rows(self) -> dict[str, ImageRow]:
        return {row[1]: ImageRow(*row) for row in self.db.execute(
            "SELECT id, path, size, mtime_ns, sha256 FROM images")}

    def skipped(self) -> dict[str, tuple[int, int, str]]:
        return {path: (size, mtime, error) for path, size, mtime, error in self.db.execute(
            "SELECT path, size, mtime_ns, error FROM skipped ORDER BY path")}

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def commit_batch(self, added: Iterable[tuple[str, int, int, str, int, int, np.ndarray]],
                     skipped: Iterable[tuple[str, int, int, str]]) -> list[int]:
        """In one transaction: add the encoded images (path, size, mtime_ns, sha256, width, height, vector) and the
        unreadable ones (path, size, mtime_ns, error), each replacing what the catalog held at its path. Returns
        the new images' ids, in order."""
        ids = []
        with self.db:
            for path, size, mtime_ns, sha256, width, height, vector in added:
                self.db.execute("DELETE FROM images WHERE path = ?", (path,))
                self.db.execute("DELETE FROM skipped WHERE path = ?", (path,))
                cursor = self.db.execute(
                    "INSERT INTO images (path, size, mtime_ns, sha256, width, height, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (path, size, mtime_ns, sha256, width, height, np.ascontiguousarray(vector, np.float32).tobytes()))
                ids.append(cursor.lastrowid)
            for path, size, mtime_ns, error in skipped:
                self.db.execute("DELETE FROM images WHERE path = ?", (path,))
                self.db.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", (path, size, mtime_ns, error))
            self._bump_generation()
        return ids

    def touch(self, path: str, size: int, mtime_ns: int) -> None:
        """A file whose time stamp changed but whose content did not: keep its embedding."""
        with self.db:
            self.db.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE path = ?", (size, mtime_ns, path))

    def forget(self, paths: Iterable[str]) -> None:
        """Files that are gone from the picture folder (indexed or skipped)."""
        with self.db:
            for path in paths:
                self.db.execute("DELETE FROM images WHERE path = ?", (path,))
                self.db.execute("DELETE FROM skipped WHERE path = ?", (path,))
            self._bump_generation()

    def _bump_generation(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(self.generation + 1),))

    def vectors(self, ids: Iterable[int] | None = None, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors [n, dim]) in chunks: all images, or those of ``ids``."""
        dim = self.model.dim
        if ids is None:
            cursor = self.db.execute("SELECT id, vector FROM images ORDER BY id")
            while rows := cursor.fetchmany(chunk):
                yield self._stack(rows, dim)
            return
        ids = list(ids)
        for start in range(0, len(ids), 900):  # SQLite's limit on bound parameters
            part = ids[start:start + 900]
            rows = self.db.execute(f"SELECT id, vector FROM images WHERE id IN ({','.join('?' * len(part))})",
                                   part).fetchall()
            if rows:
                yield self._stack(rows, dim)

    def stacked_vectors(self, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors [n, dim]) in one array each: all images, or those of ``ids`` (in no particular order)."""
        chunks = list(self.vectors(ids))
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, self.model.dim), np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    @staticmethod
    def _stack(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        return ids, np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), dim)

    def paths_of(self, ids: Iterable[int]) -> dict[int, str]:
        ids = list(ids)
        found = {}
        for start in range(0, len(ids), 900):
            part = ids[start:start + 900]
            found.update(self.db.execute(f"SELECT id, path FROM images WHERE id IN ({','.join('?' * len(part))})",
                                         part))
        return found

