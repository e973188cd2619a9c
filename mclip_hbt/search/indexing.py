"""Index a folder of pictures: find what is new, changed or gone since the last run, encode only that, commit it
batch by batch, and bring the approximate-search index up to date.

A run that is killed resumes where it stopped: every committed batch is in the catalog with its file's size and
time stamp, so the next run finds those files unchanged and encodes the rest. A file that cannot be read as a
picture is listed in the catalog's ``skipped`` table with the reason, and tried again only once it changes.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mclip_hbt.data.images import ImageError, open_image
from mclip_hbt.fileio import exclusive_lock
from mclip_hbt.retrieval.models import RetrievalModel, blank_pixels

from .catalog import Catalog, ImageRow, ModelRecord, SearchIndexError, file_sha256
from .vectors import ann_is_current, save_ann

#: What the indexer reads (a GIF by its first frame); matched case-insensitively.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
#: A picture file larger than this is skipped unread: no camera writes one, and reading it whole would cost memory.
MAX_FILE_BYTES = 256 << 20
LOCK_NAME = "index.lock"


@dataclass(frozen=True)
class FoundFile:
    path: str  # relative to the picture folder, "/"-separated
    full: Path
    size: int
    mtime_ns: int


@dataclass
class IndexReport:
    images: int = 0          # in the index after the run
    encoded: int = 0         # new or changed pictures encoded by this run
    removed: int = 0         # gone from the folder (or changed, before re-encoding)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run's and earlier ones'
    seconds: float = 0.0


def scan(root: Path) -> dict[str, FoundFile]:
    """Every picture file under ``root`` by its relative path. Symbolic links are followed only to files inside
    ``root``: the index must never come to serve a file from elsewhere."""
    root = root.resolve()
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if full.is_symlink() and not full.resolve().is_relative_to(root):
                continue
            try:
                info = full.stat()
            except OSError:  # a dangling link, or a file deleted while walking
                continue
            if full.is_file():
                relative = full.relative_to(root).as_posix()
                found[relative] = FoundFile(relative, full, info.st_size, info.st_mtime_ns)
    return found


class PictureFiles(Dataset):
    """Each file read once: hashed, opened as everywhere else in the project (:func:`open_image`: EXIF upright,
    8-bit RGB, bounded size) and preprocessed; an unusable file yields a blank picture and its reason."""

    def __init__(self, files: list[FoundFile], preprocess):
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        file = self.files[i]
        try:
            if file.size > MAX_FILE_BYTES:
                raise ImageError(f"{file.size} bytes, more than the {MAX_FILE_BYTES >> 20} MiB a picture may have")
            digest = hashlib.sha256(file.full.read_bytes()).hexdigest()
            image = open_image(file.full)  # by path, so its errors name the file; the bytes are in the page cache
            return self.preprocess(image), digest, image.width, image.height, ""
        except (ImageError, OSError) as err:
            return blank_pixels(self.preprocess), "", 0, 0, str(err) or type(err).__name__


def model_record(model: RetrievalModel, spec: str) -> ModelRecord:
    return ModelRecord(spec=spec, fingerprint=model.fingerprint(), dim=model.embedding_width())


def check_same_origin(catalog: Catalog, root: Path, record: ModelRecord) -> None:
    """SearchIndexError when the index holds another model's embeddings or another folder's pictures."""
    built_with = catalog.model
    if built_with is not None and built_with.fingerprint != record.fingerprint:
        raise SearchIndexError(f"{catalog.folder} was built with the model {built_with.spec!r} (weights "
                               f"{built_with.fingerprint[:12]}), not {record.spec!r} ({record.fingerprint[:12]}): "
                               "an index holds one model's embeddings; index into another --out")
    if catalog.root is not None and catalog.root != root:
        raise SearchIndexError(f"{catalog.folder} indexes {catalog.root}, not {root}; index into another --out")


def index_folder(images: Path, out: Path, model: RetrievalModel, spec: str, *, batch_size: int = 64,
                 num_workers: int = 2, commit_every: int = 512, progress: bool = True) -> IndexReport:
    """Bring the index at ``out`` up to date with the pictures under ``images`` (see the module docstring)."""
    started = time.perf_counter()
    root = images.resolve()
    record = model_record(model, spec)
    out.mkdir(parents=True, exist_ok=True)
    report = IndexReport()
    with exclusive_lock(out / LOCK_NAME), Catalog(out, create=True) as catalog:
        check_same_origin(catalog, root, record)
        catalog.record_origin(root, record)
        base_generation = catalog.generation if ann_is_current(out, catalog) else None
        found, rows, skipped = scan(root), catalog.rows(), catalog.skipped()
        gone = [path for path in {*rows, *skipped} if path not in found]
        todo = []
        for path, file in found.items():
            row = rows.get(path)
            if row is not None and _unchanged(row, file, catalog):
                report.unchanged += 1
            elif path in skipped and skipped[path][:2] == (file.size, file.mtime_ns):
                report.skipped.append((path, skipped[path][2]))
            else:
                todo.append(file)
        removed_ids = [rows[path].id for path in gone if path in rows] + [rows[f.path].id for f in todo
                                                                            if f.path in rows]
        report.removed = len(removed_ids)
        if gone:
            catalog.forget(gone)
        added_ids = _encode_and_commit(todo, model, catalog, report, batch_size, num_workers, commit_every, progress)
        if added_ids or removed_ids or base_generation is None:
            save_ann(out, catalog, added_ids=added_ids, removed_ids=removed_ids, base_generation=base_generation,
                       progress=progress)
        report.images = len(catalog)
    report.skipped.sort()
    report.seconds = time.perf_counter() - started
    return report


def _unchanged(row: ImageRow, file: FoundFile, catalog: Catalog) -> bool:
    """Same size and time stamp; or a new time stamp on the same bytes (a copy, a touch), kept without encoding."""
    if (row.size, row.mtime_ns) == (file.size, file.mtime_ns):
        return True
    if row.size == file.size and file_sha256(file.full) == row.sha256:
        catalog.touch(row.path, file.size, file.mtime_ns)
        return True
    return False


def _encode_and_commit(todo: list[FoundFile], model: RetrievalModel, catalog: Catalog, report: IndexReport,
                       batch_size: int, num_workers: int, commit_every: int, progress: bool) -> list[int]:
    if not todo:
        return []
    loader = DataLoader(PictureFiles(todo, model.preprocess), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    added_ids, added, skipped = [], [], []
    position = 0

    def commit() -> None:
        added_ids.extend(catalog.commit_batch(added, skipped))
        report.encoded += len(added)
        report.skipped.extend((path, error) for path, _, _, error in skipped)
        added.clear(), skipped.clear()

    with tqdm(total=len(todo), desc="indexing", unit="img", disable=not progress) as bar:
        for pixels, hashes, widths, heights, errors in loader:
            vectors = model.embed_pixels(pixels).numpy()
            for row in range(len(hashes)):
                file = todo[position + row]
                if errors[row]:
                    skipped.append((file.path, file.size, file.mtime_ns, errors[row]))
                else:
                    added.append((file.path, file.size, file.mtime_ns, hashes[row], widths[row], heights[row],
                                  vectors[row]))
            position += len(hashes)
            bar.update(len(hashes))
            if len(added) + len(skipped) >= commit_every:
                commit()
        commit()
    return added_ids


def _collate(items):
    pixels, hashes, widths, heights, errors = zip(*items)
    return torch.stack(pixels), list(hashes), list(widths), list(heights), list(errors)

