"""What the offline worlds (``synth_scenes``, ``emoji_world``) share: a finished-folder marker that makes
a re-run a no-op, sample production in index order from one process or a pool, and the XTD-layout
test split writer (``images/``, ``test_image_names.txt``, ``test_1kcaptions_{lang}.txt``).

Each world describes sample ``i`` of a split as a pure function of (seed, split, i), so the output is
the same for any number of workers.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mclip_hbt.fileio import check_replaceable, parse_json, write_json_atomic
from mclip_hbt.languages import canonical_lang

_WORKER_MAKER: Callable | None = None


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``, refused with the value shown otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every world's command line has, with the same meaning."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--shard-size", type=at_least(1), default=1000,
                        help="training images per tar shard (default: %(default)s)")
    parser.add_argument("--workers", type=at_least(1), default=1,
                        help="drawing processes; the output is the same for any number (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished dataset in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _init_worker(factory: Callable, kwargs: dict) -> None:
    global _WORKER_MAKER
    _WORKER_MAKER = factory(**kwargs)


def _make_in_worker(task: tuple) -> Any:
    return _WORKER_MAKER(*task)


def produce(factory: Callable[..., Callable], kwargs: dict, tasks: Sequence[tuple], workers: int, desc: str,
            progress: bool) -> Iterator[Any]:
    """``factory(**kwargs)(*task)`` for every task, in task order, from this process or a spawn pool.

    ``factory`` must be importable by name (a module-level class or function) for the pool.
    """
    bar = dict(total=len(tasks), desc=desc, unit="img", disable=not progress, file=sys.stderr)
    if workers == 1:
        maker = factory(**kwargs)
        yield from tqdm((maker(*t) for t in tasks), **bar)
        return
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (factory, kwargs)) as pool:
        yield from tqdm(pool.imap(_make_in_worker, tasks, chunksize=64), **bar)


class SettingsMismatch(FileExistsError):
    """The output folder holds a finished dataset made with other settings."""

    def __init__(self, out: Path, what: str, differences: dict[str, tuple]):
        self.out = out
        #: the settings that differ, as "train_samples: 20000 there, 5000 asked"
        self.listed = "; ".join(f"{name}: {there!r} there, {asked!r} asked"
                                for name, (there, asked) in differences.items())
        super().__init__(f"{out} already holds {what} made with other settings ({self.listed}); "
                         "use --overwrite to replace it, or choose another --out")


def parse_profile(spec: str | dict, profiles: dict[str, dict[str, float]],
                  languages: Sequence[str] | None = None) -> tuple[str, dict[str, float]]:
    """A resource profile given as a name of ``profiles``, an inline JSON object or a dict →
    (name, {canonical language: fraction of training images in [0, 1]}).

    ``languages`` limits the codes a world can caption (``None``: any language). Raises ``ValueError``
    with a plain message on unknown names, languages or fractions.
    """
    name = "custom"
    if isinstance(spec, str):
        if spec.lstrip().startswith("{"):
            try:
                spec = parse_json(spec)
            except ValueError as err:
                raise ValueError(f"profile is not valid JSON: {err}") from None
        elif spec in profiles:
            name, spec = spec, profiles[spec]
        else:
            raise ValueError(f"unknown profile {spec!r}; choose from {', '.join(profiles)} or give a JSON object")
    if not isinstance(spec, dict) or not spec:
        raise ValueError("a profile is a non-empty JSON object {language: fraction of training images}")
    fractions: dict[str, float] = {}
    for lang, frac in spec.items():
        code = canonical_lang(lang)
        if languages is not None and code not in languages:
            raise ValueError(f"this world has no captions in {lang!r}; use {', '.join(languages)}")
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac <= 1.0:
            raise ValueError(f"fraction for {lang!r} must be a number in [0, 1], got {frac!r}")
        fractions[code] = float(frac)
    if 1.0 not in fractions.values():
        raise ValueError("every training image needs a caption: give at least one language the fraction 1")
    return name, fractions


def finished_summary(out: Path, marker_name: str, config: dict, overwrite: bool, parts: Iterable[str],
                     what: str) -> dict | None:
    """The summary of a finished ``out`` made with ``config`` (re-run: nothing to do), else ``None``
    after clearing ``parts`` so the run starts from nothing.

    Raises :class:`SettingsMismatch` (before anything is written) when ``out`` was finished with other
    settings and ``overwrite`` is off, and ``OutputError`` when one of ``parts`` exists but no run of this
    recipe started there (the user's own ``train/``, say): only ``--overwrite`` clears that.
    """
    marker, started = out / marker_name, out / f".{marker_name}.started"
    if marker.exists() and not overwrite:
        done = parse_json(marker.read_text(encoding="utf-8"))
        if done["config"] == config:
            return {**done["summary"], "skipped": True}
        raise SettingsMismatch(out, what, {name: (done["config"].get(name), value) for name, value in config.items()
                                           if done["config"].get(name) != value})
    if not (marker.exists() or started.exists()):
        for part in parts:
            check_replaceable(out / part, "--out", lambda folder: False, overwrite=overwrite)
    marker.unlink(missing_ok=True)
    for part in parts:  # an unfinished or replaced run of this recipe starts again from nothing
        shutil.rmtree(out / part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    started.touch()  # from now on the parts are this recipe's to clear
    return None


def mark_finished(out: Path, marker_name: str, config: dict, summary: dict) -> dict:
    """Write the marker last, so only a complete folder counts as finished."""
    write_json_atomic(out / marker_name, {"config": config, "summary": summary})
    return {**summary, "skipped": False}


def write_xtd_split(test_dir: Path, samples: Iterable[tuple[str, bytes, dict[str, str]]], langs: Sequence[str],
                    image_ext: str = "jpg") -> list[str]:
    """Write ``(key, image bytes, {lang: caption})`` samples as an XTD-layout split; return the image names."""
    image_dir = test_dir / "images"
    image_dir.mkdir(parents=True)
    names: list[str] = []
    lines: dict[str, list[str]] = {lang: [] for lang in langs}
    for key, image, captions in samples:
        name = f"{key}.{image_ext}"
        (image_dir / name).write_bytes(image)
        names.append(name)
        for lang in langs:
            lines[lang].append(captions[lang])
    write_xtd_caption_files(test_dir, names, lines)
    return names


def write_xtd_caption_files(test_dir: Path, image_names: Sequence[str], captions: Mapping[str, Sequence[str]]) -> None:
    """The text files of an XTD-layout split: the image names and, per language, one caption per image, line-aligned."""
    for lang, texts in captions.items():
        (test_dir / f"test_1kcaptions_{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (test_dir / "test_image_names.txt").write_text("\n".join(image_names) + "\n", encoding="utf-8")


def distinct_fraction(items: Sequence[Hashable]) -> float:
    """Share of ``items`` that occur exactly once (a caption shared by two test images is ambiguous)."""
    counts = Counter(items)
    return sum(1 for item in items if counts[item] == 1) / max(1, len(items))
