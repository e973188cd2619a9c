"""Zero-shot retrieval on M3C, the M3P evaluation suite as docs/design.md §6 defines it.

- ``multi30k``: Multi30K test2016, 1000 Flickr30k images; en and de with their five task-2
  captions per image, fr and cs with their one task-1 caption;
- ``mscoco-1k``: MSCOCO-1K multilingual = the XTD10 images with their en, ja (STAIR) and zh captions.

Scored per language by mean recall (M3P: the mean of R@1/5/10 in both directions) and R@1/5/10.
With several captions per image, every caption is a text→image query, and an image→text query
scores a hit when any of the image's captions is in the top k. We keep the real caption counts;
M3P's code pads every image to five captions by duplication, we do not.

``--text-only`` runs the caption-to-caption settings (cross-lingual matrix, multilingual caption
pool) on the one-caption-per-image files: Multi30K task 1 (en de fr cs) and the COCO part.

    python -m eval.m3c --model e5-small-vit-b32 --flickr-images flickr30k-images/ --coco-images COCO2014/ --out m3c.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mclip_hbt.paths import shared_data_dir

from .benchmark_data import (
    MULTI30K_LANGS,
    BenchmarkDataError,
    RetrievalSplit,
    find_images,
    load_multi30k_test2016,
    load_xtd_split,
)
from .cli_common import (
    add_common_arguments,
    check_common_arguments,
    evaluate_or_exit,
    languages_to_read,
    load_model_or_exit,
    run_meta,
    select_languages,
    write_outputs,
)
from .plots import language_panel
from .references import load_references
from .results import format_summary

COCO_LANGS = ("en", "ja", "zh")
PARTS = ("multi30k", "mscoco-1k")
PART_LANGS = {"multi30k": MULTI30K_LANGS, "mscoco-1k": COCO_LANGS}
CAPTION_COUNTS = ("real caption counts are kept: Multi30K en/de have five captions per image (task 2), fr/cs one "
                  "(task 1); MSCOCO-1K has one per image and language; no padding to five captions as in M3P")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.m3c", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated parts to run: multi30k, mscoco-1k (default: both)")
    parser.add_argument("--flickr-images", type=Path, default=None,
                        help="Flickr30k image folder (the multi30k part; not needed with --text-only)")
    parser.add_argument("--coco-images", type=Path, default=None,
                        help="MSCOCO-2014 image folder, train2014/ and val2014/ searched too (the mscoco-1k part)")
    parser.add_argument("--multi30k", type=Path, default=None,
                        help="Multi30K checkout (default: multi30k/ in $MCLIP_HBT_DATA or ../shared/data)")
    parser.add_argument("--xtd-captions", type=Path, default=None,
                        help="XTD10 caption folder for the COCO part "
                             "(default: xtd10/ in $MCLIP_HBT_DATA or ../shared/data)")
    return parser


def _load_part(part: str, langs: list[str], args: argparse.Namespace) -> RetrievalSplit:
    if part == "multi30k":
        return load_multi30k_test2016(args.multi30k or shared_data_dir() / "multi30k", langs)
    return load_xtd_split(args.xtd_captions or shared_data_dir() / "xtd10", langs, dataset="mscoco-1k")


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    all_langs = list(dict.fromkeys(lang for p in parts for lang in PART_LANGS[p]))
    langs = select_languages(parser, args, all_langs, text_only_needs_two=False)  # m3c checks per part
    part_langs = {p: [lang for lang in langs if lang in PART_LANGS[p]] for p in parts}
    part_langs = {p: ls for p, ls in part_langs.items() if len(ls) >= (2 if args.text_only else 1)}
    if not part_langs:
        parser.error("--lang selects no part with enough languages" + (" (--text-only needs two per part)"
                                                                       if args.text_only else ""))
    images_option = {"multi30k": ("--flickr-images", args.flickr_images),
                     "mscoco-1k": ("--coco-images", args.coco_images)}
    splits, image_paths = {}, {}
    for part, ls in part_langs.items():
        option, images_dir = images_option[part]
        if not args.text_only and images_dir is None:
            parser.error(f"{option} is required for the {part} part (or use --parts, or --text-only)")
        try:
            splits[part] = _load_part(part, languages_to_read(args, ls, PART_LANGS[part]), args)
            image_paths[part] = None if args.text_only else find_images(images_dir, splits[part].image_names)
        except BenchmarkDataError as e:
            parser.error(f"{part}: {e}")
    model = load_model_or_exit(parser, args)

    records, summary, unreadable = [], {}, []
    for part, split in splits.items():
        result = evaluate_or_exit(parser, args, split, model, part_langs[part], image_paths[part])
        records += result.records
        summary[part] = result.summary
        unreadable += result.unreadable_images
    meta = run_meta(args, parser, model, "m3c", langs, splits, unreadable, started)
    meta["part_languages"] = part_langs
    meta["caption_counts"] = CAPTION_COUNTS
    meta["image_text_captions"] = {p: {lang: sum(map(len, s.captions[lang])) for lang in part_langs[p]}
                                   for p, s in splits.items()}
    for part in splits:
        print(format_summary(summary[part], part_langs[part], f"M3C {part} — {args.model}"), end="\n\n")
    print(f"note: {CAPTION_COUNTS}")
    return write_outputs(parser, args, records, summary, meta, lambda: [
        language_panel(p, summary[p], part_langs[p], model.name, "mean_recall", "mean recall", load_references(p))
        for p in splits])


if __name__ == "__main__":
    raise SystemExit(main())
