"""The test images of the benchmarks this project evaluates, so that no run trains on them unawares.

800 of XTD10's 1,000 images are COCO *train2014* images, and xFlickr&CO and Multi30K test2016 are
Flickr30k and COCO val2014 images that COCO 2017's train split holds again: shards built from those
collections contain test images unless something removes them. The lists are read from the user's
own benchmark files (nothing is copied into the project):

- ``xtd10``: ``test_image_names.txt`` under ``ROOT/xtd10``;
- ``xflickrco``: the ``img_path`` of ``ROOT/xflickrco/{lang}/test.jsonl`` (IGLUE's annotations);
- ``multi30k-test2016``: ``test_2016_flickr.txt`` under ``ROOT/multi30k``.

Images are compared by what they are, not by how a file or a shard key spells them: COCO images by
their numeric id (``COCO_train2014_000000061844.jpg``, COCO 2017's ``000000061844.jpg`` and a shard key
``train2014_COCO_train2014_000000061844`` are one image), Flickr30k images by their Flickr id (a file
or key whose last part is a number without leading zeros, ``1007129816.jpg``).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mclip_hbt.paths import shared_data_dir

#: The XTD-layout file that names a split's images, line-aligned with its caption files.
XTD_NAMES_FILE = "test_image_names.txt"
#: Multi30K's list of the Flickr30k images of test2016.
MULTI30K_TEST2016_NAMES_FILE = "test_2016_flickr.txt"

_COCO_2014 = re.compile(r"COCO_(?:train|val|test)20\d\d_(\d{12})")
_COCO_2017 = re.compile(r"(?:^|[/_])(\d{12})$")
#: Flickr30k ids have 4 to 10 digits and no leading zero; zero-padded counters (``0010000``) are not ids.
_FLICKR = re.compile(r"(?:^|[/_])([1-9]\d{3,10})$")
_EXTENSION = re.compile(r"\.[A-Za-z]{3,4}$")
#: How many image names a warning or a summary lists by name.
SHOW = 5


def image_id(name: str) -> str | None:
    """``coco:<id>`` or ``flickr30k:<id>`` for a COCO or Flickr30k file name or shard key; None otherwise."""
    match = _COCO_2014.search(name)
    if match:
        return f"coco:{int(match.group(1))}"
    stem = _EXTENSION.sub("", name)
    match = _COCO_2017.search(stem)
    if match:
        return f"coco:{int(match.group(1))}"
    match = _FLICKR.search(stem)
    return f"flickr30k:{int(match.group(1))}" if match else None


def _unique(root: Path, filename: str) -> Path:
    found = sorted(root.rglob(filename)) if root.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(f"no {filename} under {root}" if not found else
                                f"{len(found)} {filename} files under {root}")
    return found[0]


def _xtd10(root: Path) -> list[str]:
    return _unique(root / "xtd10", XTD_NAMES_FILE).read_text(encoding="utf-8").split()


def _xflickrco(root: Path) -> list[str]:
    files = sorted((root / "xflickrco").glob("*/test.jsonl"))
    if not files:
        raise FileNotFoundError(f"no {root / 'xflickrco'}/LANG/test.jsonl")
    with open(files[0], encoding="utf-8") as f:
        return [json.loads(line)["img_path"] for line in f if line.strip()]


def _multi30k(root: Path) -> list[str]:
    return _unique(root / "multi30k", MULTI30K_TEST2016_NAMES_FILE).read_text(encoding="utf-8").split()


_READERS = {"xtd10": _xtd10, "xflickrco": _xflickrco, "multi30k-test2016": _multi30k}
BENCHMARKS = tuple(_READERS)


@dataclass
class BenchmarkImages:
    """Every benchmark's test images by id (``names[benchmark][id]`` = the benchmark's own file name), and
    why a benchmark could not be read (its images then cannot be recognised)."""

    root: str
    names: dict[str, dict[str, str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def benchmarks_of(self, name: str) -> list[str]:
        """The benchmarks whose test images include the image ``name`` (a file name or a shard key)."""
        found = image_id(name)
        return [b for b, ids in self.names.items() if found in ids] if found else []

    def describe(self) -> dict:
        """What was checked: ``{"root", "checked": {benchmark: n images}, "not_checked": {benchmark: why}}``."""
        return {"root": self.root, "checked": {b: len(ids) for b, ids in self.names.items()},
                "not_checked": dict(self.unavailable)}

    def warning(self) -> str | None:
        """One line naming the benchmarks whose images cannot be recognised, or None when all were read."""
        if not self.unavailable:
            return None
        missing = "; ".join(f"{b} ({why})" for b, why in self.unavailable.items())
        return (f"cannot recognise the test images of {missing}"
                " — point --benchmark-data at a folder holding xtd10/, xflickrco/ and multi30k/")


def read_benchmark_images(root: str | os.PathLike | None = None) -> BenchmarkImages:
    """The test image lists under ``root`` (default: ``shared_data_dir()``, where the evaluators read the
    benchmarks); a benchmark whose files are missing or unreadable is listed in ``unavailable`` with the
    reason, never an error (a user may hold only some benchmarks)."""
    root = Path(root) if root is not None else shared_data_dir()
    found = BenchmarkImages(str(root))
    for benchmark, read in _READERS.items():
        try:
            names = read(root)
        except (OSError, ValueError, KeyError, TypeError) as err:
            found.unavailable[benchmark] = str(err) if isinstance(err, FileNotFoundError) else \
                f"unreadable ({type(err).__name__}: {err})"
            continue
        found.names[benchmark] = {i: n for n in names if (i := image_id(n)) is not None}
    return found


class BenchmarkSightings:
    """The benchmark test images a training run has drawn, by id; its state is a checkpoint's plain data."""

    def __init__(self, benchmarks: BenchmarkImages):
        self.benchmarks = benchmarks
        self._known = {i for ids in benchmarks.names.values() for i in ids}
        self.seen: set[str] = set()

    def observe(self, keys: Iterable[str]) -> None:
        for key in keys:
            found = image_id(key)
            if found in self._known:
                self.seen.add(found)

    def state_dict(self) -> dict:
        return {"seen": sorted(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        self.seen = set(state["seen"])

    def summary(self, seen: Iterable[str]) -> dict:
        """``describe()`` plus ``trained_on``: per benchmark, the sorted names of its images among ``seen``
        (the ids of every process together)."""
        seen = set(seen)
        return {**self.benchmarks.describe(),
                "trained_on": {b: sorted(n for i, n in ids.items() if i in seen)
                               for b, ids in self.benchmarks.names.items()}}


def overlap(test_images: Iterable[str], benchmark: str, train_record: dict | None) -> dict:
    """How many of ``test_images`` (the images of ``benchmark``, one of ``BENCHMARKS``) a model trained on,
    from the ``benchmark_images`` record of its ``train_meta.json`` (``BenchmarkSightings.summary``).

    Returns ``{"known", "test_images", "trained_on", "examples", "note"}``; ``known`` is False when the record
    cannot tell: there is none (a model not trained here), or training could not read ``benchmark``'s list
    (``trained_on`` then counts only the images other checked benchmarks share with it).
    """
    test_images = list(test_images)
    ids = {i: n for n in test_images if (i := image_id(n)) is not None}
    result = {"known": False, "test_images": len(test_images), "trained_on": None, "examples": [], "note": ""}
    if not ids:
        return {**result, "known": True, "trained_on": 0, "note": "no COCO or Flickr30k image in this split"}
    if train_record is None:
        return {**result, "note": "no record of the training images (a model not trained by mclip_hbt, or trained "
                                  "by a version before the record)"}
    seen = {image_id(n) for names in train_record.get("trained_on", {}).values() for n in names}
    hits = sorted(n for i, n in ids.items() if i in seen)
    result.update(trained_on=len(hits), examples=hits[:SHOW], known=benchmark in train_record.get("checked", {}))
    if not result["known"]:
        why = train_record.get("not_checked", {}).get(benchmark, "not among the benchmarks it checked")
        result["note"] = f"training could not check {benchmark} ({why}); the count covers only images other " \
                         "benchmarks share with it"
    return result
