"""The training loop: shards → chunks → hybrid batches → contrastive loss → AdamW, under accelerate.

``train()`` reads top to bottom: set up (claim the output folder, build the model, optimizer, data and loss,
resume if asked), then one loop of optimizer steps, each logged, with a stop vote and a checkpoint cadence, then
a last checkpoint and the final model. Its parts live beside it: the batches and stops in ``feed``, checkpoints in
``checkpoints``, the output folder in ``output``, the step log in ``step_log``.

Only refusals of the caller's input (an option, the output folder, a model that cannot be had, data with nothing
to train on) end ``train.py`` with one line and exit 2; any other failure keeps its traceback.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mclip_hbt.data.benchmark_images import BenchmarkSightings, read_benchmark_images
from mclip_hbt.data.hybrid import HybridBatcher, summarize_records
from mclip_hbt.data.loader import ChunkLoader
from mclip_hbt.data.samples import FaultCounter
from mclip_hbt.fileio import OutputError, check_output_dir, check_replaceable, write_text_atomic
from mclip_hbt.model.clip import TRAIN_META_NAME, MultilingualCLIP, create_model
from mclip_hbt.model.loss import ContrastiveLoss
from mclip_hbt.offline.hub import ModelUnavailableError
from mclip_hbt.options import OptionError
from mclip_hbt.train.checkpoints import (
    SaveError,
    TrainingState,
    check_resume_options,
    load_checkpoint,
    remove_partial_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from mclip_hbt.train.config import TrainConfig, parse_config
from mclip_hbt.train.feed import NoUsableData, StopRequested, StopWhileWaiting, agree_on_batch, endless_chunks
from mclip_hbt.train.output import (
    OutputLock,
    check_output_dir_is_shared,
    check_room_for_model,
    export_final_model,
    on_main,
)
from mclip_hbt.train.step_log import STEP_LOG, StepLog, read_step_log
from mclip_hbt.train.text_learning import TextTeacher, add_lora, text_encoder_parameters

logger = logging.getLogger("mclip_hbt.train")

#: The caller's input was refused: one line and exit 2, like a bad flag.
USAGE_ERRORS = (OptionError, OutputError, ModelUnavailableError, NoUsableData)


class TrainingStopped(Exception):
    """A stop (SIGTERM, SIGINT) ended the run; the message says which step ``--resume auto`` continues from."""


def build_model(config: TrainConfig) -> MultilingualCLIP:
    model = create_model(config.model, **(config.model_overrides or {}))
    if config.loss == "siglip" and model.logit_bias is None:
        raise OptionError("loss", "siglip needs a model with a logit bias: add init_logit_bias (e.g. -10) to "
                                  "--model-overrides")
    if config.lock_image:
        model.lock_image_tower(config.image_unlocked_groups)
    if config.text_unlocked_layers >= 0:
        try:
            model.lock_text_tower(config.text_unlocked_layers)
        except ValueError as err:  # more layers than this encoder has
            raise OptionError("text_unlocked_layers", str(err)) from None
    if config.freeze_word_embeddings:
        model.freeze_word_embeddings()
    if config.text_learning.text_lora_rank:
        add_lora(model.text, config.text_learning)
    model.text.length_groups = config.text_length_groups
    if config.channels_last:
        model.visual.to(memory_format=torch.channels_last)
    if config.grad_checkpointing:
        model.visual.set_grad_checkpointing(True)
        model.text.transformer.gradient_checkpointing_enable()
    return model


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and the logit scale/bias (open_clip's rule: ndim < 2), and the
    text encoder's weights at ``--text-lr`` when it is given (the scheduler scales every group alike).

    Fused on CUDA and on CPU: every AdamW step updates all of XLM-R's 250k embedding rows, and on a CPU the
    fused step does that several times faster than the default (foreach) one (docs/results.md)."""
    text_lr = config.text_learning.text_lr
    text_ids = text_encoder_parameters(model) if text_lr is not None else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in text_ids, p.ndim >= 2), []).append(p)
    param_groups = [{"params": params, "weight_decay": config.weight_decay if decay else 0.0,
                     "lr": text_lr if in_text else config.lr} for (in_text, decay), params in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                             fused=device.type in ("cuda", "cpu"))


@dataclass
class Run:
    """What set-up builds for the loop; ``checkpoint()`` saves it."""

    accelerator: Accelerator
    config: TrainConfig
    output_dir: Path
    model: torch.nn.Module  # as prepared (DDP, torch.compile)
    unwrapped: MultilingualCLIP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainingState
    loader: ChunkLoader
    batcher: HybridBatcher
    sightings: BenchmarkSightings
    loss_fn: ContrastiveLoss
    teacher: TextTeacher | None = None
    last_saved: int | None = None

    def per_rank(self) -> dict[str, object]:
        """What each process keeps in a checkpoint beyond its RNG; the loader first, then the batcher that read it."""
        return {"loader": self.loader, "batcher": self.batcher, "benchmark_sightings": self.sightings}

    def checkpoint(self) -> None:
        save_checkpoint(self.accelerator, self.output_dir, self.unwrapped, self.optimizer, self.scheduler, self.state,
                        self.per_rank(), self.config.keep_checkpoints)
        self.last_saved = self.state.step


def claim_output_dir(config: TrainConfig, output_dir: Path, world: int, cleanup: contextlib.ExitStack) -> Path | None:
    """On the main process, before any work: a writable folder that no other run uses (locked until ``cleanup``
    closes), no partial checkpoints; returns the checkpoint to resume from."""
    check_output_dir(output_dir, "--output-dir")
    # The final model replaces OUTPUT_DIR/model whole: only a model an earlier run of this trainer wrote.
    check_replaceable(output_dir / "model", "--output-dir", lambda model: (model / TRAIN_META_NAME).is_file(),
                      flag=None)
    cleanup.callback(OutputLock(output_dir).release)
    remove_partial_checkpoints(output_dir)
    resolved = resolve_resume(config.resume, output_dir, world)
    if resolved is None:
        return None
    resume_from, manifest = resolved  # checked once: reading it hashes every file of the checkpoint
    check_resume_options(manifest, resume_from, config.trained_options(), config.allow_changed_options)
    return resume_from


def set_up(config: TrainConfig, accelerator: Accelerator, output_dir: Path, cleanup: contextlib.ExitStack) -> Run:
    rank, world = accelerator.process_index, accelerator.num_processes
    config.validate(world)
    set_seed(config.seed)
    resume_from = on_main(accelerator, lambda: claim_output_dir(config, output_dir, world, cleanup))
    check_output_dir_is_shared(output_dir)
    model = unwrapped = build_model(config)
    # The initial encoder, before any step and before a checkpoint is restored: what the student is kept near.
    teacher = (TextTeacher(unwrapped.text, config.text_learning).to(accelerator.device)
               if config.text_learning.text_distill_weight > 0 else None)
    if accelerator.is_main_process:
        logger.info("parameters:\n%s", model.describe_parameters())
    on_main(accelerator, lambda: check_room_for_model(unwrapped, output_dir))
    optimizer = build_optimizer(model, config, accelerator.device)
    # Not prepare()d: a prepared scheduler steps once per process, we step once per optimizer step.
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if config.compile:
        model = torch.compile(model, dynamic=True)
    image_size = unwrapped.preprocess_cfg.size
    loader = config.build_loader(unwrapped.train_preprocess, rank, world,
                                 draft_size=image_size if isinstance(image_size, int) else None,
                                 pin_memory=accelerator.device.type == "cuda")
    sightings = BenchmarkSightings(read_benchmark_images(config.benchmark_data))
    if accelerator.is_main_process and sightings.benchmarks.warning():
        logger.warning("%s", sightings.benchmarks.warning())
    run = Run(accelerator, config, output_dir, model, unwrapped, optimizer, scheduler, TrainingState(), loader,
              config.build_batcher(world), sightings,
              ContrastiveLoss(kind=config.loss, text_pair_weight=config.text_pair_weight), teacher)
    if resume_from is not None:
        load_checkpoint(resume_from, accelerator, unwrapped, optimizer, scheduler, run.state, run.per_rank())
        run.last_saved = run.state.step
        logger.info("resumed from %s at step %d", resume_from, run.state.step)
    options = config.trained_options()
    if not run.state.segments:  # a fresh run, or a checkpoint from before segments were recorded
        run.state.segments.append({"from_step": 0, "options": options})
    elif run.state.segments[-1]["options"] != options:  # a resume with changes the user allowed
        run.state.segments.append({"from_step": run.state.step, "options": options})
    if accelerator.is_main_process:  # the precision the launcher chose, so a re-run from this file trains alike
        recorded = {**config.flat_options(), "mixed_precision": accelerator.mixed_precision}
        write_text_atomic(output_dir / "train_config.json", json.dumps(recorded, indent=2, default=str) + "\n")
    if config.report_to != "none":
        accelerator.init_trackers("mclip_hbt", config={k: v for k, v in config.flat_options().items()
                                                       if isinstance(v, (int, float, str, bool))})
    return run


def train_step(model, unwrapped: MultilingualCLIP, batch: dict, loss_fn: ContrastiveLoss,
               optimizer: torch.optim.Optimizer, accelerator: Accelerator, config: TrainConfig,
               state: TrainingState, teacher: TextTeacher | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """One optimizer step on one hybrid batch; a non-finite loss skips the update on every rank. With a
    ``teacher``, the preservation term on every caption of the batch joins the loss (``text_distill``)."""
    captions = list(batch["captions"])
    pair_mask = batch["pair_mask"]
    if config.text_pair_weight > 0:  # translations ride in the same text forward pass (one DDP forward)
        captions += [c for c in batch["pair_captions"] if c is not None]
    tokens = unwrapped.tokenize(captions).to(accelerator.device)
    images = batch["images"].to(accelerator.device, non_blocking=True,
                                memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    with accelerator.autocast():
        out = model(images, tokens, return_text_pooled=teacher is not None)
        text_pooled = out.pop("text_pooled", None)
        n = images.shape[0]
        text_features = out["text_features"]
        out["text_features"] = text_features[:n]
        pair_features = None
        if config.text_pair_weight > 0:
            pair_features = text_features.new_zeros(n, text_features.shape[1]).index_copy(
                0, pair_mask.nonzero().squeeze(1).to(accelerator.device), text_features[n:])
        losses = loss_fn(**out, pair_features=pair_features, pair_mask=pair_mask.to(accelerator.device))
        if teacher is not None:
            losses["text_distill"] = teacher.loss(text_pooled, tokens)
            losses["loss"] = losses["loss"] + teacher.weight * losses["text_distill"]
    loss = losses["loss"]
    # Every rank must agree on skipping, or DDP's gradient all-reduce would hang.
    finite = (accelerator.reduce(torch.isfinite(loss.detach()).float(), reduction="sum").item()
              == accelerator.num_processes)
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
    with contextlib.ExitStack() as cleanup:  # closes the loader's workers, the signal handlers and the lock
        run = set_up(config, accelerator, output_dir, cleanup)
        state = run.state
        stop = cleanup.enter_context(StopRequested())
        step_log = cleanup.enter_context(StepLog(output_dir / STEP_LOG, state.step, accelerator.is_main_process))
        batches = cleanup.enter_context(contextlib.closing(run.batcher(endless_chunks(run.loader, run.batcher, stop))))
        progress = cleanup.enter_context(tqdm(total=config.max_steps, initial=state.step, dynamic_ncols=True,
                                              disable=not accelerator.is_main_process, desc="train"))
        meter = Throughput()
        run.model.train()
        while state.step < config.max_steps:
            batch, data_s = next_batch(run, batches)
            run.sightings.observe(batch["keys"])
            losses, logit_scale = train_step(run.model, run.unwrapped, batch, run.loss_fn, run.optimizer, accelerator,
                                             config, state, run.teacher)
            run.scheduler.step()
            step_log.write(batch["record"], losses["loss"], data_s)
            state.step += 1
            meter.add(config.batch_size)
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                report(run, losses, logit_scale, batch["record"], meter.rate(), progress)
            progress.update(1)
            stop_now = stop.voted(accelerator)
            if stop_now or (config.checkpoint_every and state.step % config.checkpoint_every == 0):
                run.checkpoint()
            if stop_now:
                accelerator.end_training()
                raise TrainingStopped(f"stop requested: checkpoint written at step {state.step}; resume with "
                                      "--resume auto")
        if run.last_saved != state.step:  # the trained steps are safe on disk before the export
            run.checkpoint()
        return finish(run)


def next_batch(run: Run, batches) -> tuple[dict, float]:
    """The step's batch and how long it was waited for, once every process has one (else the same error on all)."""
    wait_start = time.perf_counter()
    try:
        batch, problem = next(batches), None
    except (NoUsableData, StopWhileWaiting) as err:
        batch, problem = None, err
    data_s = time.perf_counter() - wait_start
    try:
        agree_on_batch(run.accelerator, problem)
    except StopWhileWaiting:
        kept = f"step {run.last_saved}" if run.last_saved is not None else "the start (no checkpoint yet)"
        run.accelerator.end_training()
        raise TrainingStopped(f"stop requested while waiting for data: no new checkpoint; --resume auto "
                              f"continues from {kept}") from None
    return batch, data_s


class Throughput:
    """Samples per second since the last report."""

    def __init__(self):
        self.start, self.samples = time.perf_counter(), 0

    def add(self, samples: int) -> None:
        self.samples += samples

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.start, 1e-9)
        self.start, self.samples = now, 0
        return rate


def report(run: Run, losses: dict[str, torch.Tensor], logit_scale: float, record: dict, samples_per_s: float,
           progress: tqdm) -> None:
    """The metrics of the step just taken, to the trackers and the progress bar."""
    metrics = {**{k: v.item() for k, v in losses.items()}, "logit_scale": logit_scale,
               "lr": run.scheduler.get_last_lr()[0], "samples_per_s": samples_per_s,
               "monolingual": float(record["mode"] == "mono"), "nonfinite_steps": run.state.nonfinite_total}
    metrics.update({f"lang/{k}": v for k, v in record["lang_counts"].items()})
    metrics.update({f"faults/{k}": v for k, v in run.batcher.faults.items()})
    if run.config.report_to != "none":
        run.accelerator.log(metrics, step=run.state.step)
    progress.set_postfix(loss=f"{metrics['loss']:.3f}", sps=f"{samples_per_s:.0f}", lr=f"{metrics['lr']:.2e}",
                         mode=record["mode"])


def finish(run: Run) -> Path:
    """The final model folder with what the run did in its ``train_meta.json``."""
    accelerator, config, state = run.accelerator, run.config, run.state
    final_dir = run.output_dir / "model"
    faults = FaultCounter()
    for rank_faults in gather_object([dict(run.batcher.faults)]):
        faults.update(rank_faults)
    meta = {"alpha": config.hybrid.alpha, "seed": config.seed, "steps": state.step,
            "mixed_precision": accelerator.mixed_precision,
            "batch_size": config.batch_size, "lang_distribution": config.hybrid.lang_distribution,
            "loss": config.loss, "train_data": config.data.train_data,
            "samples_seen": state.samples_seen(), "nonfinite_steps": state.nonfinite_total,
            "segments": state.segments,
            "data_faults": dict(faults),
            "benchmark_images": run.sightings.summary(i for seen in gather_object([sorted(run.sightings.seen)])
                                                      for i in seen)}
    if accelerator.is_main_process:  # rank 0's batches, the ones its step log holds
        meta["batches"] = summarize_records(read_step_log(run.output_dir / STEP_LOG))
    on_main(accelerator, lambda: export_final_model(run.unwrapped, final_dir, meta, run.output_dir))
    if accelerator.is_main_process:
        logger.info("data faults (all processes): %s", faults.summary())
        logger.info("model written to %s", final_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_dir


def cli_main(argv: list[str] | None = None) -> None:
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    config = parse_config(argv, num_processes=num_processes)
    try:
        train(config)
    except USAGE_ERRORS as err:  # the input, not the program: one line, exit 2 like a bad flag
        _exit_with(err, 2)
    except SaveError as err:  # the disk, not the program: one line saying what was kept
        _exit_with(err, 1)
    except TrainingStopped as stopped:  # 128 + SIGTERM, what a scheduler expects of a run it stopped
        if int(os.environ.get("RANK", "0")) == 0:
            logger.warning("%s", stopped)
        sys.exit(143)


def _exit_with(err: Exception, code: int) -> None:
    """One line on stderr, from the main process only (every process raises the same error), then exit."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"train.py: error: {err}", file=sys.stderr)
    sys.exit(code)
