"""The two sides of the training-step benchmark and how a step of either is measured: open_clip's model, optimizer
and step built to match ours, our trainer's step, the check that both compute the same loss, and the step's
FLOPs, memory, profile and time."""
from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from accelerate import Accelerator
from open_clip.loss import ClipLoss
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from bench.common import OPENCLIP_CONTEXT, autocast_for, counted_flops, sync
from mclip_hbt.model.clip import MultilingualCLIP
from mclip_hbt.model.export import open_clip_config, open_clip_state_dict
from mclip_hbt.model.loss import ContrastiveLoss
from mclip_hbt.offline.bundled_e5 import resolve_model_name
from mclip_hbt.train.checkpoints import TrainingState
from mclip_hbt.train.config import TrainConfig
from mclip_hbt.train.loop import train_step

#: fp32 losses of the two sides must agree this closely (same weights, same tokens, eval mode).
FP32_LOSS_ATOL = 1e-4
Step = Callable[[], None]


# -------------------------------------------------------------------------------------- models

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
    ``mclip_hbt.model.export.open_clip_config``), its text encoder and tokenizer read from ``hf_folder``."""
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


# ---------------------------------------------------------------------------------- same loss

def same_loss_check(ours: MultilingualCLIP, theirs: torch.nn.Module, images: torch.Tensor, their_ids: torch.Tensor,
                    tokens: dict[str, torch.Tensor], device: torch.device, timed_precision: str) -> dict:
    """Both sides' loss on the batch, eval mode (no dropout), fp32 (and bf16 autocast when timed in it): the
    timings compare the same computation only if these agree."""
    ours_ids = [row[mask.bool()].tolist() for row, mask in zip(tokens["input_ids"], tokens["attention_mask"])]
    pad = theirs.text.config.pad_token_id
    theirs_ids = [row[row != pad].tolist() for row in their_ids.cpu()]
    # Both encoders are built by transformers' AutoModel; record which attention kernel each got.
    result = {"same_token_content": ours_ids == theirs_ids,
              "attn_implementation": {side: getattr(m.text.transformer.config, "_attn_implementation", None)
                                      for side, m in (("ours", ours), ("open_clip", theirs))}}
    ours.eval()
    theirs.eval()
    precisions = ["fp32"] + (["bf16"] if timed_precision == "bf16" else [])
    with torch.no_grad():
        for precision in precisions:
            with autocast_for(device, precision):
                a = ours(images, tokens.to(device))
                ours_loss = ContrastiveLoss(kind="clip")(**a)["loss"].float().item()
                b = theirs(images, their_ids)
                their_loss = ClipLoss()(b["image_features"], b["text_features"], b["logit_scale"]).float().item()
            text_diff = (a["text_features"].float() - b["text_features"].float()).abs().max().item()
            result[precision] = {"ours": round(ours_loss, 6), "open_clip": round(their_loss, 6),
                                 "abs_diff": abs(ours_loss - their_loss), "text_feature_max_abs_diff": text_diff}
    result["fp32_tolerance"] = FP32_LOSS_ATOL
    result["ok"] = result["same_token_content"] and result["fp32"]["abs_diff"] <= FP32_LOSS_ATOL
    ours.train()
    theirs.train()
    return result


# ------------------------------------------------------------------------------------ measuring

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
    """The step's peak allocation above what was allocated before it. CUDA: ``torch.cuda.max_memory_allocated``;
    CPU: the largest running sum of the allocations and frees that ``torch.profiler(profile_memory=True)`` records
    (the CPU allocator's tensors, not the process RSS, which glibc's caching and the other side's tensors blur)."""
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


def step_memory(step: Step, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> dict:
    """What one side holds between steps and what a step needs on top, measured on the next step."""
    resident = resident_bytes(model, optimizer)
    peak = step_peak_bytes(step, device)
    return {"resident_bytes": resident, "step_peak_bytes": peak, "total_gib": round((resident + peak) / 2 ** 30, 3)}


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
