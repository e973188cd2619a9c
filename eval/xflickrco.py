"""Zero-shot retrieval on xFlickr&CO, the retrieval task of IGLUE (Bugliarello et al., ICML 2022), in the
monolingual, cross-lingual and multilingual settings of docs/design.md §4.

2,000 images (the 1,000 Multi30K test2016 Flickr30k images, then 1,000 COCO val2014 images), one caption
per image in de en es id ja ru tr zh. The UNITER family (mUNITER, xUNITER, UC2, M3P) and CLIP-style
models have published text→image and image→text R@1 on it (``eval/references.json``); those rows are
shown beside ours, marked "(published)".

    python -m eval.xflickrco --lang all --model e5-small-vit-b32 --flickr-images flickr30k-images/ \\
        --coco-images COCO2014/ --out xflickrco.json --plot xflickrco.png
    python -m eval.xflickrco --lang all --text-only --model bundled:multilingual-e5-small

The result JSON's shape is documented in ``eval.results``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mclip_hbt.paths import shared_data_dir

from .benchmark_data import COCO_NAME_PREFIX, XFLICKRCO_LANGS, BenchmarkDataError, find_images, load_xflickrco
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

DATASET = "xflickrco"
#: What the caption-to-caption settings compare here (unlike XTD10, whose captions are translations).
CAPTION_RELATION = ("the 8 languages' captions of an image were written independently by native speakers, except "
                    "ja on the Flickr30k images (translations of the English ones, from Flickr30K-Entities-JP): "
                    "caption X → caption Y scores find another description of the same image, not a translation")
#: The published rows of each plotted metric (IGLUE reports R@1 in both directions).
PANELS = (("t2i_r@1", "text→image R@1", DATASET), ("i2t_r@1", "image→text R@1", f"{DATASET}-i2t"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.xflickrco", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--flickr-images", type=Path, default=None,
                        help="Flickr30k image folder (the first 1,000 images, found by file name, e.g. "
                             "1007129816.jpg); not needed with --text-only")
    parser.add_argument("--coco-images", type=Path, default=None,
                        help="MSCOCO-2014 image folder, val2014/ searched too (the COCO_val2014_*.jpg images); "
                             "not needed with --text-only")
    parser.add_argument("--captions", type=Path, default=None,
                        help="folder with {lang}/test.jsonl (IGLUE's datasets/xFlickrCO/annotations; default: "
                             "xflickrco/ in $MCLIP_HBT_DATA or ../shared/data)")
    return parser


def find_split_images(names: list[str], flickr_images: Path, coco_images: Path) -> list[Path]:
    """Each image's file: COCO names under the COCO folder, the others under the Flickr30k folder."""
    coco = [i for i, name in enumerate(names) if name.startswith(COCO_NAME_PREFIX)]
    flickr = [i for i, name in enumerate(names) if not name.startswith(COCO_NAME_PREFIX)]
    paths: list[Path | None] = [None] * len(names)
    for indices, folder in ((flickr, flickr_images), (coco, coco_images)):
        for i, path in zip(indices, find_images(folder, [names[i] for i in indices])):
            paths[i] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    langs = select_languages(parser, args, list(XFLICKRCO_LANGS))
    if not args.text_only:
        missing = [flag for flag, value in (("--flickr-images", args.flickr_images),
                                            ("--coco-images", args.coco_images)) if value is None]
        if missing:
            parser.error(f"{' and '.join(missing)} required (or use --text-only)")
    try:
        split = load_xflickrco(args.captions or shared_data_dir() / "xflickrco",
                               languages_to_read(args, langs, XFLICKRCO_LANGS))
        image_paths = None if args.text_only else find_split_images(split.image_names, args.flickr_images,
                                                                    args.coco_images)
    except BenchmarkDataError as e:
        parser.error(str(e))
    model = load_model_or_exit(parser, args)

    result = evaluate_or_exit(parser, args, split, model, langs, image_paths)
    meta = run_meta(args, parser, model, DATASET, langs, {DATASET: split}, result.unreadable_images, started)
    meta["ja_entity_numbers_stripped"] = "ja" in langs
    meta["caption_relation"] = CAPTION_RELATION
    print(format_summary(result.summary, langs, f"xFlickr&CO — {args.model} ({meta['seconds']:.0f} s)"))
    print(f"note: {CAPTION_RELATION}")
    shown = PANELS[:1] if args.text_only else PANELS  # a text-only run has one panel: caption X → pivot
    return write_outputs(parser, args, result.records, result.summary, meta, lambda: [
        language_panel(DATASET, result.summary, langs, model.name, metric, label, load_references(refs))
        for metric, label, refs in shown])


if __name__ == "__main__":
    raise SystemExit(main())
