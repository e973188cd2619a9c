"""The project's shard format, written in one place.

Per sample: ``KEY.<jpg|png|webp>`` (image bytes), ``KEY.json`` =
``{"captions": {lang: [...]}, "mt": [langs machine-translated], "source": str}`` and ``KEY.txt``
(the first English caption, else the first caption, so open_clip's own loader and img2dataset-style
tools read every sample). Beside the shards:
``sizes.json`` (open_clip's convention: shard file name → sample count) and ``dataset.json``
(sample count and, per language, samples and captions).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import webdataset as wds

from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import canonical_lang

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
#: The files beside the shards that describe a finished set; a folder without them is unfinished.
STATS_FILES = ("sizes.json", "dataset.json")
#: A recipe's list of the inputs it skipped and why, beside the shards it wrote.
SKIPPED_FILE = "skipped.jsonl"


def sample_record(captions: dict[str, list[str]], mt: list[str] | tuple[str, ...] = (), source: str = "") -> dict:
    """The ``KEY.json`` payload, with canonical language codes and empty caption lists dropped."""
    caps: dict[str, list[str]] = {}
    for lang, texts in captions.items():
        texts = [t for t in texts if t and t.strip()]
        if texts:
            caps.setdefault(canonical_lang(lang), []).extend(texts)
    mt_langs = sorted({canonical_lang(m) for m in mt} & caps.keys())
    return {"captions": caps, "mt": mt_langs, "source": source}


class ShardSample(NamedTuple):
    """One sample read back from a shard."""
    key: str
    image: bytes
    image_ext: str
    record: dict  # the KEY.json payload: {"captions": ..., "mt": ..., "source": ...}


def iter_shard(path: str | os.PathLike) -> Iterator[ShardSample]:
    """The samples of one shard file, in stored order."""
    # A bare pipeline, not wds.WebDataset: its options differ between webdataset 0.2 and 1.x (empty_check).
    for sample in wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()):
        ext = next(e for e in IMAGE_EXTS if e in sample)
        yield ShardSample(sample["__key__"], sample[ext], ext, json.loads(sample["json"]))


def is_shard_folder(folder: Path) -> bool:
    """A folder a shard writer made: its statistics, or only shards (whole or in progress) and a recipe's skip
    report: what an interrupted run leaves, since the old statistics go before the first new shard."""
    names = [p.name for p in folder.iterdir()]
    return any(name in STATS_FILES for name in names) or all(
        name.endswith((".tar", ".tar.tmp")) or name == SKIPPED_FILE for name in names)


class CaptionShardWriter:
    """Write samples into ``{prefix}-NNNNNN.tar`` shards of ``max_count`` samples, then the stats files.

    Each shard is written to a temporary name and renamed when complete, so an interrupted run
    leaves only whole shards behind. A folder's old ``sizes.json`` and ``dataset.json`` are deleted
    before the first new shard is written, so an interrupted re-run never leaves a folder that looks
    finished (old and new shards under the old counts), and :meth:`close` removes stale shards.
    A recipe that keeps one output shard per input shard writes with a large ``max_count``, calls
    :meth:`end_shard` after each input shard and, on a restart, :meth:`adopt_existing_shard` for
    the shards an earlier run completed.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "shard", max_count: int = 1000, start_index: int = 0):
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_count = max_count
        self.shard_index = start_index
        self.sizes: dict[str, int] = {}
        self.lang_samples: Counter[str] = Counter()
        self.lang_captions: Counter[str] = Counter()
        self.mt_captions: Counter[str] = Counter()
        self.mt_samples: Counter[str] = Counter()
        self.num_samples = 0
        self._tar: wds.TarWriter | None = None
        self._tar_tmp: Path | None = None
        self._tar_count = 0
        self._old_stats_removed = False
        self._stats: dict | None = None  # set by close()

    def shard_path(self, index: int) -> Path:
        """Where shard number ``index`` is (or will be) written."""
        return self.out_dir / f"{self.prefix}-{index:06d}.tar"

    def _open_next(self) -> None:
        if not self._old_stats_removed:
            for name in STATS_FILES:
                (self.out_dir / name).unlink(missing_ok=True)
            self._old_stats_removed = True
        final = self.shard_path(self.shard_index)
        self._tar_tmp = final.with_name(final.name + ".tmp")
        self._tar = wds.TarWriter(str(self._tar_tmp))
        self._tar_count = 0

    def _close_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = self._tar_tmp.with_suffix("")  # drop ".tmp"
        os.replace(self._tar_tmp, final)
        self.sizes[final.name] = self._tar_count
        self.shard_index += 1
        self._tar = None

    def write(self, key: str, image: bytes, image_ext: str, captions: dict[str, list[str]],
              mt: list[str] | tuple[str, ...] = (), source: str = "") -> None:
        ext = image_ext.lower().lstrip(".")
        if ext not in IMAGE_EXTS:
            raise ValueError(f"unsupported image extension {image_ext!r}; use one of {IMAGE_EXTS}")
        record = sample_record(captions, mt, source)
        if self._tar is None:
            self._open_next()
        sample = {"__key__": key, ext: image, "json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
        if record["captions"]:  # English when there is some, else the first caption: every sample has its KEY.txt
            first = record["captions"].get("en") or next(iter(record["captions"].values()))
            sample["txt"] = first[0].encode("utf-8")
        self._tar.write(sample)
        self._tar_count += 1
        self._count(record)
        if self._tar_count >= self.max_count:
            self._close_current()

    def _count(self, record: dict) -> None:
        self.num_samples += 1
        for lang, texts in record["captions"].items():
            self.lang_samples[lang] += 1
            self.lang_captions[lang] += len(texts)
        for lang in record["mt"]:
            self.mt_captions[lang] += len(record["captions"][lang])
            self.mt_samples[lang] += 1

    def end_shard(self) -> None:
        """Finish the current shard now (an empty one if nothing was written since the last), so
        output shard ``i`` always corresponds to the caller's input shard ``i``."""
        if self._tar is None:
            self._open_next()
        self._close_current()

    def adopt_existing_shard(self) -> list[dict] | None:
        """If the next shard is already complete on disk (left by an interrupted run), count it into
        the stats, move past it and return its sample records; otherwise return ``None``."""
        if self._tar is not None:
            raise RuntimeError("adopt_existing_shard() called in the middle of a shard")
        path = self.shard_path(self.shard_index)
        if not path.is_file():
            return None
        records = [sample.record for sample in iter_shard(path)]
        for record in records:
            self._count(record)
        self.sizes[path.name] = len(records)
        self.shard_index += 1
        return records

    def close(self, extra: dict | None = None, *, complete: bool = True) -> dict:
        """Finish the last shard, remove stale shards and write ``sizes.json`` and ``dataset.json``;
        return the latter.

        Stale shards are half-written ones (``.tar.tmp``, left by a killed run) and, when the set is
        ``complete``, this prefix's shards numbered past the ones written (left by a larger earlier
        set); a recipe that stops early to continue later passes ``complete=False`` to keep them.
        Closing again (as leaving a ``with`` block after an explicit ``close(extra)`` does) changes
        nothing and returns the same dict.
        """
        if self._stats is not None:
            return self._stats
        self._close_current()
        self._remove_stale_shards(beyond_count=complete)
        stats = dataset_stats(self.num_samples, self.lang_samples, self.lang_captions, self.mt_captions,
                              self.mt_samples, self.sizes)
        if extra:
            stats.update(extra)
        write_json_atomic(self.out_dir / "sizes.json", self.sizes)
        write_json_atomic(self.out_dir / "dataset.json", stats)
        self._stats = stats
        return stats

    def _remove_stale_shards(self, beyond_count: bool) -> None:
        name = re.compile(rf"{re.escape(self.prefix)}-(\d{{6,}})\.tar(\.tmp)?")
        for path in self.out_dir.iterdir():
            match = name.fullmatch(path.name)
            if match and (match[2] or (beyond_count and int(match[1]) >= self.shard_index)):
                path.unlink()

    def __enter__(self) -> "CaptionShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._tar is not None:  # leave no half shard behind
            self._tar.close()
            self._tar_tmp.unlink(missing_ok=True)


def dataset_stats(num_samples: int, lang_samples: Counter, lang_captions: Counter, mt_captions: Counter,
                  mt_samples: Counter, sizes: dict[str, int]) -> dict:
    """``dataset.json``: per language, the samples and captions it has, and how many of them are machine
    translations (a sample's language is either all human or all machine-translated)."""
    langs = sorted(lang_samples)
    return {
        "num_samples": num_samples,
        "num_shards": len(sizes),
        "languages": {
            lang: {"samples": lang_samples[lang], "captions": lang_captions[lang],
                   "mt_captions": mt_captions.get(lang, 0), "mt_samples": mt_samples.get(lang, 0)}
            for lang in langs
        },
    }
