"""Training-step throughput: mclip_hbt's ``train_step`` against open_clip's own step, same weights, batch, precision.

One process builds, per preset, our ``MultilingualCLIP`` through the trainer's own ``build_model`` and an
open_clip ``CustomTextCLIP`` with an HF text tower of the same architecture (its model config registered
with ``open_clip.add_model_config``: the preset's ViT-B/32 ``vision_cfg`` from open_clip's ``ViT-B-32.json``,
``hf_model_name`` a local Hugging Face folder, linear projection, mean pooling, context length 77), copies
our weights into it (a strict ``load_state_dict``), checks that both give the same loss on the same batch
(fp32, eval mode: no dropout, and masked padding cannot change a mean-pooled feature), then times the
training step in alternating rounds so that other load on the machine hits both sides alike:

- ours: ``mclip_hbt.trainer.train_step`` as the trainer runs it — tokenizing inside the step (padded to the
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
import contextlib
import gc
import json
import math
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
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm
from transformers import AutoTokenizer, XLMRobertaConfig

from bench.encode_text import matmul_peak_gflops
from bench.options import add_device_option, benchmark_data, resolve_device, result_path
from eval.benchmark_data import MULTI30K_LANGS, load_multi30k_test2016, load_xtd_split
from mclip_hbt.bundled import bundled_model_path, resolve_model_name
from mclip_hbt.export import open_clip_config, open_clip_state_dict
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.loss import ContrastiveLoss
from mclip_hbt.model import MultilingualCLIP
from mclip_hbt.runtime import machine_info, now_iso, package_versions
from mclip_hbt.train_config import TrainConfig
from mclip_hbt.trainer import TrainingState, build_model, build_optimizer, train_step

PRESETS = ("xlmr-base-vit-b32", "e5-small-vit-b32")
#: Accepted too: the unit-test preset, for a quick run of this script on a busy CPU.
EXTRA_PRESETS = ("tiny",)
MODES = ("full", "lit")
PRECISIONS = ("fp32", "bf16")
#: open_clip's HFTokenizer pads every caption to its context length; 77 is its default and CLIP's.
OPENCLIP_CONTEXT = 77
#: xlm-roberta-base's architecture (its hub config.json), so no hub is needed for a random-init encoder.
XLMR_BASE_CONFIG = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
#: fp32 losses of the two sides must agree this closely (same weights, same tokens, eval mode).
FP32_LOSS_ATOL = 1e-4
#: Slowest / fastest round of one side above which a row is flagged as measured on a busy machine.
NOISY_SPREAD = 1.5
#: Defaults that depend on the device: batches, rounds, steps per round, warm-up steps.
DEVICE_DEFAULTS = {"cpu": dict(batch_sizes=[32], rounds=5, steps_per_round=1, warmup=1, precision="fp32",
                               matmul_size=1536),
                   "cuda": dict(batch_sizes=[256, 512], rounds=10, steps_per_round=5, warmup=3, precision="bf16",
                                matmul_size=8192)}
Step = Callable[[], None]


# ------------------------------------------------------------------------------ device helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cuda_matmul_peak_gflops(precision: str, size: int, seconds: float, device: torch.device) -> float:
    """Best GFLOP/s of an n×n @ n×n CUDA matmul in ``precision`` (2·n³ FLOPs each), timed in bursts of 10."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: cuBLAS handle, heuristics
        sync(device)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(10):
                torch.mm(a, b)
            sync(device)
            best = max(best, 10 * 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def matmul_peak(device: torch.device, precision: str, size: int, seconds: float) -> float:
    """The device's square-matmul peak in GFLOP/s (the CPU one is bench.encode_text's)."""
    if device.type == "cuda":
        return cuda_matmul_peak_gflops(precision, size, seconds, device)
    return matmul_peak_gflops(precision, size, seconds)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else machine_info()["cpu"]


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


# -------------------------------------------------------------------------------------- models

def write_xlmr_base_folder(dest: Path) -> Path:
    """A Hugging Face folder with xlm-roberta-base's config and the bundled encoder's tokenizer (the same
    250,002-piece XLM-R SentencePiece vocabulary), for a random-init encoder without a hub."""
    XLMRobertaConfig(**XLMR_BASE_CONFIG).save_pretrained(dest)
    AutoTokenizer.from_pretrained(bundled_model_path()).save_pretrained(dest)
    return dest


def our_overrides(preset: str, tmp: Path) -> dict:
    """``model_overrides`` for the trainer's ``build_model``: every weight local, the image tower random."""
    if preset == "xlmr-base-vit-b32":
        folder = write_xlmr_base_folder(tmp / "xlm-roberta-base")
        return {"text_model": str(folder), "text_pretrained": False, "vision_pretrained": None}
    return {"vision_pretrained": None}


def hf_folder_for(ours: MultilingualCLIP, tmp: Path) -> Path:
    """A local HF folder whose config builds our text encoder's architecture, for open_clip's ``hf_model_name``:
    the encoder's own folder, or a copy of our (overridden) config with the tokenizer where overrides apply."""
    if not ours.config.text_config_overrides:
        return Path(resolve_model_name(ours.config.text_model))
    folder = tmp / "text-encoder"
    ours.text.transformer.config.save_pretrained(folder)
    ours.text.tokenizer.save_pretrained(folder)
    return folder


def register_openclip_config(name: str, ours: MultilingualCLIP, hf_folder: Path, cfg_dir: Path) -> dict:
    """Write and register the open_clip model config of a CustomTextCLIP shaped like ``ours`` (the export's own,
    ``mclip_hbt.export.open_clip_config``), its text encoder and tokenizer read from ``hf_folder``."""
    cfg = open_clip_config(ours, hf_folder)["model_cfg"]
    cfg["text_cfg"]["context_length"] = OPENCLIP_CONTEXT
    path = cfg_dir / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=2))
    open_clip.add_model_config(path)
    return cfg


def build_openclip(name: str, ours: MultilingualCLIP, device: torch.device) -> torch.nn.Module:
    model = open_clip.create_model(name, pretrained_text=False, output_dict=True)  # random; overwritten below
    model.load_state_dict(open_clip_state_dict(ours), strict=True)
    return model.to(device)


def openclip_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """open_clip_train.main's AdamW: no decay on gains, biases and the logit scale; no ``fused``/``foreach``
    argument, so torch picks its default implementation."""
    def exclude(n: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": config.weight_decay}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------ the two steps

def openclip_step(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, loss_fn: ClipLoss,
                  optimizer: torch.optim.Optimizer, autocast: Callable, grad_clip: float) -> Step:
    """open_clip_train.train.train_one_epoch's step (accum_freq 1, no grad scaler), inputs already on the device."""
    def step() -> None:
        optimizer.zero_grad()
        with autocast():
            out = model(images, texts)
            losses = loss_fn(**out, output_dict=True)
            total = sum(losses.values())
        total.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, norm_type=2.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return step


def our_step(model: MultilingualCLIP, batch: dict, loss_fn: ContrastiveLoss, optimizer, accelerator: Accelerator,
             config: TrainConfig) -> Step:
    """The trainer's own ``train_step`` (it tokenizes, autocasts, clips, steps, zeroes the gradients, clamps)."""
    state = TrainingState()

    def step() -> None:
        train_step(model, model, batch, loss_fn, optimizer, accelerator, config, state)
    return step


# ------------------------------------------------------------------------------------ measuring

def counted_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def text_step_flops(ours: MultilingualCLIP, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """FLOPs of our text tower's forward + backward (projection included) on one [rows, length] batch."""
    def run() -> None:
        ours.encode_text({"input_ids": input_ids, "attention_mask": attention_mask}).sum().backward()
    flops = counted_flops(run)
    ours.zero_grad(set_to_none=True)
    return flops


def unpadded_text_flops(ours: MultilingualCLIP, tokens: dict[str, torch.Tensor]) -> int:
    """Text forward + backward FLOPs with no pad token: the captions regrouped by exact length."""
    lengths = tokens["attention_mask"].sum(dim=1)
    total = 0
    for length in lengths.unique().tolist():
        rows = lengths == length
        total += text_step_flops(ours, tokens["input_ids"][rows, :length], tokens["attention_mask"][rows, :length])
    return total


def resident_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes held between steps: parameters, buffers and the optimizer's state (gradients are set to None)."""
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers())}
    for state in getattr(optimizer, "optimizer", optimizer).state.values():
        tensors.update({v.data_ptr(): v for v in state.values() if isinstance(v, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def step_peak_bytes(step: Step, device: torch.device) -> int:
    """The step's peak allocation above what was allocated before it (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # Every allocation and free is a "[memory]" event of the raw kineto results (prof.events() keeps only
    # the ones outside any op; the others are folded into their op's net usage, which hides the peak).
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def profile_step(step: Step, device: torch.device, top: int) -> dict:
    """One profiled step: the top ops by self time and, on CPU, the backward / AdamW / rest split."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        step()
        sync(device)
    wall_ms = (time.perf_counter() - start) * 1e3
    averages = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ranked = sorted(averages, key=lambda e: getattr(e, attr), reverse=True)[:top]
    out = {"time_kind": "self CUDA time" if device.type == "cuda" else "self CPU time",
           "profiled_step_ms": round(wall_ms, 1),
           "top_ops": [{"op": e.key, "ms": round(getattr(e, attr) / 1e3, 2), "calls": e.count} for e in ranked]}
    if device.type == "cpu":
        # Top-level autograd nodes and the optimizer's own record_function span; the rest is the forward,
        # the loss, tokenizing, clipping and zeroing.
        backward = sum(e.cpu_time_total for e in averages if e.key.startswith("autograd::engine::evaluate_function"))
        adamw = sum(e.cpu_time_total for e in averages if e.key.startswith("Optimizer.step#"))
        out["split_ms"] = {"backward": round(backward / 1e3, 1), "adamw_step": round(adamw / 1e3, 1),
                           "forward_loss_tokenize_clip": round(wall_ms - (backward + adamw) / 1e3, 1)}
    return out


def time_rounds(steps: dict[str, Step], rounds: int, per_round: int, device: torch.device,
                desc: str, progress: bool) -> dict[str, list[float]]:
    """Seconds per step of each side, per round; the sides alternate which goes first (ABBA...)."""
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(rounds), desc=desc, disable=not progress, leave=False):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            start = time.perf_counter()
            for _ in range(per_round):
                steps[name]()
            sync(device)
            seconds[name].append((time.perf_counter() - start) / per_round)
    return seconds


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


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

    def check_same_loss(self, images: torch.Tensor, their_ids: torch.Tensor, tokens: dict[str, torch.Tensor]) -> dict:
        """Both sides' loss on the batch, eval mode (no dropout), fp32 (and bf16 autocast when timed in it)."""
        ours_ids = [row[mask.bool()].tolist() for row, mask in zip(tokens["input_ids"], tokens["attention_mask"])]
        pad = self.theirs.text.config.pad_token_id
        theirs_ids = [row[row != pad].tolist() for row in their_ids.cpu()]
        # Both encoders are built by transformers' AutoModel; record which attention kernel each got.
        result = {"same_token_content": ours_ids == theirs_ids,
                  "attn_implementation": {side: getattr(m.text.transformer.config, "_attn_implementation", None)
                                          for side, m in (("ours", self.ours), ("open_clip", self.theirs))}}
        self.ours.eval()
        self.theirs.eval()
        precisions = ["fp32"] + (["bf16"] if self.args.precision == "bf16" else [])
        with torch.no_grad():
            for precision in precisions:
                with autocast_for(self.device, precision):
                    a = self.ours(images, tokens.to(self.device))
                    ours_loss = ContrastiveLoss(kind="clip")(**a)["loss"].float().item()
                    b = self.theirs(images, their_ids)
                    their_loss = ClipLoss()(b["image_features"], b["text_features"], b["logit_scale"]).float().item()
                text_diff = (a["text_features"].float() - b["text_features"].float()).abs().max().item()
                result[precision] = {"ours": round(ours_loss, 6), "open_clip": round(their_loss, 6),
                                     "abs_diff": abs(ours_loss - their_loss), "text_feature_max_abs_diff": text_diff}
        result["fp32_tolerance"] = FP32_LOSS_ATOL
        result["ok"] = result["same_token_content"] and result["fp32"]["abs_diff"] <= FP32_LOSS_ATOL
        self.ours.train()
        self.theirs.train()
        return result

    def lock_image(self) -> None:
        self.ours.lock_image_tower(self.config.image_unlocked_groups)  # what build_model does for --lock-image
        self.theirs.lock_image_tower()
        self.config.lock_image = True

    def row(self, mode: str, batch_size: int, pool: Sequence[tuple[str, str]]) -> dict:
        args, device = self.args, self.device
        captions, lang_counts = draw_batch(pool, batch_size, args.seed, self.tokenizer.clean_fn)
        images, their_ids, tokens = self.inputs(captions)
        if self.loss_check is None:  # once per preset, before any step changes the weights
            self.loss_check = self.check_same_loss(images, their_ids, tokens)
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
        memory = {}
        for name, step in steps.items():
            opt = ours_opt if name == "ours" else their_opt
            model = self.ours if name == "ours" else self.theirs
            resident = resident_bytes(model, opt)
            peak = step_peak_bytes(step, device)
            memory[name] = {"resident_bytes": resident, "step_peak_bytes": peak,
                            "total_gib": round((resident + peak) / 2 ** 30, 3)}
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
    unknown = sorted(set(args.presets) - set(PRESETS) - set(EXTRA_PRESETS))
    if unknown:
        parser.error(f"--presets: unknown {', '.join(unknown)}; choose from {', '.join(PRESETS + EXTRA_PRESETS)}")
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
    peak_before = matmul_peak(device, args.precision, args.matmul_size, args.peak_seconds)
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
    peak_after = matmul_peak(device, args.precision, args.matmul_size, args.peak_seconds)
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
                  "optimizer": "ours: mclip_hbt.trainer.build_optimizer (fused on CUDA); open_clip: "
                               "open_clip_train.main's AdamW groups, torch's default implementation"}})
    print(f"wrote {args.out} ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
