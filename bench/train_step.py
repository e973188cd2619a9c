"""Training-step throughput: mclip_hbt's ``train_step`` against open_clip's own step, same weights, batch, precision.

One process builds, per preset, our ``MultilingualCLIP`` through the trainer's own ``build_model`` and an
open_clip ``CustomTextCLIP`` with an HF text tower of the same architecture (its model config registered
with ``open_clip.add_model_config``: the preset's ViT-B/32 ``vision_cfg`` from open_clip's ``ViT-B-32.json``,
``hf_model_name`` a local Hugging Face folder, linear projection, mean pooling, context length 77), copies
our weights into it (a strict ``load_state_dict``), checks that both give the same loss on the same batch
(fp32, eval mode: no dropout, and masked padding cannot change a mean-pooled feature), then times the
training step in alternating rounds so that other load on the machine hits both sides alike:

- ours: ``mclip_hbt.train.loop.train_step`` as the trainer runs it — tokenizing inside the step (padded to the
  batch's longest caption), ``accelerate`` autocast, ``ContrastiveLoss(kind="clip")``, gradient clipping,
  ``build_optimizer``'s AdamW (fused on CUDA), the logit-scale clamp;
- open_clip: ``open_clip_train.train.train_one_epoch``'s step — captions tokenized beforehand by
  ``open_clip.get_tokenizer`` (``HFTokenizer``, every caption padded to 77, as its data loader workers do,
  so outside the step), ``torch.autocast``, ``open_clip.loss.ClipLoss``, the same clipping, AdamW with
  ``open_clip_train.main``'s parameter groups (not fused), the same clamp.

Both use the same AdamW hyper-parameters and clipping norm (the trainer's defaults). Captions are real:
XTD10 (11 languages) and Multi30K test2016 (4) pooled and drawn at random into one cross-lingual batch,
cleaned once with open_clip's whitespace cleaning so both tokenizers see the same strings (E5 presets get
the ``"query: "`` prefix on both sides). Images are one random tensor at the model's image size.

Rows: presets ``xlmr-base-vit-b32`` (xlm-roberta-base's architecture, random init, from a local folder:
no hub is needed) and ``e5-small-vit-b32`` (the bundled multilingual-e5-small), each in full fine-tuning
and LiT (image tower locked on both sides); the ViT-B/32 224-px image tower starts random. CPU: batch 32,
fp32; CUDA: batches 256 and 512, bf16 autocast (``torch.cuda.synchronize`` around every timing).

What each row reports:

- samples/s of each side (batch / median step time over the rounds) and their ratio;
- useful TFLOP/s: FLOPs a step needs when no caption is padded, over the measured step time. The step's
  FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one real step of each side; the
  text tower's share is counted separately (a text-only forward + backward of the same padded batch), and
  the useful text FLOPs are counted on the captions regrouped by exact length (no pad token at all, the
  attention's quadratic term included). useful = step FLOPs − padded text FLOPs + unpadded text FLOPs, the
  same number for both sides (same model, same captions), so the TFLOP/s ratio equals the samples/s ratio;
  executed FLOPs of each side (padding included) are in the JSON too. The fraction of the device's matmul
  peak, measured in the same run (square matmul, fp32 or bf16, before and after the rows, best kept), is
  the useful TFLOP/s over that peak;
- memory: bytes resident between steps (parameters, buffers, AdamW state) + the step's own peak above
  that (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the largest running sum of the allocations and
  frees that ``torch.profiler(profile_memory=True)`` records during one step — the CPU allocator's tensors,
  not the process RSS, which glibc's caching and the other side's tensors would blur);
- real and padded tokens per caption on each side, and each tokenizer's time for the batch;
- a ``torch.profiler`` profile of one of our steps: the top ops by self CPU (CUDA: self device) time, and
  on CPU the step's split into backward, AdamW and the rest.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python -m bench.train_step
    HF_HUB_OFFLINE=1 python -m bench.train_step --presets tiny --rounds 2   # a quick check of the script
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from accelerate import Accelerator
from open_clip.loss import ClipLoss

from bench.common import (
    OPENCLIP_CONTEXT,
    PEAK_MATMUL_SIZE,
    PRECISIONS,
    PRESETS,
    QUICK_CHECK_PRESETS,
    add_device_option,
    autocast_for,
    benchmark_data,
    counted_flops,
    device_name,
    matmul_peak_gflops,
    our_overrides,
    resolve_device,
    result_path,
)
from bench.train_step_sides import (
    FP32_LOSS_ATOL,
    build_openclip,
    hf_folder_for,
    median_ms,
    openclip_optimizer,
    openclip_step,
    our_step,
    profile_step,
    register_openclip_config,
    same_loss_check,
    step_memory,
    text_step_flops,
    time_rounds,
    trainable,
    unpadded_text_flops,
)
from eval.benchmark_data import MULTI30K_LANGS, load_multi30k_test2016, load_xtd_split
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.model.loss import ContrastiveLoss
from mclip_hbt.runtime import machine_info, now_iso, package_versions
from mclip_hbt.train.config import TrainConfig
from mclip_hbt.train.loop import build_model, build_optimizer

MODES = ("full", "lit")
#: Slowest / fastest round of one side above which a row is flagged as measured on a busy machine.
NOISY_SPREAD = 1.5
#: Defaults that depend on the device: batches, rounds, steps per round, warm-up steps.
DEVICE_DEFAULTS = {"cpu": dict(batch_sizes=[32], rounds=5, steps_per_round=1, warmup=1, precision="fp32",
                               matmul_size=PEAK_MATMUL_SIZE["cpu"]),
                   "cuda": dict(batch_sizes=[256, 512], rounds=10, steps_per_round=5, warmup=3, precision="bf16",
                                matmul_size=PEAK_MATMUL_SIZE["cuda"])}


# ------------------------------------------------------------------------------------ captions

def load_caption_pool(data_dir: Path) -> list[tuple[str, str]]:
    """(language, caption) for every XTD10 caption (11 languages) and Multi30K test2016 task-1 caption (4)."""
    xtd = load_xtd_split(data_dir / "xtd10", list(XTD_LANGS))
    multi30k = load_multi30k_test2016(data_dir / "multi30k", list(MULTI30K_LANGS))
    return [(lang, caption) for split in (xtd, multi30k)
            for lang, captions in split.aligned.items() for caption in captions]


def draw_batch(pool: Sequence[tuple[str, str]], size: int, seed: int,
               clean: Callable[[str], str]) -> tuple[list[str], dict[str, int]]:
    """A cross-lingual batch: ``size`` captions drawn at random from the pool, so languages mix freely."""
    drawn = random.Random(seed * 1_000_003 + size).sample(list(pool), size)
    counts: dict[str, int] = {}
    for lang, _ in drawn:
        counts[lang] = counts.get(lang, 0) + 1
    return [clean(caption) for _, caption in drawn], dict(sorted(counts.items()))


# ------------------------------------------------------------------------------------- one preset

class PresetBench:
    """Both models of one preset, with identical weights, and the rows measured on them."""

    def __init__(self, preset: str, args: argparse.Namespace, accelerator: Accelerator, tmp: Path):
        self.preset, self.args, self.accelerator, self.device = preset, args, accelerator, accelerator.device
        self.config = TrainConfig(model=preset, model_overrides=our_overrides(preset, tmp), report_to="none",
                                  mixed_precision="bf16" if args.precision == "bf16" else "no",
                                  grad_clip=args.grad_clip)
        torch.manual_seed(args.seed)
        self.ours = build_model(self.config)  # lock_image is applied per mode, as build_model would
        name = f"mclip-bench-{preset}"
        self.openclip_cfg = register_openclip_config(name, self.ours, hf_folder_for(self.ours, tmp), tmp)
        self.theirs = build_openclip(name, self.ours, self.device)
        self.ours.to(self.device)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.loss_check: dict | None = None
        self.text_flops: dict[int, dict] = {}  # batch size → padded / unpadded text FLOPs (same in both modes)
        self.prepared = False

    def inputs(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        size = self.ours.preprocess_cfg.size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        images = torch.randn(len(captions), 3, *hw, generator=torch.Generator().manual_seed(self.args.seed))
        their_ids = self.tokenizer([self.ours.text.prefix + c for c in captions]).to(self.device)
        tokens = self.ours.tokenize(captions)
        return images.to(self.device), their_ids, tokens

    def lock_image(self) -> None:
        self.ours.lock_image_tower(self.config.image_unlocked_groups)  # what build_model does for --lock-image
        self.theirs.lock_image_tower()
        self.config.lock_image = True

    def row(self, mode: str, batch_size: int, pool: Sequence[tuple[str, str]]) -> dict:
        args, device = self.args, self.device
        captions, lang_counts = draw_batch(pool, batch_size, args.seed, self.tokenizer.clean_fn)
        images, their_ids, tokens = self.inputs(captions)
        if self.loss_check is None:  # once per preset, before any step changes the weights
            self.loss_check = same_loss_check(self.ours, self.theirs, images, their_ids, tokens, device,
                                              args.precision)
            fp32 = self.loss_check["fp32"]
            print(f"  loss check ({self.preset}, batch {batch_size}, eval mode): fp32 ours {fp32['ours']:.6f} "
                  f"open_clip {fp32['open_clip']:.6f} |diff| {fp32['abs_diff']:.2e} (tolerance {FP32_LOSS_ATOL:g}), "
                  f"text features max |diff| {fp32['text_feature_max_abs_diff']:.2e}, same token content: "
                  f"{self.loss_check['same_token_content']}"
                  + (f"; bf16 |diff| {self.loss_check['bf16']['abs_diff']:.2e}" if "bf16" in self.loss_check else ""),
                  flush=True)
            if not self.loss_check["ok"]:
                print("  warning: the two sides disagree; their timings may not compare the same computation",
                      flush=True)
        if batch_size not in self.text_flops:
            device_tokens = {k: v.to(device) for k, v in tokens.items()}
            self.text_flops[batch_size] = {
                "padded": text_step_flops(self.ours, device_tokens["input_ids"], device_tokens["attention_mask"]),
                "unpadded": unpadded_text_flops(self.ours, device_tokens)}

        # The trainer prepares the model once (accelerate wraps its forward in autocast), then the optimizer.
        if not self.prepared:
            self.ours = self.accelerator.prepare_model(self.ours)
            self.prepared = True
        ours_opt = self.accelerator.prepare_optimizer(build_optimizer(self.ours, self.config, device))
        their_opt = openclip_optimizer(self.theirs, self.config)
        batch = {"captions": captions, "images": images, "pair_mask": torch.zeros(batch_size, dtype=torch.bool)}
        steps = {"ours": our_step(self.ours, batch, ContrastiveLoss(kind="clip"), ours_opt, self.accelerator,
                                  self.config),
                 "open_clip": openclip_step(self.theirs, images, their_ids, ClipLoss(), their_opt,
                                            lambda: autocast_for(device, args.precision), args.grad_clip)}

        # The first step of each side is counted (and warms up: AdamW creates its state there).
        executed = {name: counted_flops(step) for name, step in steps.items()}
        for _ in range(args.warmup):
            for step in steps.values():
                step()
        memory = {"ours": step_memory(steps["ours"], self.ours, ours_opt, device),
                  "open_clip": step_memory(steps["open_clip"], self.theirs, their_opt, device)}
        desc = f"{self.preset} {mode} b{batch_size}"
        seconds = time_rounds(steps, args.rounds, args.steps_per_round, device, desc, not args.no_progress)
        profile = profile_step(steps["ours"], device, args.profile_top)

        non_text = executed["ours"] - self.text_flops[batch_size]["padded"]
        useful = non_text + self.text_flops[batch_size]["unpadded"]
        real = tokens["attention_mask"].sum().item() / batch_size
        sides = {}
        for name in steps:
            median = statistics.median(seconds[name])
            sides[name] = {"samples_per_s": round(batch_size / median, 2), "median_step_s": round(median, 4),
                           "min_step_s": round(min(seconds[name]), 4),
                           "round_step_s": [round(s, 4) for s in seconds[name]],
                           "executed_flops": executed[name], "executed_text_flops": executed[name] - non_text,
                           "useful_tflops": round(useful / median / 1e12, 4),
                           "useful_fraction_of_peak": round(useful / median / 1e9 / args.peak_gflops, 4),
                           "memory": memory[name], "trainable_params": trainable(self.ours if name == "ours"
                                                                                 else self.theirs)}
        sides["ours"]["tokens_per_caption"] = {"real": round(real, 2), "padded": tokens["input_ids"].shape[1]}
        sides["open_clip"]["tokens_per_caption"] = {"real": round(real, 2), "padded": their_ids.shape[1]}
        sides["ours"]["tokenize_ms"] = round(median_ms(lambda: self.ours.tokenize(captions)), 2)
        sides["open_clip"]["tokenize_ms"] = round(median_ms(
            lambda: self.tokenizer([self.ours.text.prefix + c for c in captions])), 2)
        sides["ours"]["tokenize_in_step"], sides["open_clip"]["tokenize_in_step"] = True, False
        sides["ours"]["profile"] = profile

        del steps, ours_opt, their_opt
        self.accelerator.free_memory()  # drops accelerate's reference to the optimizer (and its state)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"preset": self.preset, "mode": mode, "batch_size": batch_size, "precision": args.precision,
                "ratio_ours_over_open_clip": round(sides["ours"]["samples_per_s"] / sides["open_clip"]["samples_per_s"],
                                                   3),
                "useful_flops": useful, "text_flops": self.text_flops[batch_size], "non_text_flops": non_text,
                "languages": lang_counts, "ours": sides["ours"], "open_clip": sides["open_clip"]}


# ------------------------------------------------------------------------------------------ output

def print_table(rows: list[dict], peak_gflops: float, precision: str) -> None:
    header = (f"{'preset':<18} {'mode':<4} {'batch':>5} | {'ours/s':>8} {'oc/s':>8} {'ratio':>6} | "
              f"{'ours TF/s':>9} {'oc TF/s':>8} {'ours %pk':>8} | {'ours GiB':>8} {'oc GiB':>7} | "
              f"{'tok real':>8} {'ours pad':>8} {'oc pad':>6}")
    print(f"\nuseful TFLOP/s = FLOPs of the step with no padding / measured step time; "
          f"{precision} matmul peak {peak_gflops / 1e3:.3f} TFLOP/s; GiB = resident + step peak")
    print(header)
    print("-" * len(header))
    for r in rows:
        o, c = r["ours"], r["open_clip"]
        print(f"{r['preset']:<18} {r['mode']:<4} {r['batch_size']:>5} | {o['samples_per_s']:>8.2f} "
              f"{c['samples_per_s']:>8.2f} {r['ratio_ours_over_open_clip']:>6.2f} | {o['useful_tflops']:>9.4f} "
              f"{c['useful_tflops']:>8.4f} {o['useful_fraction_of_peak']:>8.1%} | {o['memory']['total_gib']:>8.2f} "
              f"{c['memory']['total_gib']:>7.2f} | {o['tokens_per_caption']['real']:>8.1f} "
              f"{o['tokens_per_caption']['padded']:>8} {c['tokens_per_caption']['padded']:>6}")
    for r in rows:
        p = r["ours"]["profile"]
        ops = ", ".join(f"{op['op']} {op['ms']:.0f}" for op in p["top_ops"][:5])
        split = f" split {p['split_ms']}" if "split_ms" in p else ""
        print(f"ours profile {r['preset']} {r['mode']} b{r['batch_size']} ({p['time_kind']}, ms; step "
              f"{p['profiled_step_ms']:.0f} ms):{split} top: {ops}")


def parse_list(values: list[str] | None, cast: Callable[[str], object]) -> list | None:
    """Repeatable flags that also take comma lists: ``--batch-size 256 --batch-size 512`` = ``--batch-size 256,512``."""
    if not values:
        return None
    return [cast(v.strip()) for value in values for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    add_device_option(parser)
    parser.add_argument("--batch-size", action="append", metavar="N[,N...]",
                        help="batch size(s), repeatable or comma-separated (default: 32 on CPU, 256,512 on CUDA)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="fp32, or bf16 autocast on both sides (default auto: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per row, sides alternating (default: 5 on CPU, 10 on CUDA)")
    parser.add_argument("--steps-per-round", type=int, default=None,
                        help="consecutive steps of one side per round (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps per side after the FLOP-counted first one (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--presets", action="append", metavar="NAME[,NAME...]",
                        help=f"presets to run: {', '.join(PRESETS)} (default: both); 'tiny' for a quick check")
    parser.add_argument("--modes", action="append", metavar="MODE[,MODE...]",
                        help="full (everything trains) and/or lit (image tower locked on both sides); default both")
    parser.add_argument("--grad-clip", type=float, default=TrainConfig().grad_clip,
                        help="gradient-norm clipping on both sides (default: the trainer's, %(default)s; 0 = off)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, the caption draw and the images (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding xtd10/ and multi30k/ (default: $MCLIP_HBT_DATA or ../shared/data)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="n of the n×n matmul used for the peak (default: 1536 on CPU, 8192 on CUDA)")
    parser.add_argument("--peak-seconds", type=float, default=3.0,
                        help="seconds timing the matmul peak, before and after the rows each (default %(default)s)")
    parser.add_argument("--profile-top", type=int, default=8,
                        help="ops kept from the profile of our step (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default: bench/results/train_step_<device>.json)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    args.device = resolve_device(parser, args.device)
    defaults = DEVICE_DEFAULTS[args.device]
    try:
        args.batch_sizes = parse_list(args.batch_size, int) or defaults["batch_sizes"]
    except ValueError:
        parser.error(f"--batch-size: expected integers, got {args.batch_size}")
    args.presets = parse_list(args.presets, str) or list(PRESETS)
    unknown = sorted(set(args.presets) - set(PRESETS) - set(QUICK_CHECK_PRESETS))
    if unknown:
        parser.error(f"--presets: unknown {', '.join(unknown)}; choose from {', '.join(PRESETS + QUICK_CHECK_PRESETS)}")
    modes = parse_list(args.modes, str) or list(MODES)
    if set(modes) - set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}, got {', '.join(modes)}")
    args.modes = [m for m in MODES if m in modes]  # full first: LiT locks the image tower for good
    for name in ("rounds", "steps_per_round", "warmup", "matmul_size"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.precision == "auto":
        args.precision = defaults["precision"]
    for name in ("rounds", "steps_per_round", "matmul_size", "profile_top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or any(b < 2 for b in args.batch_sizes) or args.peak_seconds <= 0 or args.grad_clip < 0:
        parser.error("--warmup and --grad-clip must be >= 0, every --batch-size >= 2, --peak-seconds > 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    args.data = benchmark_data(parser, args.data, ("xtd10", "multi30k"))
    args.out = result_path(args.out, "train_step", args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(mixed_precision="bf16" if args.precision == "bf16" else "no",
                              cpu=args.device == "cpu")
    info = {**machine_info(), "torch_threads": torch.get_num_threads()}
    device = accelerator.device
    pool = load_caption_pool(args.data)
    print(f"device {device} ({device_name(device)}), {args.precision}, batches {args.batch_sizes}, "
          f"{args.rounds} rounds × {args.steps_per_round} step(s), {torch.get_num_threads()} threads; "
          f"{len(pool)} captions in the pool", flush=True)
    # Other processes may share the machine: time the peak before and after the rows and keep the best.
    peak_before = matmul_peak_gflops(device, args.precision, args.matmul_size, args.peak_seconds)
    args.peak_gflops = peak_before  # for the rows' fraction of peak; replaced by the best of both below
    print(f"{args.precision} matmul peak ({args.matmul_size}²): {peak_before / 1e3:.3f} TFLOP/s", flush=True)

    rows, loss_checks = [], {}
    with tempfile.TemporaryDirectory(prefix="mclip-bench-train-step-") as tmp_dir:
        for preset in args.presets:
            tmp = Path(tmp_dir) / preset
            tmp.mkdir()
            print(f"building {preset} (ours and open_clip's) ...", flush=True)
            bench = PresetBench(preset, args, accelerator, tmp)
            for mode in args.modes:
                if mode == "lit":  # the same models, locked: LiT rows start from the full rows' weights, which
                    bench.lock_image()  # changes no shape, so no step's cost
                for batch_size in args.batch_sizes:
                    row = bench.row(mode, batch_size, pool)
                    rows.append(row)
                    o, c = row["ours"], row["open_clip"]
                    print(f"  {preset} {mode} batch {batch_size}: ours {o['samples_per_s']:.2f} samples/s, "
                          f"open_clip {c['samples_per_s']:.2f} ({row['ratio_ours_over_open_clip']:.2f}×)", flush=True)
                    spread = max(max(s["round_step_s"]) / min(s["round_step_s"]) for s in (o, c))
                    if spread > NOISY_SPREAD:  # the medians still compare like with like, but say so
                        print(f"  note: a side's step time varied {spread:.1f}× across rounds: other load on the "
                              f"machine (load average {os.getloadavg()[0]:.1f})", flush=True)
            loss_checks[preset] = bench.loss_check
            del bench
            gc.collect()
    peak_after = matmul_peak_gflops(device, args.precision, args.matmul_size, args.peak_seconds)
    peak = max(peak_before, peak_after)
    for row in rows:  # fractions against the better of the two peak measurements
        for side in ("ours", "open_clip"):
            row[side]["useful_fraction_of_peak"] = round(row[side]["useful_tflops"] * 1e3 / peak, 4)
    print_table(rows, peak, args.precision)

    info["load_average_at_end"] = list(os.getloadavg())
    elapsed = time.perf_counter() - started
    write_json_atomic(args.out, {
        "benchmark": "train_step", "device": str(device), "device_name": device_name(device),
        "precision": args.precision, "date": now_iso(), "versions": package_versions(), "machine": info,
        "command": " ".join([Path(sys.executable).name, "-m", "bench.train_step", *(argv or sys.argv[1:])]),
        "settings": {"batch_sizes": args.batch_sizes, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
                     "warmup": args.warmup, "grad_clip": args.grad_clip, "seed": args.seed,
                     "openclip_context_length": OPENCLIP_CONTEXT, "presets": args.presets, "modes": args.modes,
                     "tf32_matmul": torch.backends.cuda.matmul.allow_tf32},
        "matmul_peak": {"size": args.matmul_size, "before_after_gflops": [round(peak_before, 1), round(peak_after, 1)],
                        "gflops": round(peak, 1)},
        "loss_checks": loss_checks, "rows": rows, "elapsed_s": round(elapsed, 1),
        "notes": {"samples_per_s": "batch / median seconds per step over the rounds (sides alternating)",
                  "useful_flops": "FlopCounterMode count of our first step, its padded text forward+backward "
                                  "replaced by the same captions' text forward+backward regrouped by exact length "
                                  "(no padding); the same for both sides",
                  "executed_flops": "FlopCounterMode count of each side's first step, padding included",
                  "memory": "resident_bytes = parameters + buffers + AdamW state between steps; step_peak_bytes = "
                            + ("torch.cuda.max_memory_allocated during a step minus the allocation before it"
                               if device.type == "cuda" else
                               "largest running sum of the CPU allocator's allocations and frees that "
                               "torch.profiler(profile_memory=True) records during one step"),
                  "tokenize": "ours tokenizes inside train_step (counted in its time); open_clip's captions are "
                              "tokenized beforehand, as its data loader workers do",
                  "optimizer": "ours: mclip_hbt.train.loop.build_optimizer (fused on CUDA); open_clip: "
                               "open_clip_train.main's AdamW groups, torch's default implementation"}})
    print(f"wrote {args.out} ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
