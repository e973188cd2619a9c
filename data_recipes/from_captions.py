"""Build caption shards from an image folder and captions in JSONL, TSV/CSV or line-aligned files.

    python -m data_recipes.from_captions --images COCO/ --out shards/xtd10 \\
        --image-list xtd10/XTD10/test_image_names.txt \\
        --captions en=xtd10/XTD10/test_1kcaptions_en.txt --captions de=xtd10/MIC/test_1kcaptions_de.txt

Captions are stored exactly as read, less their line terminators (see ``caption_files``). Images
are opened as training opens them (``mclip_hbt.data.images.open_image``) and re-encoded in a process pool,
in input order. A JSONL line that is not a caption record, an image name outside ``--images``, a
missing or an unreadable image skips its sample; every skip is listed in ``OUT/skipped.jsonl`` and
counted in ``OUT/dataset.json``.

The test images of XTD10, xFlickr&CO and Multi30K test2016 (``mclip_hbt.data.benchmark_images``, read from
``--benchmark-data``) are skipped too, unless ``--allow-benchmark-images``: a model trained on them scores
those benchmarks on images it has seen.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import re
import sys
from collections import Counter
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from tqdm import tqdm

from mclip_hbt.data.benchmark_images import BenchmarkImages, read_benchmark_images
from mclip_hbt.data.caption_files import CaptionFileError, read_aligned_captions
from mclip_hbt.data.images import PIL_FORMATS, ImageFinder, encode_image
from mclip_hbt.data.shards import SKIPPED_FILE, CaptionShardWriter, is_shard_folder
from mclip_hbt.fileio import OutputError, check_output_dir, check_replaceable, parse_json, write_text_atomic
from mclip_hbt.languages import canonical_lang, parse_lang_list

#: One input sample: image name, captions per language, machine-translated languages.
Entry = tuple[str, dict[str, list[str]], set[str]]


def _merge(entries: dict[str, Entry], image: str, captions: dict[str, list[str]], mt: set[str]) -> None:
    """Add captions to the entry for ``image``, so repeated images become one sample."""
    _, caps, mts = entries.setdefault(image, (image, {}, set()))
    for lang, texts in captions.items():
        caps.setdefault(lang, []).extend(texts)
    mts |= mt


def read_jsonl(path: str | os.PathLike) -> tuple[list[Entry], list[dict]]:
    """``{"image": "rel/path.jpg", "captions": {lang: [..] or ".."}, "mt": [langs]}`` per line.

    Returns the entries and a skip report (``skipped.jsonl`` line) for each line that is not such a
    record, so one bad line costs its sample, not the run.
    """
    entries: dict[str, Entry] = {}
    bad_lines: list[dict] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = parse_json(line)
                image, raw = obj["image"], obj["captions"]
                captions = {canonical_lang(lang): [texts] if isinstance(texts, str) else list(texts)
                            for lang, texts in raw.items()}
                mt = {canonical_lang(lang) for lang in obj.get("mt", [])}
                if not isinstance(image, str) or not all(isinstance(t, str) for ts in captions.values() for t in ts):
                    raise ValueError("image and captions must be strings")
                # valid JSON can hold lone surrogates ("\ud800"), which no UTF-8 file or tokenizer takes
                "".join([image, *(t for ts in captions.values() for t in ts)]).encode("utf-8")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                bad_lines.append({"line": where, "reason": "bad record", "detail": f"{type(e).__name__}: {e}"})
                continue
            _merge(entries, image, captions, mt)
    return list(entries.values()), bad_lines


def read_table(path: str | os.PathLike, image_column: str) -> list[Entry]:
    """A TSV (``.tsv``/``.tab``: tab-separated, no quoting) or CSV (quoted as usual) file whose header
    names an image column and one column per language; one caption per cell, empty cells ignored,
    rows repeating an image add captions to it."""
    is_tsv = Path(path).suffix.lower() in (".tsv", ".tab")
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if is_tsv else {}
    entries: dict[str, Entry] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, **dialect)
        header = next(reader, None)
        if not header or image_column not in header:
            raise CaptionFileError(f"{path}: the header has no {image_column!r} column (see --image-column)")
        image_at = header.index(image_column)
        try:
            langs = {i: canonical_lang(name) for i, name in enumerate(header) if i != image_at}
        except ValueError as e:
            raise CaptionFileError(f"{path}: header column is not a language: {e}") from e
        try:
            for row in reader:
                if not any(row):
                    continue
                if len(row) != len(header):
                    raise CaptionFileError(f"{path}:{reader.line_num}: {len(row)} cells, the header has {len(header)}")
                captions: dict[str, list[str]] = {}
                for i, lang in langs.items():
                    if row[i]:
                        captions.setdefault(lang, []).append(row[i])
                _merge(entries, row[image_at], captions, set())
        except csv.Error as e:
            raise CaptionFileError(f"{path}:{reader.line_num}: {e}") from e
    return list(entries.values())


def sample_key(image: str, used: set[str]) -> str:
    """A webdataset key from the image name: path and extension dots become ``_`` (webdataset splits
    keys at the first dot), and a clash gets a numeric suffix."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", str(Path(image).with_suffix("")))
    key, n = stem, 1
    while key in used:
        n += 1
        key = f"{stem}_{n}"
    used.add(key)
    return key


def _encode_job(job: tuple[int, str], max_side: int, fmt: str, quality: int) -> tuple[int, bytes | None, str]:
    """Pool worker: re-encode one image; a failure comes back as text, never as an exception."""
    index, path = job
    try:
        return index, encode_image(path, max_side, fmt, quality), ""
    except Exception as e:  # an unusable image (ImageError) or one Pillow cannot encode only skips this image
        return index, None, f"{type(e).__name__}: {e}"


def build_shards(entries: list[Entry], images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 shard_size: int = 1000, max_side: int = 512, fmt: str = "jpg", quality: int = 90,
                 source: str = "", mt: set[str] = frozenset(), workers: int = 1, prefix: str = "shard",
                 bad_lines: list[dict] = (), benchmarks: BenchmarkImages | None = None,
                 allow_benchmark_images: bool = False) -> dict:
    """Write ``entries`` as shards; return the dataset.json contents (with ``skipped`` counts by reason).

    ``bad_lines``: skip reports of input lines that gave no entry (``read_jsonl``), listed first.
    ``benchmarks``: test images to recognise; they are skipped, or kept with ``allow_benchmark_images``,
    and counted either way in ``benchmark_images`` (kept ones by name).
    """
    out_dir = Path(out_dir)
    finder = ImageFinder(images_dir)
    skipped: list[tuple[int, dict]] = [(-1, line) for line in bad_lines]  # (input position, report line)
    jobs: list[tuple[int, str]] = []
    benchmark_hits: dict[str, dict[str, list[str]]] = {"skipped": {}, "kept": {}}  # what → benchmark → images
    for index, (image, captions, _) in enumerate(entries):
        if not any(t.strip() for texts in captions.values() for t in texts):
            skipped.append((index, {"image": image, "reason": "no captions"}))
            continue
        held_in = benchmarks.benchmarks_of(image) if benchmarks else []
        for benchmark in held_in:
            benchmark_hits["kept" if allow_benchmark_images else "skipped"].setdefault(benchmark, []).append(image)
        if held_in and not allow_benchmark_images:
            skipped.append((index, {"image": image, "reason": "benchmark image",
                                    "detail": f"a test image of {', '.join(held_in)} (--allow-benchmark-images "
                                              "keeps it)"}))
            continue
        if finder.escapes(image):
            skipped.append((index, {"image": image, "reason": "outside images",
                                    "detail": f"the name leads outside --images {images_dir}"}))
            continue
        path = finder.find(image)
        if path is None:
            skipped.append((index, {"image": image, "reason": "missing", "detail": f"not found under {images_dir}"}))
            continue
        jobs.append((index, str(path)))

    encode = partial(_encode_job, max_side=max_side, fmt=fmt, quality=quality)
    used_keys: set[str] = set()
    with multiprocessing.Pool(workers) if workers > 1 else nullcontext() as pool:
        results = pool.imap(encode, jobs, chunksize=16) if pool else map(encode, jobs)
        with CaptionShardWriter(out_dir, prefix=prefix, max_count=shard_size) as writer:
            for index, data, error in tqdm(results, total=len(jobs), unit="image", desc="encoding"):
                image, captions, entry_mt = entries[index]
                if data is None:
                    skipped.append((index, {"image": image, "reason": "unreadable", "detail": error}))
                    continue
                writer.write(sample_key(image, used_keys), data, fmt, captions, mt=sorted(entry_mt | mt), source=source)
            reasons = Counter(s["reason"] for _, s in skipped)
            checked = benchmarks.describe() if benchmarks else {"checked": {}, "not_checked": {}}
            stats = writer.close({"source": source, "skipped": dict(sorted(reasons.items())), "benchmark_images": {
                **checked, "allowed": allow_benchmark_images,
                **{what: {b: len(names) for b, names in sorted(hits.items())} for what, hits in benchmark_hits.items()},
                "kept_images": dict(sorted(benchmark_hits["kept"].items()))}})
    write_text_atomic(out_dir / SKIPPED_FILE, "".join(json.dumps(s, ensure_ascii=False) + "\n"
                                                         for _, s in sorted(skipped, key=lambda x: x[0])))
    return stats


def parse_captions_arg(values: list[str], parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """``["en=a.txt", "de=b.txt", "de=c.txt"]`` → ``{"en": ["a.txt"], "de": ["b.txt", "c.txt"]}``."""
    files: dict[str, list[str]] = {}
    for value in values:
        lang, sep, file = value.partition("=")
        if not sep or not file:
            parser.error(f"--captions expects LANG=FILE, got {value!r}")
        try:
            files.setdefault(canonical_lang(lang), []).append(file)
        except ValueError as e:
            parser.error(f"--captions {value}: {e}")
        if not Path(file).is_file():
            parser.error(f"--captions {value}: no such file")
    return files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_recipes.from_captions", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("captions (give exactly one of --jsonl, --table, --image-list)")
    src.add_argument("--jsonl",
                     help='JSONL file: {"image": "rel/path.jpg", "captions": {lang: [...] or "..."}, "mt": [...]} '
                          'per line')
    src.add_argument("--table", help="TSV (.tsv/.tab) or CSV file with an image column and one column per language")
    src.add_argument("--image-column", default="image",
                     help="name of the image column in --table (default: %(default)s)")
    src.add_argument("--image-list", help="file with one image name per line, line-aligned with the --captions files")
    src.add_argument("--captions", action="append", default=[], metavar="LANG=FILE",
                     help="line-aligned caption file (.gz allowed) for --image-list; repeat a language for several "
                          "captions per image")
    src.add_argument("--mt", default="", help="comma-separated languages whose captions are machine-translated")
    p.add_argument("--images", required=True,
                   help="image folder; names are looked up as relative paths, then by file name anywhere below")
    p.add_argument("--out", required=True,
                   help="output folder for the shards, sizes.json, dataset.json and skipped.jsonl")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even though it holds files that are not a shard set")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: %(default)s)")
    p.add_argument("--max-side", type=int, default=512,
                   help="shrink images whose longest side is larger (0: keep size; never enlarges) "
                        "(default: %(default)s)")
    p.add_argument("--format", default="jpg", choices=sorted(PIL_FORMATS),
                   help="image format in the shards (default: %(default)s)")
    p.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (1-100) (default: %(default)s)")
    p.add_argument("--source", default=None,
                   help="source name stored with every sample (default: the captions file's name)")
    p.add_argument("--benchmark-data", type=Path, default=None,
                   help="folder holding the benchmarks' files (xtd10/, xflickrco/, multi30k/) whose test images are "
                        "skipped (default: $MCLIP_HBT_DATA or ../shared/data)")
    p.add_argument("--allow-benchmark-images", action="store_true",
                   help="keep the benchmarks' test images (still counted in dataset.json): a model trained on "
                        "them is flagged by the evaluators")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="image encoding processes (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [name for name in ("jsonl", "table", "image_list") if getattr(args, name)]
    if len(given) != 1:
        parser.error("give exactly one of --jsonl, --table, --image-list")
    if args.image_list and not args.captions:
        parser.error("--image-list needs at least one --captions LANG=FILE")
    if args.captions and not args.image_list:
        parser.error("--captions goes with --image-list")
    input_file = getattr(args, given[0])
    if not Path(input_file).is_file():
        parser.error(f"--{given[0].replace('_', '-')}: no such file: {input_file}")
    if not Path(args.images).is_dir():
        parser.error(f"--images: not a folder: {args.images}")
    for name, low in (("shard_size", 1), ("max_side", 0), ("workers", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}")
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be between 1 and 100")
    try:
        mt = set(parse_lang_list(args.mt)) if args.mt else set()
    except ValueError as e:
        parser.error(f"--mt: {e}")

    bad_lines: list[dict] = []
    try:
        if args.jsonl:
            entries, bad_lines = read_jsonl(args.jsonl)
        elif args.table:
            entries = read_table(args.table, args.image_column)
        else:
            aligned = read_aligned_captions(args.image_list, parse_captions_arg(args.captions, parser))
            entries = [(image, captions, set()) for image, captions in aligned]
    except CaptionFileError as e:
        parser.error(str(e))
    except UnicodeDecodeError as e:
        parser.error(f"{input_file} is not UTF-8 text: {e}")
    if not entries:
        parser.error(f"no captions found in {input_file}" + (
            f"; {len(bad_lines)} lines are not caption records, e.g. {bad_lines[0]['line']}: {bad_lines[0]['detail']} "
            '(expected {"image": ..., "captions": {lang: [...]}, "mt": [...]} per line)' if bad_lines else ""))
    try:
        check_replaceable(args.out, "--out", is_shard_folder, overwrite=args.overwrite)
        check_output_dir(args.out, "--out")
    except OutputError as e:
        parser.error(str(e))

    if args.benchmark_data is not None and not args.benchmark_data.is_dir():
        parser.error(f"--benchmark-data: not a folder: {args.benchmark_data}")
    benchmarks = read_benchmark_images(args.benchmark_data)
    if benchmarks.warning():
        print(f"warning: {benchmarks.warning()}", file=sys.stderr)

    source = args.source if args.source is not None else Path(input_file).stem
    stats = build_shards(entries, args.images, args.out, shard_size=args.shard_size, max_side=args.max_side,
                         fmt=args.format, quality=args.quality, source=source, mt=mt, workers=args.workers,
                         prefix=args.prefix, bad_lines=bad_lines, benchmarks=benchmarks,
                         allow_benchmark_images=args.allow_benchmark_images)
    skipped = stats["skipped"]
    print(f"wrote {stats['num_samples']} samples in {stats['num_shards']} shards to {args.out}; "
          f"skipped {sum(skipped.values())}" + (f" ({', '.join(f'{r}: {n}' for r, n in skipped.items())}, "
                                                  f"listed in skipped.jsonl)" if skipped else ""))
    found = stats["benchmark_images"]
    what = "kept" if args.allow_benchmark_images else "skipped"
    if found[what]:
        print(f"  benchmark test images {what}: " + ", ".join(f"{b}: {n}" for b, n in found[what].items())
              + (" (--allow-benchmark-images; the evaluators will flag them)" if what == "kept" else ""))
    for lang, counts in stats["languages"].items():
        print(f"  {lang}: {counts['samples']} samples, {counts['captions']} captions"
              + (f" ({counts['mt_captions']} machine-translated)" if counts["mt_captions"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
