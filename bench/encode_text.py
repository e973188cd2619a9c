"""Text-encoding throughput of the offline encoder on XTD10's 11,000 captions, against the CPU's matmul peak.

Encodes every XTD10 caption ("query: " prefix, mean pooling) in length-sorted batches, counts the
FLOPs the model executed on those batches (analytic count, checked against
``torch.utils.flop_counter.FlopCounterMode`` on a real batch), and measures in the same run the
machine's square-matmul peak in the same precision. ``--precision auto`` times fp32 and bf16
autocast on a probe of ``--probe-captions`` captions, runs bf16 on everything only where it was
faster there, and keeps it only if its caption X → English R@1 stays within ``--bf16-tolerance``
of fp32 on every language (CPUs without native bf16 run it far slower than fp32).

    OMP_NUM_THREADS=2 python -m bench.encode_text --threads 2
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.common import PEAK_MATMUL_SIZE, PRECISIONS, autocast_for, counted_flops, matmul_peak_gflops, result_path
from eval.benchmark_data import load_xtd_split
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.model.encoding import encode_in_length_order
from mclip_hbt.model.text_tower import TextTower
from mclip_hbt.offline.bundled_e5 import BUNDLED_E5, E5_QUERY_PREFIX
from mclip_hbt.paths import shared_data_dir
from mclip_hbt.runtime import machine_info, now_iso, package_versions

#: This benchmark measures the CPU (the machine's matmul peak and the encoder on it).
CPU = torch.device("cpu")


def encoder_flops(config, batch: int, length: int) -> tuple[int, int]:
    """FLOPs of one BERT forward on a [batch, length] input: (linear layers, attention QKᵀ + PV)."""
    h, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear = 2 * batch * length * (4 * h * h + 2 * h * ff)
    attention = 2 * 2 * batch * length * length * h
    return layers * linear, layers * attention


def timed_encode(tower: TextTower, texts: Sequence[str], precision: str, batch_size: int, progress: bool) -> dict:
    """Encode ``texts``; return embeddings, seconds spent tokenizing and in the model, executed FLOPs."""
    clock = {"tokenize": 0.0, "model": 0.0, "flops": 0, "real_tokens": 0, "padded_tokens": 0}

    def tokenize(batch: list[str]):
        start = time.perf_counter()
        tokens = tower.tokenize(batch)
        clock["tokenize"] += time.perf_counter() - start
        return tokens

    def encode(tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        start = time.perf_counter()
        with autocast_for(CPU, precision):
            emb = tower(tokens).float()
        clock["model"] += time.perf_counter() - start
        n, length = tokens["input_ids"].shape
        clock["flops"] += sum(encoder_flops(tower.transformer.config, n, length))
        clock["real_tokens"] += int(tokens["attention_mask"].sum())
        clock["padded_tokens"] += n * length
        return emb

    start = time.perf_counter()
    emb = encode_in_length_order(texts, tokenize, encode, batch_size, progress=progress)
    clock["total"] = time.perf_counter() - start
    clock["embeddings"] = torch.nn.functional.normalize(emb, dim=-1)
    return clock


def recall_to_english(emb: torch.Tensor, langs: Sequence[str]) -> dict[str, float]:
    """Caption X → English caption R@1 for each non-English language (blocks of equal size, en first)."""
    per_lang = emb.view(len(langs), -1, emb.shape[-1])
    target = torch.arange(per_lang.shape[1])
    return {lang: round(((per_lang[i] @ per_lang[0].T).argmax(1) == target).float().mean().item(), 4)
            for i, lang in enumerate(langs) if lang != "en"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.encode_text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding XTD10's caption files (default: <shared data>/xtd10)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="model precision; auto times both and keeps bf16 only if faster and accurate")
    parser.add_argument("--bf16-tolerance", type=float, default=0.01,
                        help="largest R@1 drop (any language) that still lets auto pick bf16")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per forward pass")
    parser.add_argument("--probe-captions", type=int, default=64,
                        help="captions timed in each precision to decide whether bf16 is worth a full run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--matmul-size", type=int, default=PEAK_MATMUL_SIZE["cpu"],
                        help="n of the n×n matmul used for the peak")
    parser.add_argument("--peak-seconds", type=float, default=5.0, help="seconds spent timing each matmul peak")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON file (default: bench/results/encode_text_cpu.json)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    args.data = args.data or shared_data_dir() / "xtd10"
    if not args.data.is_dir():
        parser.error(f"--data: {args.data} is not a folder; point it at XTD10 (or set MCLIP_HBT_DATA)")
    for name in ("batch_size", "threads", "matmul_size", "probe_captions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.peak_seconds <= 0 or args.bf16_tolerance < 0:
        parser.error("--peak-seconds must be > 0 and --bf16-tolerance >= 0")
    args.out = result_path(args.out, "encode_text", "cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = {**machine_info(), "torch_threads": args.threads}
    split = load_xtd_split(args.data, list(XTD_LANGS))
    texts = [c for lang in XTD_LANGS for c in split.aligned[lang]]
    tower = TextTower.from_name(BUNDLED_E5, pooling="mean", prefix=E5_QUERY_PREFIX, max_length=512).eval()

    # The totals use the analytic count; check it against FlopCounterMode on the longest real batch.
    # (On CPU the counter sees the linear layers but not the fused SDPA kernel, so both are shown.)
    lengths = tower.tokenize(texts)["attention_mask"].sum(dim=1)
    probe = dict(tower.tokenize([texts[i] for i in lengths.argsort(descending=True)[:args.batch_size]]))
    linear, attention = encoder_flops(tower.transformer.config, *probe["input_ids"].shape)
    with torch.inference_mode():
        flop_counter = counted_flops(lambda: tower(probe))
    flop_check = {"batch_shape": list(probe["input_ids"].shape), "flop_counter": flop_counter,
                  "analytic_linear": linear, "analytic_attention": attention}
    print(f"FLOP check on a {flop_check['batch_shape']} batch: FlopCounterMode {flop_check['flop_counter']:,}, "
          f"analytic linear {linear:,} + attention {attention:,}")
    if flop_check["flop_counter"] not in (linear, linear + attention):
        print("warning: the analytic FLOP count disagrees with FlopCounterMode; GFLOP/s figures are suspect")

    precisions = list(PRECISIONS if args.precision == "auto" else (args.precision,))
    probe_seconds = {}
    if len(precisions) > 1:
        sample = texts[::max(1, len(texts) // args.probe_captions)][:args.probe_captions]
        for precision in precisions:
            timed_encode(tower, sample[:8], precision, args.batch_size, False)  # warm-up
            probe_seconds[precision] = round(timed_encode(tower, sample, precision, args.batch_size, False)["model"], 3)
        print(f"probe of {len(sample)} captions, seconds in the model: {probe_seconds}")
        precisions = ["fp32"] + [p for p in precisions if p != "fp32" and probe_seconds[p] < probe_seconds["fp32"]]

    runs = {}
    for precision in precisions:
        # Other processes may share the CPU: time the peak before and after the run and keep the best.
        peak_before = matmul_peak_gflops(CPU, precision, args.matmul_size, args.peak_seconds)
        run = timed_encode(tower, texts, precision, args.batch_size, not args.no_progress)
        peak_after = matmul_peak_gflops(CPU, precision, args.matmul_size, args.peak_seconds)
        peak = max(peak_before, peak_after)
        run["matmul_peak_before_after_gflops"] = [round(peak_before, 1), round(peak_after, 1)]
        run["recall@1_to_en"] = recall_to_english(run.pop("embeddings"), XTD_LANGS)
        run.update(precision=precision, matmul_peak_gflops=round(peak, 1),
                   captions_per_s=round(len(texts) / run["total"], 1),
                   model_gflops=round(run["flops"] / run["model"] / 1e9, 1))
        run["fraction_of_peak"] = round(run["model_gflops"] / peak, 3)
        runs[precision] = run
        print(f"{precision}: {run['captions_per_s']} captions/s end to end ({run['tokenize']:.1f} s tokenizing, "
              f"{run['model']:.1f} s in the model), {run['model_gflops']} GFLOP/s vs matmul peak {peak:.1f} "
              f"= {run['fraction_of_peak']:.0%}; R@1 {run['recall@1_to_en']}")
    skipped = {p: round(matmul_peak_gflops(CPU, p, args.matmul_size, args.peak_seconds), 1)
               for p in probe_seconds if p not in runs}
    if skipped:
        print(f"not run in full (slower than fp32 on the probe); their matmul peaks, GFLOP/s: {skipped}")

    chosen = next(iter(runs))  # fp32, or the one precision asked for
    if len(runs) == 2:
        drop = max(runs["fp32"]["recall@1_to_en"][k] - runs["bf16"]["recall@1_to_en"][k]
                   for k in runs["fp32"]["recall@1_to_en"])
        runs["bf16"]["max_recall_drop_vs_fp32"] = round(drop, 4)
        if drop <= args.bf16_tolerance and runs["bf16"]["total"] < runs["fp32"]["total"]:
            chosen = "bf16"
    best = runs[chosen]
    print(f"chosen: {chosen} — {best['captions_per_s']} captions/s, {best['model_gflops']} GFLOP/s, "
          f"{best['fraction_of_peak']:.0%} of the {best['matmul_peak_gflops']} GFLOP/s {chosen} matmul peak")

    info["load_average_at_end"] = list(os.getloadavg())
    write_json_atomic(args.out, {
        "benchmark": "encode_text", "model": BUNDLED_E5, "captions": len(texts), "batch_size": args.batch_size,
        "chosen_precision": chosen, "runs": runs, "probe_model_seconds": probe_seconds,
        "skipped_precisions_matmul_peak_gflops": skipped, "flop_check": flop_check,
        "flops_note": "executed FLOPs of the padded batches (linear layers + QK^T + PV); "
                      "model_gflops = FLOPs / seconds in the model (tokenizing excluded, reported separately)",
        "machine": info, "date": now_iso(), "versions": package_versions()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
