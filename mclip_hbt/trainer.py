"""The training loop: shards → chunks → hybrid batches → contrastive loss → AdamW, under accelerate.

Read top to bottom: build everything, resume if asked, then one loop of optimizer steps with
checkpoints, a SIGTERM checkpoint, skipping of non-finite losses, and the final ``save_pretrained``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .data import ChunkLoader, FaultCounter, build_loader, expand_shards
from .hub import ModelUnavailableError
from .hybrid import HybridBatcher, HybridConfig
from .loss import ContrastiveLoss
from .model import TRAIN_META_NAME, MultilingualCLIP, create_model
from .train_config import TrainConfig, parse_config

logger = logging.getLogger("mclip_hbt.train")

CHECKPOINT_PREFIX = "step_"
STEP_LOG = "steps.jsonl"  # one line per step: rank 0's hybrid-batch record (mode, language, counts) and the loss


class TrainingState:
    """Counters that a checkpoint must restore beyond model/optimizer/scheduler/RNG."""

    def __init__(self):
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def endless_chunks(loader: ChunkLoader) -> Iterator[dict]:
    """The loader's chunks epoch after epoch (training length is counted in steps, not epochs)."""
    while True:
        yield from loader
        loader.set_epoch(loader.epoch + 1)


def build_model(config: TrainConfig) -> MultilingualCLIP:
    model = create_model(config.model, **(config.model_overrides or {}))
    if config.loss == "siglip" and model.logit_bias is None:
        raise ValueError("--loss siglip needs a model with a logit bias: add init_logit_bias (e.g. -10) to --model-overrides")
    if config.lock_image:
        model.lock_image_tower(config.image_unlocked_groups)
    if config.text_unlocked_layers >= 0:
        model.lock_text_tower(config.text_unlocked_layers)
    if config.freeze_word_embeddings:
        model.freeze_word_embeddings()
    model.text.length_groups = config.text_length_groups
    if config.grad_checkpointing:
        model.visual.set_grad_checkpointing(True)
        model.text.transformer.gradient_checkpointing_enable()
    return model


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and the logit scale/bias (open_clip's rule: ndim < 2)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                             fused=device.type == "cuda")


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones are never renamed into place)."""
    found = [p for p in (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, rank_state: dict, keep: int) -> Path:
    """Write model/optimizer/scheduler/scaler/RNG (accelerate) + each rank's data state, then rename atomically."""
    final = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(rank_state, tmp / f"rank_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(config: TrainConfig, output_dir: Path) -> Path | None:
    if config.resume == "none":
        return None
    if config.resume == "auto":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(config.resume)
    if not path.is_dir():
        raise ValueError(f"--resume: no checkpoint directory at {path}")
    return path


def open_step_log(path: Path, resumed_step: int):
    """Append-mode step log, first dropping lines past ``resumed_step`` (steps a resumed run redoes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] < resumed_step]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a", buffering=1)


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the end of the current step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def train_step(model, unwrapped: MultilingualCLIP, batch: dict, loss_fn: ContrastiveLoss,
               optimizer: torch.optim.Optimizer, accelerator: Accelerator, config: TrainConfig,
               state: TrainingState) -> tuple[dict[str, torch.Tensor], float]:
    """One optimizer step on one hybrid batch; a non-finite loss skips the update on every rank."""
    captions = list(batch["captions"])
    pair_mask = batch["pair_mask"]
    if config.text_pair_weight > 0:  # translations ride in the same text forward pass (one DDP forward)
        captions += [c for c in batch["pair_captions"] if c is not None]
    tokens = unwrapped.tokenize(captions).to(accelerator.device)
    images = batch["images"].to(accelerator.device, non_blocking=True)
    with accelerator.autocast():
        out = model(images, tokens)
        n = images.shape[0]
        text_features = out["text_features"]
        out["text_features"] = text_features[:n]
        pair_features = None
        if config.text_pair_weight > 0:
            pair_features = text_features.new_zeros(n, text_features.shape[1]).index_copy(
                0, pair_mask.nonzero().squeeze(1).to(accelerator.device), text_features[n:])
        losses = loss_fn(**out, pair_features=pair_features, pair_mask=pair_mask.to(accelerator.device))
    loss = losses["loss"]
    # Every rank must agree on skipping, or DDP's gradient all-reduce would hang.
    finite = accelerator.reduce(torch.isfinite(loss.detach()).float(), reduction="sum").item() == accelerator.num_processes
    if finite:
        accelerator.backward(loss)
        if config.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state.nonfinite_in_a_row = 0
    else:
        state.nonfinite_total += 1
        state.nonfinite_in_a_row += 1
        logger.warning("step %d: non-finite loss, step skipped (%d in a row)", state.step, state.nonfinite_in_a_row)
        if state.nonfinite_in_a_row >= config.max_nonfinite_steps:
            raise RuntimeError(f"{state.nonfinite_in_a_row} consecutive non-finite losses at step {state.step}: "
                               "lower --lr, use --mixed-precision bf16 instead of fp16, or check the data")
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # open_clip clamps the learnable temperature at 100
        unwrapped.logit_scale.clamp_(0, math.log(100))
    return {k: v.detach() for k, v in losses.items()}, out["logit_scale"].item()


def train(config: TrainConfig) -> Path:
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_seed(config.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    config.validate(world)
    local_batch = config.batch_size // world

    model = unwrapped = build_model(config)
    if accelerator.is_main_process:
        logger.info("parameters:\n%s", model.describe_parameters())
    optimizer = build_optimizer(model, config, accelerator.device)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    # The scheduler is not prepare()d: a prepared scheduler steps once per process, we step once per optimizer step.
    model, optimizer = accelerator.prepare(model, optimizer)
    if config.compile:
        model = torch.compile(model, dynamic=True)
    state = TrainingState()
    accelerator.register_for_checkpointing(scheduler, state)

    loader = build_loader(config.train_data, unwrapped.train_preprocess, weights=config.train_data_weights,
                          chunk_size=config.chunk_size, num_workers=config.workers, resampled=config.resampled,
                          seed=config.seed, rank=rank, world_size=world, shuffle_buffer=config.shuffle_buffer,
                          samples_per_epoch=config.samples_per_epoch,
                          draft_size=unwrapped.preprocess_cfg.size if isinstance(unwrapped.preprocess_cfg.size, int) else None)
    batcher = HybridBatcher(
        HybridConfig(alpha=config.alpha, lang_distribution=config.lang_distribution, temperature=config.temperature,
                     languages=config.language_list, text_pair_weight=config.text_pair_weight, seed=config.seed,
                     max_buffered_samples=config.max_buffered_samples, fallback_after=config.fallback_after),
        local_batch_size=local_batch, world_size=world, lang_counts=_dataset_lang_counts(config))
    loss_fn = ContrastiveLoss(kind=config.loss, text_pair_weight=config.text_pair_weight)

    resume_from = resolve_resume(config, output_dir)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        rank_state = torch.load(resume_from / f"rank_state_{rank}.pt", weights_only=False)
        loader.load_state_dict(rank_state["loader"])
        batcher.load_state_dict(rank_state["batcher"])  # the loader resumes after the chunks the batcher read
        logger.info("resumed from %s at step %d", resume_from, state.step)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(vars(config), indent=2, default=str) + "\n")
    if config.report_to != "none":
        accelerator.init_trackers("mclip_hbt", config={k: v for k, v in vars(config).items()
                                                       if isinstance(v, (int, float, str, bool))})

    stop = StopRequested()
    step_log = open_step_log(output_dir / STEP_LOG, state.step) if accelerator.is_main_process else None
    batches = iter(batcher(endless_chunks(loader)))
    progress = tqdm(total=config.max_steps, initial=state.step, disable=not accelerator.is_main_process,
                    desc="train", dynamic_ncols=True)
    window_start, window_samples = time.perf_counter(), 0
    model.train()
    while state.step < config.max_steps:
        batch = next(batches)
        losses, logit_scale = train_step(model, unwrapped, batch, loss_fn, optimizer, accelerator, config, state)
        scheduler.step()
        if accelerator.is_main_process:
            step_log.write(json.dumps({**batch["record"], "loss": round(losses["loss"].item(), 6)}) + "\n")
        state.step += 1
        window_samples += config.batch_size

        if state.step % config.log_every == 0 or state.step == config.max_steps:
            elapsed = time.perf_counter() - window_start
            metrics = {**{k: v.item() for k, v in losses.items()}, "logit_scale": logit_scale,
                       "lr": scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9),
                       "monolingual": float(batch["record"]["mode"] == "mono"),
                       "nonfinite_steps": state.nonfinite_total}
            metrics.update({f"lang/{k}": v for k, v in batch["record"]["lang_counts"].items()})
            metrics.update({f"faults/{k}": v for k, v in batcher.faults.items()})
            if config.report_to != "none":
                accelerator.log(metrics, step=state.step)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", sps=f"{metrics['samples_per_s']:.0f}",
                                 lr=f"{metrics['lr']:.2e}", mode=batch["record"]["mode"])
            window_start, window_samples = time.perf_counter(), 0
        progress.update(1)

        stop_now = accelerator.reduce(torch.tensor(float(stop.requested), device=accelerator.device), "sum").item() > 0
        periodic = config.checkpoint_every and state.step % config.checkpoint_every == 0
        if periodic or stop_now:
            save_checkpoint(accelerator, output_dir, state.step,
                            {"loader": loader.state_dict(), "batcher": batcher.state_dict()},
                            config.keep_checkpoints)
        if stop_now:
            logger.warning("stop requested: checkpoint written at step %d; resume with --resume auto", state.step)
            accelerator.end_training()
            sys.exit(143)
    progress.close()
    if step_log is not None:
        step_log.close()

    final_dir = output_dir / "model"
    faults = FaultCounter()
    for rank_faults in gather_object([dict(batcher.faults)]):
        faults.update(rank_faults)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(final_dir)
        meta = {"alpha": config.alpha, "seed": config.seed, "steps": state.step, "batch_size": config.batch_size,
                "lang_distribution": config.lang_distribution, "loss": config.loss, "train_data": config.train_data,
                "samples_seen": state.step * config.batch_size, "nonfinite_steps": state.nonfinite_total,
                "data_faults": dict(faults)}
        (final_dir / TRAIN_META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        logger.info("data faults (all processes): %s", faults.summary())
        logger.info("model written to %s", final_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_dir


def _dataset_lang_counts(config: TrainConfig) -> dict[str, int] | None:
    """Per-language sample counts from the dataset.json beside each source's shards (for the draws)."""
    counts: dict[str, int] = {}
    for stats_file in sorted({Path(s.url).parent / "dataset.json" for s in expand_shards(config.train_data)}):
        if not stats_file.is_file():
            return None
        for lang, c in json.loads(stats_file.read_text())["languages"].items():
            counts[lang] = counts.get(lang, 0) + c["samples"]
    return counts


def cli_main(argv: list[str] | None = None) -> None:
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    config = parse_config(argv, num_processes=num_processes)
    try:
        train(config)
    except (ModelUnavailableError, ValueError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
