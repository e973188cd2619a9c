"""End-to-end training throughput: shards on disk → input pipeline → training step, ours against open_clip's.

Both sides are the real trainers, started as a user starts them, on the same shards, from the same
initial weights, with the same optimiser settings and precision:

- ours: ``train.py`` with the README's LiT recipe (``configs/xlmr-base-vit-b32-lit.yaml``; ``--mode full``
  unlocks the image tower), its loader workers decoding and transforming, the hybrid batcher (α = 0.5),
  tokenising inside the step;
- open_clip: ``python -m open_clip_train.main`` (``get_wds_dataset``, its loader workers decoding,
  transforming and tokenising to 77 tokens, ``train_one_epoch``), on ``--model local-dir:`` an
  ``mclip_hbt.export open_clip`` of the same initial model, with ``--lock-image`` for LiT. open_clip 3.3's
  trainer needs webdataset <= 0.2.86, so it runs with ``bench.common.openclip_env``'s webdataset 0.2.86 overlay.

The initial model is the preset built once (``xlmr-base-vit-b32``: xlm-roberta-base's architecture from a
local config with random weights and the ViT-B/32 random — there is no hub here; ``e5-small-vit-b32``: the
bundled multilingual-e5-small), saved, and given to both trainers. The shards: ``--num-samples``
photo-like JPEGs (``bench.common.textured_jpeg``, ``--image-long-side`` px) each captioned with one real XTD10
caption row in its 11 languages, the English one also as ``KEY.txt`` (what open_clip reads; its cost does not
depend on the caption, every caption is padded to 77 tokens). Our trainer picks a language per caption.

Each run is a fresh process; rounds alternate ours and open_clip's so that load on the machine hits both.
Per run: the steady rate, batch × timed steps over the time of those steps (ours from the step log's
``time_s``, open_clip's from its per-step ``Batch (t)``; the first ``--warmup`` steps, which carry worker
start-up and buffer fill, are left out), the mean time each step waited for its batch (``data_s`` /
``Data (t)``), and the process's wall time (start-up, model loading and the final save included).
Ratios are of the median over the rounds.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python -m bench.train_e2e                # CPU: batch 32, LiT, xlmr-base
    HF_HUB_OFFLINE=1 python -m bench.train_e2e --preset tiny --steps 4 --rounds 1  # a quick check of the script
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import (
    PRECISIONS,
    PRESETS,
    QUICK_CHECK_PRESETS,
    add_device_option,
    benchmark_data,
    build_shards,
    device_name,
    openclip_env,
    our_overrides,
    resolve_device,
    result_path,
    settings_for_json,
)
from eval.benchmark_data import load_xtd_split
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.model.export import export_open_clip
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.runtime import machine_info, now_iso, package_versions
from mclip_hbt.train.config import TrainConfig, parse_config
from mclip_hbt.train.loop import build_model
from mclip_hbt.train.step_log import STEP_LOG, read_step_log

RECIPE = REPO_ROOT / "configs" / "xlmr-base-vit-b32-lit.yaml"
#: Defaults that depend on the device: batch, steps per run (warm-up included), warm-up steps, loader workers.
DEVICE_DEFAULTS = {"cpu": dict(batch_size=32, steps=10, warmup=2, workers=1, precision="fp32"),
                   "cuda": dict(batch_size=256, steps=60, warmup=10, workers=8, precision="bf16")}
#: Our precision names → open_clip_train's ``--precision``.
OPENCLIP_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16"}
OPENCLIP_STEP = re.compile(r"Train Epoch: \d+ \[.*?\] Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+),")


def xtd_captions(data_dir: Path):
    """Sample i's captions: XTD10 row i mod 1,000, in its 11 languages."""
    rows = load_xtd_split(data_dir / "xtd10", list(XTD_LANGS)).aligned
    count = len(rows["en"])
    return lambda i: {lang: [captions[i % count]] for lang, captions in rows.items()}


def initial_model(preset: str, seed: int, tmp: Path) -> tuple[Path, Path]:
    """The preset with its starting weights, saved as our model folder and as open_clip's local-dir export."""
    config = TrainConfig(model=preset, model_overrides=our_overrides(preset, tmp))
    torch.manual_seed(seed)
    model = build_model(config).eval()
    ours, theirs = tmp / "init-model", tmp / "init-open_clip"
    model.save_pretrained(ours)
    export_open_clip(model, theirs)
    return ours, theirs


def steady(step_s: list[float], data_s: list[float], batch_size: int) -> dict:
    return {"samples_per_s": round(batch_size * len(step_s) / sum(step_s), 3),
            "median_step_s": round(statistics.median(step_s), 4), "step_s": [round(s, 4) for s in step_s],
            "mean_data_wait_s": round(statistics.fmean(data_s), 4)}


def run_process(cmd: list[str], env: dict, log: Path, timeout: float) -> float:
    """Run one trainer to the end, its output to ``log``; its wall time, or an error naming the log."""
    start = time.perf_counter()
    with log.open("w") as sink:
        try:
            result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{cmd[1]} ran past --timeout {timeout:.0f} s; its output: {log}") from None
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed (exit {result.returncode}); its output: {log}")
    return time.perf_counter() - start


def run_ours(args, model: Path, shards: str, out: Path, env: dict, log: Path) -> dict:
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(RECIPE), "--model", str(model),
           "--train-data", shards, "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
           "--warmup-steps", "0", "--workers", str(args.workers), "--checkpoint-every", "0", "--log-every", "1",
           "--report-to", "none", "--mixed-precision", "bf16" if args.precision == "bf16" else "no",
           "--lock-image" if args.mode == "lit" else "--no-lock-image", "--seed", str(args.seed),
           "--output-dir", str(out)]
    wall = run_process(cmd, env, log, args.timeout)
    records = list(read_step_log(out / STEP_LOG))
    ends = [r["time_s"] for r in records]  # each step's time: from the end of the one before
    step_s = [b - a for a, b in zip(ends[args.warmup - 1:], ends[args.warmup:])]
    return {**steady(step_s, [r["data_s"] for r in records[args.warmup:]], args.batch_size),
            "wall_s": round(wall, 1)}


def run_openclip(args, export: Path, shards: str, out: Path, env: dict, log: Path) -> dict:
    cmd = [sys.executable, "-m", "open_clip_train.main", "--model", f"local-dir:{export}", "--train-data", shards,
           "--dataset-type", "webdataset", "--train-num-samples", str(args.steps * args.batch_size),
           "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
           "--precision", OPENCLIP_PRECISION[args.precision], "--lr", str(args.recipe.lr),
           "--wd", str(args.recipe.weight_decay), "--beta1", str(args.recipe.beta1), "--beta2",
           str(args.recipe.beta2), "--eps", str(args.recipe.eps), "--warmup", "0",
           "--grad-clip-norm", str(args.recipe.grad_clip), "--log-every-n-steps", "1", "--report-to", "",
           "--seed", str(args.seed), "--logs", str(out.parent), "--name", out.name]
    if args.mode == "lit":
        cmd.append("--lock-image")
    wall = run_process(cmd, env, log, args.timeout)
    # one line per step (--log-every-n-steps 1): the step's wait for its batch and its whole time, from the
    # end of the step before
    steps = [(float(data), float(batch)) for data, batch in OPENCLIP_STEP.findall((out / "out.log").read_text())]
    if len(steps) != args.steps:
        raise SystemExit(f"open_clip logged {len(steps)} steps, expected {args.steps}: see {log}")
    timed = steps[args.warmup:]
    return {**steady([b for _, b in timed], [d for d, _ in timed], args.batch_size), "wall_s": round(wall, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.train_e2e", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_device_option(parser)
    parser.add_argument("--preset", choices=PRESETS + QUICK_CHECK_PRESETS, default="xlmr-base-vit-b32",
                        help="the model both trainers train (tiny: a quick check of the script)")
    parser.add_argument("--mode", choices=("lit", "full"), default="lit",
                        help="lit: image tower locked on both sides; full: everything trains")
    parser.add_argument("--batch-size", type=int, help="global batch (default: 32 on CPU, 256 on CUDA)")
    parser.add_argument("--steps", type=int, help="steps per run, warm-up included (default: 10 CPU, 60 CUDA)")
    parser.add_argument("--warmup", type=int, help="first steps of each run left out of the rate (default: 2 CPU, "
                                                   "10 CUDA; at least 1)")
    parser.add_argument("--workers", type=int, help="loader worker processes on each side (default: 1 CPU, 8 CUDA)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="auto: fp32 on CPU, bf16 autocast on CUDA (open_clip's amp_bf16)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--num-samples", type=int,
                        help="samples in the bench shards (default: one run's steps x batch)")
    parser.add_argument("--image-long-side", type=int, default=320, help="long side of the shards' JPEGs, px")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of both trainers")
    parser.add_argument("--data", type=Path, help="folder holding xtd10/ (default: $MCLIP_HBT_DATA or ../shared/data)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".cache" / "bench-train-e2e",
                        help="shards (kept and reused), each trainer's output in logs/, and the runs (removed "
                             "after each one)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one trainer run may take")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/train_e2e_<device>.json)")
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    for name, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, name) in (None, "auto"):
            setattr(args, name, value)
    if args.batch_size < 2 or args.workers < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--batch-size must be >= 2, --workers and --rounds >= 1, --timeout > 0")
    if not 1 <= args.warmup < args.steps:
        parser.error(f"--warmup must be >= 1 and below --steps ({args.steps}), got {args.warmup}")
    args.num_samples = args.num_samples or args.steps * args.batch_size
    if args.num_samples < args.steps * args.batch_size:
        parser.error(f"--num-samples must hold one run: at least --steps x --batch-size = "
                     f"{args.steps * args.batch_size}")
    args.data = benchmark_data(parser, args.data, ("xtd10",))
    args.out = result_path(args.out, "train_e2e", args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine_info()
    shards = build_shards(args.work_dir / f"shards-{args.image_long_side}px", args.num_samples, shard_size=64,
                          long_side=args.image_long_side, captions_of=xtd_captions(args.data), caption_source="xtd10")
    args.recipe = parse_config(["--config", str(RECIPE), "--train-data", shards])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[dict]] = {"ours": [], "open_clip": []}
    logs = args.work_dir / "logs"  # each trainer's output, kept after the runs are removed
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir, prefix="run-") as tmp_name:
        tmp = Path(tmp_name)
        model, export = initial_model(args.preset, args.seed, tmp)
        for round_index in range(args.rounds):
            for side in runs:
                out, log = tmp / f"{side}-{round_index}", logs / f"{side}-{round_index}.log"
                print(f"round {round_index + 1}/{args.rounds}: {side} (output: {log}) ...", flush=True)
                result = (run_ours(args, model, shards, out, env, log) if side == "ours"
                          else run_openclip(args, export, shards, out, openclip_env(env), log))
                print(f"  {result['samples_per_s']:.3f} samples/s, step {result['median_step_s']:.2f} s, "
                      f"data wait {result['mean_data_wait_s']:.3f} s, wall {result['wall_s']:.0f} s", flush=True)
                runs[side].append(result)
                shutil.rmtree(out, ignore_errors=True)  # checkpoints of a big model: disk, not information
    median = {side: {key: round(statistics.median(r[key] for r in results), 4)
                     for key in ("samples_per_s", "mean_data_wait_s", "wall_s")} for side, results in runs.items()}
    ours, theirs = median["ours"], median["open_clip"]
    report = {"benchmark": "train_e2e", "device": args.device,
              "device_name": device_name(torch.device(args.device)), "precision": args.precision, "date": now_iso(),
              "versions": package_versions(), "machine": info, "command": " ".join(sys.argv),
              "settings": settings_for_json(args, "recipe"),
              "recipe": {"config": str(RECIPE.relative_to(REPO_ROOT)), "lr": args.recipe.lr,
                         "weight_decay": args.recipe.weight_decay, "alpha": args.recipe.hybrid.alpha},
              "runs": runs, "median": median,
              "ratio_ours_over_open_clip": {
                  "steady_samples_per_s": round(ours["samples_per_s"] / theirs["samples_per_s"], 3),
                  "wall_s": round(theirs["wall_s"] / ours["wall_s"], 3)},
              "elapsed_s": round(time.perf_counter() - started, 1)}
    write_json_atomic(args.out, report)
    ratio = report["ratio_ours_over_open_clip"]
    print(f"{args.preset} {args.mode}, batch {args.batch_size}, {args.precision} on {args.device}: ours "
          f"{ours['samples_per_s']:.3f} samples/s, open_clip {theirs['samples_per_s']:.3f} "
          f"-> {ratio['steady_samples_per_s']:.2f}x steady, {ratio['wall_s']:.2f}x in wall time -> {args.out}")


if __name__ == "__main__":
    main()
