"""CLIP_benchmark's own CLI on an exported model against ``eval.xtd`` on the same XTD-layout split.

Exports ``--model`` with ``mclip_hbt.export open_clip``, writes CLIP_benchmark's xtd10 annotation files
(``xtd10-{lang}.json``: image paths and captions, so it downloads nothing) for the split's images and
every language both tools know, runs ``clip_benchmark eval --dataset xtd10 --model local-dir:EXPORT`` and
``python -m eval.xtd`` and prints both tools' text→image and image→text R@1/5/10 per language with the
largest difference. A check that the export and our metrics agree with the field's tool, not a test
(it runs both evaluations end to end).

    HF_HUB_OFFLINE=1 python -m bench.clip_benchmark_parity --model runs/demo/model \\
        --split runs/data/emoji/test_seen --out bench/results/clip_benchmark_parity.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from eval.benchmark_data import available_xtd_languages, find_images, load_xtd_split
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import parse_lang_list
from mclip_hbt.runtime import now_iso, package_versions

METRICS = [f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10)]
#: CLIP_benchmark's xtd10 codes for the languages it knows (ours → its).
CLIP_BENCHMARK_XTD10 = {"de": "de", "en": "en", "es": "es", "fr": "fr", "it": "it", "ja": "jp", "ko": "ko",
                        "pl": "pl", "ru": "ru", "tr": "tr", "zh": "zh"}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clip_benchmark_parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved model folder or a preset name")
    parser.add_argument("--split", type=Path, required=True,
                        help="XTD-layout split (test_image_names.txt, test_1kcaptions_{lang}.txt, images under it)")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the split folder)")
    parser.add_argument("--lang", default="all",
                        help="comma-separated languages, or 'all' of the split's in CLIP_benchmark's xtd10 "
                             "(CLIP_benchmark encodes every image again per language) (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of both tools (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="write both tools' recalls here (JSON)")
    args = parser.parse_args(argv)

    wanted = None if args.lang == "all" else set(parse_lang_list(args.lang))
    langs = [lang for lang in available_xtd_languages(args.split)
             if lang in CLIP_BENCHMARK_XTD10 and (wanted is None or lang in wanted)]
    if not langs:
        parser.error(f"--split: no caption file in a language of CLIP_benchmark's xtd10 under {args.split}")
    split = load_xtd_split(args.split, langs)
    paths = find_images(args.images or args.split, split.image_names)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        run([sys.executable, "-m", "mclip_hbt.export", "open_clip", args.model, str(work / "export")])
        for lang in langs:  # what CLIP_benchmark's xtd10 builder would download, for this split
            write_json_atomic(work / f"xtd10-{CLIP_BENCHMARK_XTD10[lang]}.json",
                              {"image_paths": [str(p.resolve()) for p in paths], "annotations": split.aligned[lang]})
        run([sys.executable, "-m", "clip_benchmark.cli", "eval", "--dataset", "xtd10", "--dataset_root", str(work),
             "--language", *[CLIP_BENCHMARK_XTD10[lang] for lang in langs], "--model_type", "open_clip",
             "--model", f"local-dir:{work / 'export'}", "--pretrained", "export", "--recall_k", "1", "5", "10",
             "--batch_size", str(args.batch_size), "--num_workers", "0",
             "--output", str(work / "clip_benchmark_{language}.json")])
        run([sys.executable, "-m", "eval.xtd", "--model", args.model, "--images", str(args.images or args.split),
             "--captions", str(args.split), "--lang", ",".join(langs), "--pool-lang", langs[0], "--no-progress",
             "--batch-size", str(args.batch_size), "--image-batch-size", str(args.batch_size), "--num-workers", "0",
             "--out", str(work / "ours.json")])
        theirs = {lang: json.loads((work / f"clip_benchmark_{CLIP_BENCHMARK_XTD10[lang]}.json").read_text())["metrics"]
                  for lang in langs}
        ours = {r["language"]: r["metrics"] for r in json.loads((work / "ours.json").read_text())["results"]}
    ours = {lang: ours[CLIP_BENCHMARK_XTD10[lang]] for lang in langs}

    header = "".join(f"{m.replace('_retrieval_recall', ''):>16}" for m in METRICS)
    print(f"\n{'lang':<5}{header}   (ours / CLIP_benchmark, %)")
    worst = 0.0
    for lang in langs:
        cells = []
        for m in METRICS:
            worst = max(worst, abs(ours[lang][m] - theirs[lang][m]))
            cells.append(f"{100 * ours[lang][m]:7.2f}/{100 * theirs[lang][m]:<7.2f}")
        print(f"{lang:<5}" + "".join(f"{c:>16}" for c in cells))
    print(f"largest difference: {100 * worst:.3f} points over {len(langs)} languages x {len(METRICS)} recalls")
    if args.out:
        write_json_atomic(args.out, {"benchmark": "clip_benchmark_parity", "model": args.model,
                                     "split": str(args.split), "n_images": len(paths), "ours": ours,
                                     "clip_benchmark": theirs, "largest_difference": worst, "date": now_iso(),
                                     "versions": package_versions()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
