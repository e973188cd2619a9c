"""Benchmark splits as the evaluators use them: image names, captions per language, image files.

Two readers:

- :func:`load_xtd_split` — an XTD-layout folder (real XTD10 or a synthetic split): the folder is
  searched recursively for ``test_image_names.txt`` and ``test_1kcaptions_{lang}.txt`` (``jp`` and
  ``ja`` both accepted), every caption file line-aligned with the names.
- :func:`load_xflickrco` — xFlickr&CO (IGLUE): ``{lang}/test.jsonl``, one JSON line per image with its
  ``img_path`` and one caption, the same 2,000 images in the same order in all 8 languages (1,000
  Multi30K test2016 Flickr30k images, then 1,000 COCO val2014 images).
- :func:`load_multi30k_test2016` — Multi30K test2016: image names from
  ``task1/image_splits/test_2016_flickr.txt``; en/de with five independent captions per image from
  task 2 (``test_2016.{1..5}.{en,de}.gz``) for the image–text settings; en/de/fr/cs with one caption
  per image from task 1 (``test_2016_flickr.{lang}.gz``, translations of one another) for the
  caption-to-caption settings.

Errors in the files (missing, wrong line count, unknown language) raise :class:`BenchmarkDataError`
with a message fit for the command line.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mclip_hbt.data.benchmark_images import MULTI30K_TEST2016_NAMES_FILE, XTD_NAMES_FILE
from mclip_hbt.data.caption_files import CaptionFileError, read_lines
from mclip_hbt.data.images import ImageFinder
from mclip_hbt.languages import XTD_LANGS, canonical_lang

XTD_CAPTION_PREFIX = "test_1kcaptions_"
MULTI30K_LANGS = ("en", "de", "fr", "cs")
#: Multi30K languages with five captions per test image (task 2).
MULTI30K_MULTI_CAPTION_LANGS = ("en", "de")
MULTI30K_CAPTIONS_PER_IMAGE = 5
XFLICKRCO_LANGS = ("en", "de", "es", "id", "ja", "ru", "tr", "zh")
#: COCO's image names start so; xFlickr&CO's other images are Flickr30k's (``<id>.jpg``).
COCO_NAME_PREFIX = "COCO_"
#: Flickr30K-Entities phrase numbers left in xFlickr&CO's Japanese Flickr captions: ASCII digit runs
#: (``3メガネ``); the captions write real numbers in full-width digits (``２人``).
_ENTITY_NUMBERS = re.compile(r"[0-9]+")
#: How many missing image names an error message lists.
SHOW_MISSING = 5


class BenchmarkDataError(ValueError):
    """A benchmark's files cannot be used as given; the message says which and why."""


@dataclass
class RetrievalSplit:
    """Images and their captions, per language.

    ``aligned[lang][i]`` is image ``i``'s caption in ``lang`` (caption-to-caption settings): translations of
    one another in XTD10 and Multi30K task 1, independent descriptions of the image in xFlickr&CO.
    ``captions[lang][i]`` lists every caption of image ``i`` used in the image–text settings (one for XTD10
    and xFlickr&CO, five for Multi30K en/de).
    """

    dataset: str
    image_names: list[str]
    aligned: dict[str, list[str]]
    captions: dict[str, list[list[str]]]

    @property
    def languages(self) -> list[str]:
        return list(self.captions)


def _find_unique(root: Path, filename: str) -> Path | None:
    found = sorted(root.rglob(filename))
    if len(found) > 1:
        raise BenchmarkDataError(f"{root} holds several {filename} files ({', '.join(map(str, found[:3]))}); "
                                 "point at one split")
    return found[0] if found else None


def xtd_caption_files(captions_dir: str | os.PathLike) -> tuple[Path, dict[str, Path]]:
    """The image-name file and every ``test_1kcaptions_{lang}.txt`` below ``captions_dir`` (by canonical code)."""
    root = Path(captions_dir)
    if not root.is_dir():
        raise BenchmarkDataError(f"captions folder {root} does not exist")
    names = _find_unique(root, XTD_NAMES_FILE)
    if names is None:
        raise BenchmarkDataError(f"no {XTD_NAMES_FILE} under {root}; expected an XTD-layout split")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob(f"{XTD_CAPTION_PREFIX}*.txt")):
        code = path.stem[len(XTD_CAPTION_PREFIX):]
        try:
            lang = canonical_lang(code)
        except ValueError:
            continue  # not a caption file of a language we know; listed nowhere, used nowhere
        if lang in files:
            raise BenchmarkDataError(f"two caption files for {lang}: {files[lang]} and {path}")
        files[lang] = path
    # XTD order first, then any other language in name order.
    order = [lang for lang in XTD_LANGS if lang in files] + sorted(set(files) - set(XTD_LANGS))
    return names, {lang: files[lang] for lang in order}


def available_xtd_languages(captions_dir: str | os.PathLike) -> list[str]:
    return list(xtd_caption_files(captions_dir)[1])


def _read(path: Path) -> list[str]:
    try:
        return read_lines(path)
    except CaptionFileError as e:
        raise BenchmarkDataError(str(e)) from e


def _check_length(path: Path, lines: list[str], expected: int, names_file: Path) -> None:
    if len(lines) != expected:
        raise BenchmarkDataError(f"{path} has {len(lines)} captions but {names_file} names {expected} images; "
                                 "caption files must be line-aligned with the image names")


def load_xtd_split(captions_dir: str | os.PathLike, langs: list[str], dataset: str = "xtd10") -> RetrievalSplit:
    """Read an XTD-layout split for ``langs`` (canonical codes), checking every file's line count."""
    names_file, files = xtd_caption_files(captions_dir)
    missing = [lang for lang in langs if lang not in files]
    if missing:
        raise BenchmarkDataError(f"no caption file for {', '.join(missing)} under {captions_dir} "
                                 f"(found: {', '.join(files) or 'none'})")
    names = [n.strip() for n in _read(names_file)]
    aligned = {}
    for lang in langs:
        lines = _read(files[lang])
        _check_length(files[lang], lines, len(names), names_file)
        aligned[lang] = lines
    return RetrievalSplit(dataset, names, aligned, {lang: [[c] for c in caps] for lang, caps in aligned.items()})


def _benchmark_folder(root: str | os.PathLike, benchmark: str, langs: list[str], known: tuple[str, ...]) -> Path:
    """``root`` as a Path, once it is a folder and ``langs`` are languages the benchmark has."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkDataError(f"{benchmark} folder {root} does not exist")
    unknown = [lang for lang in langs if lang not in known]
    if unknown:
        raise BenchmarkDataError(f"{benchmark} has no {', '.join(unknown)} captions (languages: {', '.join(known)})")
    return root


def strip_entity_numbers(caption: str) -> str:
    """A Japanese xFlickr&CO Flickr caption without its Flickr30K-Entities phrase numbers."""
    return _ENTITY_NUMBERS.sub("", caption)


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = read_lines(path)
    except CaptionFileError as e:
        raise BenchmarkDataError(str(e)) from e
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            sentences, image = row["sentences"], row["img_path"]
            if not (isinstance(sentences, list) and sentences and all(isinstance(x, str) for x in sentences)
                    and isinstance(image, str)):
                raise TypeError("sentences must be a non-empty list of strings and img_path a string")
        except (ValueError, KeyError, TypeError) as e:
            raise BenchmarkDataError(f"{path}:{number}: not an xFlickr&CO record ({type(e).__name__}: {e})") from e
        rows.append(row)
    return rows


def load_xflickrco(root: str | os.PathLike, langs: list[str]) -> RetrievalSplit:
    """Read xFlickr&CO for ``langs`` from ``root/{lang}/test.jsonl`` (IGLUE's annotation layout), checking that
    every language lists the same images in the same order. Japanese Flickr captions lose their entity numbers."""
    root = _benchmark_folder(root, "xFlickr&CO", langs, XFLICKRCO_LANGS)
    names: list[str] | None = None
    aligned = {}
    for lang in langs:
        path = root / lang / "test.jsonl"
        if not path.is_file():
            raise BenchmarkDataError(f"no {path}; expected IGLUE's datasets/xFlickrCO/annotations layout")
        rows = _read_jsonl(path)
        images = [row["img_path"] for row in rows]
        if names is None:
            names = images
        elif images != names:
            raise BenchmarkDataError(f"{path} does not list the same images in the same order as "
                                     f"{root / langs[0] / 'test.jsonl'}")
        aligned[lang] = [strip_entity_numbers(row["sentences"][0])
                         if lang == "ja" and not row["img_path"].startswith(COCO_NAME_PREFIX) else row["sentences"][0]
                         for row in rows]
    captions = {lang: [[c] for c in caps] for lang, caps in aligned.items()}
    return RetrievalSplit("xflickrco", names or [], aligned, captions)


def load_multi30k_test2016(root: str | os.PathLike, langs: list[str]) -> RetrievalSplit:
    """Read Multi30K test2016 for ``langs`` (a subset of en, de, fr, cs) from a checkout of multi30k/dataset."""
    root = _benchmark_folder(root, "Multi30K test2016", langs, MULTI30K_LANGS)

    def need(filename: str) -> Path:
        path = _find_unique(root, filename)
        if path is None:
            raise BenchmarkDataError(f"no {filename} under {root}; expected the multi30k/dataset layout")
        return path

    names_file = need(MULTI30K_TEST2016_NAMES_FILE)
    names = [n.strip() for n in _read(names_file)]

    def caption_lines(filename: str) -> list[str]:
        path = need(filename)
        lines = _read(path)
        _check_length(path, lines, len(names), names_file)
        return lines

    aligned, captions = {}, {}
    for lang in langs:
        aligned[lang] = caption_lines(f"test_2016_flickr.{lang}.gz")
        if lang in MULTI30K_MULTI_CAPTION_LANGS:
            per_file = [caption_lines(f"test_2016.{i}.{lang}.gz") for i in range(1, MULTI30K_CAPTIONS_PER_IMAGE + 1)]
            captions[lang] = [list(caps) for caps in zip(*per_file)]
        else:
            captions[lang] = [[c] for c in aligned[lang]]
    return RetrievalSplit("multi30k", names, aligned, captions)


def find_images(images_dir: str | os.PathLike, names: list[str]) -> list[Path]:
    """The file of every image name under ``images_dir`` (directly or in any subfolder, e.g. COCO's
    ``train2014/``/``val2014/`` or ``images/``); raises with the count and the first few missing names."""
    root = Path(images_dir)
    if not root.is_dir():
        raise BenchmarkDataError(f"images folder {root} does not exist")
    finder = ImageFinder(root)
    found = [finder.find(name) for name in names]
    missing = [name for name, path in zip(names, found) if path is None]
    if missing:
        raise BenchmarkDataError(f"{len(missing)} of {len(names)} images are missing under {root}, e.g. "
                                 f"{', '.join(missing[:SHOW_MISSING])}")
    return found
