"""Evaluation throughput: the full XTD10 evaluation on placeholder images, and its text and image sides.

In one process, on one device:

- ``eval.xtd --lang all`` end to end (model loading, the 11,000 real XTD10 captions, 1,000 placeholder
  JPEGs, every setting's metrics, the result files), wall time;
- the text side: captions/s of ``RetrievalModel.encode_texts`` as ``eval.xtd`` runs it (each distinct caption
  once, batches cut from the captions sorted by token count and trimmed to their longest), and beside it the
  same encoder on the same captions the way CLIP_benchmark feeds an open_clip model: in file order, every
  caption padded to 77 tokens (open_clip's ``HFTokenizer``), same batch size; the ratio is what sorting,
  trimming and de-duplicating buy;
- the image side: images/s of ``encode_images`` (JPEG decoding and the transform in loader workers);
- useful GFLOP/s of each side, ``torch.utils.flop_counter`` FLOPs of the real tokens only (captions regrouped
  by exact length) and of the images, over the measured time, against the device's square-matmul peak
  measured in the same run.

The model is the ``e5-small-vit-b32`` preset (the bundled multilingual-e5-small, ViT-B/32 at 224 px with
random weights: there is no hub here, and the weights do not change the speed), saved once under
``--work-dir``; the images are photo-like 640×480 JPEGs (``bench.common.textured_jpeg``) named as XTD10's.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python -m bench.eval_xtd
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.common import (
    OPENCLIP_CONTEXT,
    PEAK_MATMUL_SIZE,
    add_device_option,
    benchmark_data,
    counted_flops,
    device_name,
    matmul_peak_gflops,
    resolve_device,
    result_path,
    settings_for_json,
    sync,
    textured_jpeg,
)
from eval import xtd
from eval.benchmark_data import load_xtd_split
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.model.clip import create_model
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.retrieval.models import RetrievalModel, load_retrieval_model
from mclip_hbt.runtime import machine_info, now_iso, package_versions

PRESET = "e5-small-vit-b32"
DEVICE_DEFAULTS = {"cpu": dict(text_batch=256, image_batch=64, workers=2, matmul_size=PEAK_MATMUL_SIZE["cpu"]),
                   "cuda": dict(text_batch=1024, image_batch=256, workers=8, matmul_size=PEAK_MATMUL_SIZE["cuda"])}


def saved_model(work_dir: Path) -> Path:
    folder = work_dir / "model"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        create_model(PRESET, vision_pretrained=None).save_pretrained(folder)
    return folder


def placeholder_images(work_dir: Path, names: list[str]) -> Path:
    folder = work_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in tqdm([n for n in names if not (folder / n).is_file()], desc="placeholder images", unit="img"):
        (folder / name).write_bytes(textured_jpeg(rng, 640))
    return folder


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def padded_in_file_order(model: RetrievalModel, captions: list[str], batch_size: int) -> Callable[[], None]:
    """CLIP_benchmark's text loop on our encoder: file order, every caption padded (or cut) to 77 tokens."""
    tower = model.text_encoder
    tokens = tower.tokenizer([tower.prefix + c for c in captions], padding="max_length", truncation=True,
                             max_length=OPENCLIP_CONTEXT, return_tensors="pt")

    def run() -> None:
        with torch.inference_mode(), model._autocast():
            for start in range(0, len(captions), batch_size):
                model.text_features({k: v[start:start + batch_size].to(model.device)
                                     for k, v in tokens.items() if k in ("input_ids", "attention_mask")})
    return run


def useful_text_flops(model: RetrievalModel, captions: list[str]) -> tuple[int, dict]:
    """FLOPs of encoding each distinct caption with no pad token (grouped by exact length), and token counts."""
    distinct = list(dict.fromkeys(captions))
    tokens = model.tokenize(distinct)
    lengths = tokens["attention_mask"].sum(dim=1)

    def run() -> None:
        with torch.inference_mode():
            for length in lengths.unique().tolist():
                rows = (lengths == length).nonzero().flatten()
                for start in range(0, len(rows), 256):
                    index = rows[start:start + 256]
                    model.text_features({k: tokens[k][index, :length].to(model.device)
                                         for k in ("input_ids", "attention_mask")})
    return counted_flops(run), {"distinct": len(distinct), "mean_tokens": round(lengths.float().mean().item(), 2)}


def image_flops(model: RetrievalModel, count: int) -> int:
    size = model.module.preprocess_cfg.size
    height, width = (size, size) if isinstance(size, int) else size
    with torch.inference_mode():
        one = counted_flops(lambda: model.image_features(torch.zeros(1, 3, height, width, device=model.device)))
    return one * count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_xtd", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_device_option(parser)
    parser.add_argument("--text-batch", type=int, help="captions per batch (default: 256 on CPU, 1024 on CUDA)")
    parser.add_argument("--image-batch", type=int, help="images per batch (default: 64 on CPU, 256 on CUDA)")
    parser.add_argument("--workers", type=int, help="image loader workers (default: 2 on CPU, 8 on CUDA)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of each text and image side; best kept")
    parser.add_argument("--matmul-size", type=int, help="n of the n×n peak matmul (default: 1536 CPU, 8192 CUDA)")
    parser.add_argument("--peak-seconds", type=float, default=3.0, help="seconds timing the matmul peak")
    parser.add_argument("--data", type=Path, help="folder holding xtd10/ (default: $MCLIP_HBT_DATA or ../shared/data)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".cache" / "bench-eval-xtd",
                        help="the saved model, the placeholder images and eval.xtd's output (kept and reused)")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/eval_xtd_<device>.json)")
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    for name, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.text_batch, args.image_batch, args.repeats, args.matmul_size) < 1 or args.workers < 0 \
            or args.peak_seconds <= 0:
        parser.error("--text-batch, --image-batch, --repeats and --matmul-size must be >= 1, --workers >= 0, "
                     "--peak-seconds > 0")
    args.data = benchmark_data(parser, args.data, ("xtd10",))
    args.out = result_path(args.out, "eval_xtd", args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"  # what RetrievalModel runs in
    info = machine_info()
    split = load_xtd_split(args.data / "xtd10", list(XTD_LANGS))
    captions = [c for lang in split.aligned for c in split.aligned[lang]]
    model_dir = saved_model(args.work_dir)
    images = placeholder_images(args.work_dir, split.image_names)
    paths = [images / name for name in split.image_names]
    peak_before = matmul_peak_gflops(device, precision, args.matmul_size, args.peak_seconds)

    print("eval.xtd --lang all, end to end ...", flush=True)
    end_to_end = timed(lambda: xtd.main(["--lang", "all", "--model", str(model_dir), "--images", str(images),
                                         "--captions", str(args.data / "xtd10"), "--device", args.device,
                                         "--batch-size", str(args.text_batch), "--image-batch-size",
                                         str(args.image_batch), "--num-workers", str(args.workers),
                                         "--out", str(args.work_dir / "xtd10.json")]), device)

    model = load_retrieval_model(str(model_dir), device)
    ours = [timed(lambda: model.encode_texts(captions, batch_size=args.text_batch, progress=False), device)
            for _ in range(args.repeats)]
    padded = padded_in_file_order(model, captions, args.text_batch)
    theirs = [timed(padded, device) for _ in range(args.repeats)]
    image_s = [timed(lambda: model.encode_images(paths, batch_size=args.image_batch, num_workers=args.workers,
                                                 progress=False), device) for _ in range(args.repeats)]
    text_flops, token_counts = useful_text_flops(model, captions)
    img_flops = image_flops(model, len(paths))
    peak = max(peak_before, matmul_peak_gflops(device, precision, args.matmul_size, args.peak_seconds))

    def side(seconds: list[float], count: int, flops: int, unit: str) -> dict:
        best = min(seconds)
        return {f"{unit}_per_s": round(count / best, 1), "best_s": round(best, 3),
                "median_s": round(statistics.median(seconds), 3), "useful_gflops": round(flops / best / 1e9, 1),
                "useful_fraction_of_peak": round(flops / best / 1e9 / peak, 3)}

    report = {"benchmark": "eval_xtd", "device": args.device, "device_name": device_name(device),
              "precision": precision, "date": now_iso(), "versions": package_versions(), "machine": info,
              "command": " ".join(sys.argv), "model": PRESET + " (vision tower random)",
              "settings": settings_for_json(args),
              "matmul_peak_gflops": round(peak, 1), "captions": len(captions), **token_counts,
              "images": len(paths), "eval_xtd_end_to_end_s": round(end_to_end, 1),
              "text": {"ours": side(ours, len(captions), text_flops, "captions"),
                       "padded_77_in_file_order": side(theirs, len(captions), text_flops, "captions"),
                       "useful_flops": text_flops},
              "image": {**side(image_s, len(paths), img_flops, "images"), "flops": img_flops}}
    report["text"]["ratio_ours_over_padded"] = round(min(theirs) / min(ours), 3)
    write_json_atomic(args.out, report)
    text, image = report["text"], report["image"]
    print(f"{device_name(device)}, {precision}: eval.xtd --lang all {end_to_end:.1f} s; text "
          f"{text['ours']['captions_per_s']} captions/s ({text['ours']['useful_fraction_of_peak']:.0%} of the "
          f"{peak:.0f} GFLOP/s peak) against {text['padded_77_in_file_order']['captions_per_s']} padded to 77 in "
          f"file order ({text['ratio_ours_over_padded']:.2f}x); images {image['images_per_s']} /s "
          f"({image['useful_fraction_of_peak']:.0%} of peak) -> {args.out}")


if __name__ == "__main__":
    main()
