"""Input-pipeline throughput: mclip_hbt's chunk loader vs open_clip's ``get_wds_dataset``, same shards.

Both sides decode JPEGs with PIL and apply open_clip's 224-px train transform in ``--workers``
DataLoader workers; open_clip's also tokenizes (its pipeline does, ours leaves tokenizing to the
main process). open_clip 3.3's ``open_clip_train/data.py`` needs webdataset <= 0.2.86 (with 1.0 its
tar grouping fails on ``KeyError: 'fname'``), so its side runs in a subprocess with
webdataset 0.2.86 installed by pip into ``.cache/wds0286`` and put first on ``PYTHONPATH``.

    python -m bench.data_pipeline --workers 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from PIL import features
from tqdm import tqdm

from bench.common import build_shards, openclip_env, result_path, settings_for_json
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.runtime import machine_info


def synthetic_captions(i: int) -> dict[str, list[str]]:
    return {"en": [f"a synthetic photo number {i}"], "de": [f"ein synthetisches Foto {i}"]}


def timed(batches, count, warmup_batches: int) -> dict:
    """samples/s over the whole epoch (with worker start-up) and after the first ``warmup_batches``
    (each worker's first batch carries its start-up and shuffle-buffer fill)."""
    start = time.perf_counter()
    total = after_warmup = 0
    warm = None
    for index, batch in enumerate(tqdm(batches, desc="timing", unit="batch", leave=False)):
        n = count(batch)
        total += n
        if index == warmup_batches - 1:
            warm = time.perf_counter()
        elif index >= warmup_batches:
            after_warmup += n
    end = time.perf_counter()
    return {"samples": total, "seconds": round(end - start, 3), "samples_per_s": round(total / (end - start), 1),
            "steady_samples_per_s": round(after_warmup / (end - warm), 1) if after_warmup else None}


def bench_ours(args) -> dict:
    import open_clip

    from mclip_hbt.data.loader import LoaderConfig, build_loader

    transform = open_clip.image_transform(224, is_train=True)
    loader = build_loader(LoaderConfig(train_data=args.shards, chunk_size=args.batch_size, workers=args.workers,
                                       resampled=args.resampled,
                                       samples_per_epoch=args.num_samples if args.resampled else None), transform,
                                       draft_size=args.draft_size or None)
    result = timed(loader, lambda chunk: len(chunk["keys"]), warmup_batches=args.workers)
    result["faults"] = dict(loader.faults)
    return result


def bench_openclip(args) -> dict:
    import open_clip
    import webdataset
    from open_clip_train.data import get_wds_dataset

    options = argparse.Namespace(train_data=args.shards, val_data=None, train_num_samples=args.num_samples,
                                 dataset_resampled=args.resampled, train_data_upsampling_factors=None, seed=0,
                                 workers=args.workers, world_size=1, batch_size=args.batch_size)
    data = get_wds_dataset(options, open_clip.image_transform(224, is_train=True), is_train=True,
                           tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    result = timed(data.dataloader, lambda batch: len(batch[0]), warmup_batches=args.workers)
    result["webdataset"] = webdataset.__version__
    return result


def run_openclip_side(args) -> dict:
    """open_clip's pipeline in a child process that sees webdataset 0.2.86 first."""
    out = args.out.with_suffix(".openclip.tmp.json")
    cmd = [sys.executable, "-m", "bench.data_pipeline", "--openclip-only", "--shards", args.shards,
           "--num-samples", str(args.num_samples), "--workers", str(args.workers),
           "--batch-size", str(args.batch_size), "--out", str(out)] + ([] if args.resampled else ["--no-resampled"])
    subprocess.run(cmd, env=openclip_env(), cwd=REPO_ROOT, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def pipeline_machine_info() -> dict:
    """The shared machine facts plus what decoding speed depends on: libjpeg-turbo and the pipeline's packages."""
    return {**machine_info(), "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
            "versions": {pkg: version(pkg)
                         for pkg in ("torch", "torchvision", "pillow", "webdataset", "open_clip_torch")}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", help="existing shard pattern (default: build synthetic JPEG shards in --data-dir)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".cache" / "bench-data-pipeline",
                        help="where synthetic shards are written (reused when present)")
    parser.add_argument("--num-samples", type=int, default=4096, help="samples per measured epoch (and built)")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per synthetic shard")
    parser.add_argument("--image-size", type=int, default=320, help="long side of the synthetic JPEGs, px")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers on each side")
    parser.add_argument("--batch-size", type=int, default=256, help="open_clip's batch size and our chunk size")
    parser.add_argument("--draft-size", type=int, default=224,
                        help="our reduced-size JPEG decoding target (the model input size); 0 turns it off")
    parser.add_argument("--no-resampled", dest="resampled", action="store_false",
                        help="read each sample once per epoch instead of resampling shards (both sides)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default: bench/results/data_pipeline_cpu.json)")
    parser.add_argument("--openclip-only", action="store_true",
                        help="internal: run only open_clip's side (in the webdataset 0.2.86 environment)")
    args = parser.parse_args(argv)
    for name in ("num_samples", "shard_size", "image_size", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 1:
        parser.error("--workers must be >= 1 (both pipelines are measured with worker processes)")
    if args.draft_size < 0:
        parser.error("--draft-size must be >= 0")
    args.out = result_path(args.out, "data_pipeline", "cpu")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.openclip_only:
        args.out.write_text(json.dumps(bench_openclip(args)))
        return
    if args.shards is None:
        args.shards = build_shards(args.data_dir, args.num_samples, args.shard_size, args.image_size,
                                   synthetic_captions, "synthetic")
    ours = bench_ours(args)
    theirs = run_openclip_side(args)
    if args.num_samples < 2 * args.workers * args.batch_size:
        print("note: fewer than two batches per worker; the steady-state figures are missing or rough")
    ratio = ours["samples_per_s"] / theirs["samples_per_s"]
    report = {"benchmark": "data_pipeline", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": pipeline_machine_info(),
              "settings": settings_for_json(args, "openclip_only"),
              "ours": ours, "open_clip": theirs, "ratio_ours_over_open_clip": round(ratio, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, result in (("ours", ours), ("open_clip", theirs)):
        print(f"{name:10s} {result['samples_per_s']:8.1f} samples/s per epoch, "
              f"{result['steady_samples_per_s']} after warm-up")
    print(f"ratio      {ratio:8.2f} (epoch rates)  -> {args.out}")


if __name__ == "__main__":
    main()
