"""CLIP_benchmark's own CLI on an exported model against ``eval.xtd`` on the same XTD-layout split.

Exports ``--model`` with ``mclip_hbt.export open_clip``, writes CLIP_benchmark's xtd10 annotation files
(``xtd10-{lang}.json``: image paths and captions, so it downloads nothing) for the split's images and
every language both tools know, runs ``clip_benchmark eval --dataset xtd10 --model local-dir:EXPORT`` and
``python -m eval.xtd`` and prints both tools' text→image and image→text R@1/5/10 per language with the
largest difference. A check that the export and our metrics agree with the field's tool, not a test
(it runs both evaluations end to end).

It does so twice: on the captions as they are, and on the captions as open_clip's tokenizer cleans them
(``HFTokenizer`` runs ``ftfy.fix_text`` on every text, which, e.g., straightens typographic quotes “ ” ’ and so
changes token ids; CLIP_benchmark cannot turn that off, our tokenizer does not do it). CLIP_benchmark runs
with ``--no_amp``: by default it autocasts, on a CPU to bfloat16, where ``eval.xtd`` computes in float32 (what
that changes on a measured split: docs/results.md). On cleaned captions both tools see the same text, so any
difference left is the export's or the metrics'; the difference on the raw captions is what open_clip's
cleaning alone changes.

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

from open_clip.tokenizer import basic_clean, whitespace_clean

from data_recipes.worlds import write_xtd_caption_files
from eval.benchmark_data import BenchmarkDataError, available_xtd_languages, find_images, load_xtd_split
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import parse_lang_list
from mclip_hbt.model.clip import CONFIG_NAME, create_model
from mclip_hbt.offline.hub import ModelUnavailableError
from mclip_hbt.runtime import now_iso, package_versions

METRICS = [f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10)]
#: Recalls closer than this are the same number (the tools store them in float64 and float32).
SAME = 1e-6
#: CLIP_benchmark's xtd10 codes for the languages it knows (ours → its).
CLIP_BENCHMARK_XTD10 = {"de": "de", "en": "en", "es": "es", "fr": "fr", "it": "it", "ja": "jp", "ko": "ko",
                        "pl": "pl", "ru": "ru", "tr": "tr", "zh": "zh"}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    returncode = subprocess.run(cmd).returncode
    if returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:4])} failed (exit {returncode}); its output is above")


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

    try:
        wanted = None if args.lang == "all" else set(parse_lang_list(args.lang))
    except ValueError as err:
        parser.error(f"--lang: {err}")
    try:
        langs = [lang for lang in available_xtd_languages(args.split)
                 if lang in CLIP_BENCHMARK_XTD10 and (wanted is None or lang in wanted)]
        if not langs:
            parser.error(f"--split: no caption file in a language of CLIP_benchmark's xtd10 under {args.split}")
        split = load_xtd_split(args.split, langs)
        images = args.images or args.split
        paths = find_images(images, split.image_names)
    except BenchmarkDataError as err:
        parser.error(f"--split/--images: {err}")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        try:
            model = saved_model_folder(args.model, work)
        except ModelUnavailableError as err:
            parser.error(f"--model: {err}")
        run([sys.executable, "-m", "mclip_hbt.export", "open_clip", model, str(work / "export")])
        cleaned_captions = {lang: [open_clip_clean(c) for c in split.aligned[lang]] for lang in langs}
        changed = {lang: sum(a != b for a, b in zip(split.aligned[lang], cleaned_captions[lang])) for lang in langs}
        cleaned = work / "cleaned"
        cleaned.mkdir()
        write_xtd_caption_files(cleaned, split.image_names, cleaned_captions)
        for variant, captions in (("raw", args.split), ("open_clip_cleaned", cleaned)):
            ours, theirs = both_tools(args, model, work / variant, captions, images, paths, langs)
            results[variant] = {"ours": ours, "clip_benchmark": theirs,
                                **print_comparison(variant, langs, ours, theirs)}
    print(f"captions open_clip's cleaning changes: {changed}")
    if args.out:
        write_json_atomic(args.out, {"benchmark": "clip_benchmark_parity", "model": args.model,
                                     "split": str(args.split), "n_images": len(paths),
                                     "captions_changed_by_open_clip_cleaning": changed, **results,
                                     "date": now_iso(), "versions": package_versions()})
    return 0


def open_clip_clean(text: str) -> str:
    """What open_clip's ``HFTokenizer`` (clean="whitespace", its default) makes of a text before tokenising it."""
    return whitespace_clean(basic_clean(text))


def saved_model_folder(model: str, work: Path) -> str:
    """``model`` if it is a saved model folder; a preset is built once and saved, so that both tools score the
    same weights (a preset's random towers would be drawn anew by each)."""
    if (Path(model) / CONFIG_NAME).is_file():
        return model
    folder = work / "model"
    create_model(model).save_pretrained(folder)
    return str(folder)


def both_tools(args, model: str, work: Path, captions: Path, images: Path, paths: list[Path], langs: list[str]):
    """CLIP_benchmark's CLI on the export and eval.xtd on the model, the captions under ``captions``."""
    work.mkdir()
    split = load_xtd_split(captions, langs)
    for lang in langs:  # what CLIP_benchmark's xtd10 builder would download, for this split
        write_json_atomic(work / f"xtd10-{CLIP_BENCHMARK_XTD10[lang]}.json",
                          {"image_paths": [str(p.resolve()) for p in paths], "annotations": split.aligned[lang]})
    export = work.parent / "export"
    run([sys.executable, "-m", "clip_benchmark.cli", "eval", "--dataset", "xtd10", "--dataset_root", str(work),
         "--language", *[CLIP_BENCHMARK_XTD10[lang] for lang in langs], "--model_type", "open_clip",
         "--model", f"local-dir:{export}", "--pretrained", "export", "--recall_k", "1", "5", "10",
         "--batch_size", str(args.batch_size), "--num_workers", "0", "--no_amp",
         "--output", str(work / "clip_benchmark_{language}.json")])
    run([sys.executable, "-m", "eval.xtd", "--model", model, "--images", str(images),
         "--captions", str(captions), "--lang", ",".join(langs), "--pool-lang", langs[0], "--no-progress",
         "--batch-size", str(args.batch_size), "--image-batch-size", str(args.batch_size), "--num-workers", "0",
         "--out", str(work / "ours.json")])
    theirs = {lang: json.loads((work / f"clip_benchmark_{CLIP_BENCHMARK_XTD10[lang]}.json").read_text())["metrics"]
              for lang in langs}
    ours = {r["language"]: r["metrics"] for r in json.loads((work / "ours.json").read_text())["results"]}
    return {lang: ours[CLIP_BENCHMARK_XTD10[lang]] for lang in langs}, theirs


def print_comparison(variant: str, langs: list[str], ours: dict, theirs: dict) -> dict:
    header = "".join(f"{m.replace('_retrieval_recall', ''):>16}" for m in METRICS)
    print(f"\n{variant} captions\n{'lang':<5}{header}   (ours / CLIP_benchmark, %)")
    worst, differing = 0.0, 0
    for lang in langs:
        cells = []
        for m in METRICS:
            worst = max(worst, abs(ours[lang][m] - theirs[lang][m]))
            differing += abs(ours[lang][m] - theirs[lang][m]) > SAME
            cells.append(f"{100 * ours[lang][m]:7.2f}/{100 * theirs[lang][m]:<7.2f}")
        print(f"{lang:<5}" + "".join(f"{c:>16}" for c in cells))
    print(f"largest difference: {100 * worst:.3f} points; {differing} of {len(langs) * len(METRICS)} recalls differ")
    return {"largest_difference": worst, "recalls_differing": differing, "recalls": len(langs) * len(METRICS)}


if __name__ == "__main__":
    raise SystemExit(main())
