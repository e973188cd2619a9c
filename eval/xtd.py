"""Zero-shot retrieval on XTD10 (or any XTD-layout split) in the monolingual, cross-lingual and
multilingual settings of docs/design.md §4.

    python -m eval.xtd --lang all --model e5-small-vit-b32 --images COCO2014/ --out xtd10.json --plot xtd10.png
    python -m eval.xtd --lang all --text-only --model bundled:multilingual-e5-small

Each language's captions and every image are encoded once; all settings reuse those embeddings.
The result JSON's shape is documented in ``eval.results``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mclip_hbt.paths import shared_data_dir

from .benchmark_data import BenchmarkDataError, available_xtd_languages, find_images, load_xtd_split
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.xtd", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--images", type=Path, default=None,
                        help="folder holding the split's images, directly or in subfolders (COCO's train2014/, "
                             "val2014/); not needed with --text-only")
    parser.add_argument("--captions", type=Path, default=None,
                        help="XTD-layout caption folder (default: xtd10/ in $MCLIP_HBT_DATA or ../shared/data)")
    parser.add_argument("--dataset", default=None,
                        help="dataset name written into the result records (default: xtd10 for the XTD10 captions, "
                             "else the --captions folder's name, so another split never passes for XTD10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    captions_dir = args.captions or shared_data_dir() / "xtd10"
    if args.dataset is None:
        args.dataset = "xtd10" if captions_dir.resolve() == (shared_data_dir() / "xtd10").resolve() \
            else captions_dir.resolve().name
    try:
        available = available_xtd_languages(captions_dir)
    except BenchmarkDataError as e:
        parser.error(f"--captions: {e}")
    langs = select_languages(parser, args, available)
    if not args.text_only and args.images is None:
        parser.error("--images is required (or use --text-only)")
    if args.translate_test and "en" not in available:
        parser.error("--translate-test needs English captions in --captions")
    try:
        split = load_xtd_split(captions_dir, languages_to_read(args, langs, available), dataset=args.dataset)
        image_paths = None if args.text_only else find_images(args.images, split.image_names)
    except BenchmarkDataError as e:
        parser.error(str(e))
    model = load_model_or_exit(parser, args)

    result = evaluate_or_exit(parser, args, split, model, langs, image_paths)
    meta = run_meta(args, parser, model, args.dataset, langs, {args.dataset: split}, result.unreadable_images, started)
    print(format_summary(result.summary, langs, f"{args.dataset} — {args.model} ({meta['seconds']:.0f} s)"))
    return write_outputs(parser, args, result.records, result.summary, meta, lambda: [
        language_panel(args.dataset, result.summary, langs, model.name, "t2i_r@10", "text→image R@10",
                       load_references(args.dataset))])


if __name__ == "__main__":
    raise SystemExit(main())
