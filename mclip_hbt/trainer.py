"""The training loop: shards → chunks → hybrid batches → contrastive loss → AdamW, under accelerate.

Read top to bottom: claim the output folder, build everything, resume if asked, then one loop of
optimizer steps with checkpoints, a SIGTERM checkpoint, skipping of non-finite losses, a last
checkpoint and the final ``save_pretrained``.

Checkpoints hold only tensors and plain data: the model as safetensors, the optimizer, scheduler,
grad scaler and each process's RNG and data state in files read back with
``torch.load(weights_only=True)``, and a ``manifest.json`` written last, without which a folder is
not a checkpoint. Loading one can therefore not run code (accelerate's ``save_state`` pickles the
registered objects, and ``load_state`` unpickles them).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, gather_object, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .benchmark_images import BenchmarkSightings, read_benchmark_images
from .data import ChunkLoader
from .fileio import OutputError, atomic_directory, check_output_dir, free_bytes, write_json_atomic, write_text_atomic
from .hub import ModelUnavailableError
from .hybrid import HybridBatcher, summarize_records
from .loss import ContrastiveLoss
from .model import TRAIN_META_NAME, MultilingualCLIP, create_model
from .samples import FaultCounter
from .train_config import TrainConfig, parse_config

logger = logging.getLogger("mclip_hbt.train")

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MANIFEST = "manifest.json"  # written last: what makes a checkpoint folder complete
CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"  # optimizer, scheduler, grad scaler and TrainingState (main process)
#: One line per step: rank 0's hybrid-batch record (mode, language, counts), the loss, and when the step ended
#: (``time_s``, seconds since the training loop of this process started) after waiting ``data_s`` for its batch,
#: so throughput and input stalls can be read off any run (bench/train_e2e.py does).
STEP_LOG = "steps.jsonl"
LOCK_FILE = "train.lock"
#: What a failed write raises: the OS, torch's zip writer (a RuntimeError) and safetensors.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
#: What reading a damaged or foreign checkpoint file raises; weights_only refuses a pickle of anything
#: but tensors and plain data with an UnpicklingError.
READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError, pickle.UnpicklingError,
               SafetensorError)


class NoUsableData(ValueError):
    """A whole epoch gave the hybrid batcher no sample to train on."""


class StopWhileWaiting(Exception):
    """A stop was requested while the data gave nothing to train on."""


class SaveError(RuntimeError):
    """A checkpoint or the final model could not be written; the message says what was kept."""


class SetupError(Exception):
    """An option, the data, a checkpoint to resume or the output folder was refused before the first step."""


class TrainingStopped(Exception):
    """A stop (SIGTERM, SIGINT) ended the run; the message says which step ``--resume auto`` continues from."""


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


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the end of the current step, or at
    once while it waits for data that gives nothing to train on. ``restore()`` reinstalls the old handlers."""

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


# ------------------------------------------------------------------------------------------ data

def endless_chunks(loader: ChunkLoader, batcher: HybridBatcher, stop: StopRequested) -> Iterator[dict]:
    """The loader's chunks epoch after epoch (training length is counted in steps, not epochs).

    It never waits forever: a whole epoch in which the batcher kept no sample (corrupt or empty
    shards, no sample in --languages) raises NoUsableData, and a stop request while the chunks give
    nothing to train on raises StopWhileWaiting (the usual stop, after a step, would never come).
    """
    whole_epoch = loader.chunks_consumed == 0  # the rest of a resumed epoch proves nothing
    while True:
        kept_at_start, faults_at_start = batcher.samples_kept, Counter(batcher.faults)
        for chunk in loader:
            kept = batcher.samples_kept
            yield chunk
            if stop.requested and batcher.samples_kept == kept:
                raise StopWhileWaiting()
        if whole_epoch and batcher.samples_kept == kept_at_start:
            raise NoUsableData(_no_usable_data(loader, Counter(batcher.faults) - faults_at_start))
        loader.set_epoch(loader.epoch + 1)
        whole_epoch = True


def _no_usable_data(loader: ChunkLoader, faults: Counter) -> str:
    stream = loader.dataset
    urls = [s.url for s in stream.shards]
    names = ", ".join(urls[:3]) + (f" and {len(urls) - 3} more" if len(urls) > 3 else "")
    counts = ", ".join(f"{reason}={n}" for reason, n in sorted(faults.items())) or "no faults"
    where = f"process {stream.rank}: " if stream.world_size > 1 else ""
    fix = ("check --languages: these samples have captions in none of them" if faults.get("no_training_language")
           else "check the shards, or build them again with their recipe")
    return (f"no usable training data: {where}a whole epoch of {len(urls)} shard(s) ({names}) gave no sample to "
            f"train on ({counts}); {fix}")


def agree_on_batch(accelerator: Accelerator, problem: Exception | None) -> None:
    """Raise the same error on every process when any process has no batch for this step.

    Called before the step's collectives, which a process without a batch would never join.
    """
    flags = torch.tensor([float(isinstance(problem, NoUsableData)), float(isinstance(problem, StopWhileWaiting))],
                         device=accelerator.device)
    no_data, stopped = accelerator.reduce(flags, reduction="sum").tolist()
    if no_data:
        messages = gather_object([str(problem) if isinstance(problem, NoUsableData) else None])
        raise NoUsableData(next(m for m in messages if m))
    if stopped:
        raise StopWhileWaiting()


def read_step_log(path: Path) -> Iterator[dict]:
    """The complete step records of a step log; a line cut short when a run was killed mid-write is skipped."""
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            yield record


def open_step_log(path: Path, resumed_step: int):
    """Append-mode step log, first keeping only the complete records of steps before ``resumed_step``
    (a resumed run redoes the later ones)."""
    if path.exists():
        kept = [json.dumps(record) + "\n" for record in read_step_log(path) if record["step"] < resumed_step]
        write_text_atomic(path, "".join(kept))
    return open(path, "a", buffering=1)


# ------------------------------------------------------------------------------------ the model

def build_model(config: TrainConfig) -> MultilingualCLIP:
    model = create_model(config.model, **(config.model_overrides or {}))
    if config.loss == "siglip" and model.logit_bias is None:
        raise ValueError("--loss siglip needs a model with a logit bias: add init_logit_bias (e.g. -10) to "
                         "--model-overrides")
    if config.lock_image:
        model.lock_image_tower(config.image_unlocked_groups)
    if config.text_unlocked_layers >= 0:
        model.lock_text_tower(config.text_unlocked_layers)
    if config.freeze_word_embeddings:
        model.freeze_word_embeddings()
    model.text.length_groups = config.text_length_groups
    if config.channels_last:
        model.visual.to(memory_format=torch.channels_last)
    if config.grad_checkpointing:
        model.visual.set_grad_checkpointing(True)
        model.text.transformer.gradient_checkpointing_enable()
    return model


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and the logit scale/bias (open_clip's rule: ndim < 2).

    Fused on CUDA and on CPU: on CPU the fused step is about 8 times faster than the default (foreach) one
    over XLM-R's 250k-row word embeddings, and every AdamW step updates all rows."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                             fused=device.type in ("cuda", "cpu"))


# ------------------------------------------------------------------------------- output folder

class OutputLock:
    """Holds OUTPUT_DIR/train.lock for the run's life: one run per output folder.

    A POSIX record lock (``fcntl.lockf``) belongs to the process: the kernel drops it however the
    process ends, so a crashed run never blocks the next, and the DataLoader workers it forks do not
    hold it. The file names the holder for the refusal. The holder never opens the file again
    (closing any descriptor of it would drop the lock).
    """

    def __init__(self, output_dir: Path):
        path = output_dir / LOCK_FILE
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise OutputError(f"--output-dir: cannot lock {path} ({err.strerror}); choose a folder on a file "
                                  "system that supports locks") from None
            holder = path.read_text(errors="replace").strip() or "one that has not written its name yet"
            raise OutputError(f"--output-dir: {output_dir} is in use by another training run ({holder}); wait for "
                              "it to finish or choose another --output-dir") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())

    def release(self) -> None:
        os.close(self.fd)


def on_main(accelerator: Accelerator, work: Callable[[], object]) -> object:
    """``work()`` on the main process only; every process gets its result or raises its error.

    For what only the main process does (the output folder, the final export): the others must
    stop with it rather than wait for it in a collective.
    """
    result, failure = None, None
    if accelerator.is_main_process:
        try:
            result = work()
        except (ValueError, SaveError) as err:
            failure = err
    shared = None if failure is None else (isinstance(failure, SaveError), str(failure))
    result, shared = broadcast_object_list([result, shared])
    if failure is not None:
        raise failure
    if shared is not None:
        raise (SaveError if shared[0] else ValueError)(shared[1])
    return result


def check_output_dir_is_shared(output_dir: Path) -> None:
    """OutputError on every process unless every one sees the lock the main process just took: each writes its
    own files into every checkpoint, so on several machines the output folder must be on storage they share."""
    blind = [rank for rank, sees in enumerate(gather_object([(output_dir / LOCK_FILE).is_file()])) if not sees]
    if blind:
        raise OutputError(f"--output-dir: process(es) {', '.join(map(str, blind))} cannot see "
                          f"{output_dir / LOCK_FILE}, which the main process has written: with several machines "
                          "--output-dir must be on storage all of them share (NFS, Lustre, ...; README, 'Several "
                          "machines')")


# ---------------------------------------------------------------------------------- checkpoints

def checkpoint_step(path: Path) -> int | None:
    """The step in a checkpoint folder's name (``step_00000010``); None for other names (``step_00000010.tmp``)."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def checkpoints(output_dir: Path, complete: bool = True) -> list[Path]:
    """Checkpoint folders, oldest first: the complete ones (manifest written), or with ``complete=False``
    the ones without a manifest (never finished, or not written by this trainer)."""
    found = sorted((step, p) for p in (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")
                   if (step := checkpoint_step(p)) is not None and p.is_dir()
                   and (p / CHECKPOINT_MANIFEST).is_file() == complete)
    return [p for _, p in found]


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Delete the ``step_N.tmp`` folders a killed run left: never resumed from, they only take space."""
    for partial in (output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        logger.info("removing the partial checkpoint %s", partial)
        shutil.rmtree(partial, ignore_errors=True)


def rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def rng_state() -> dict:
    """This process's random generators as tensors and plain numbers (readable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_failure(accelerator: Accelerator, write: Callable[[], None] | None) -> str | None:
    """Run ``write`` here (None: nothing to write on this process); the first failure of any process, on all."""
    failure = None
    if write is not None:
        try:
            write()
        except WRITE_ERRORS as err:
            failure = _first_line(err)
    return next((f for f in gather_object([failure]) if f), None)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, unwrapped: MultilingualCLIP,
                    optimizer: torch.optim.Optimizer, scheduler, state: TrainingState, rank_state: dict,
                    keep: int) -> Path:
    """Write the checkpoint of ``state.step`` into ``step_N.tmp`` (each process its files, then the
    manifest) and rename it into place; keep the newest ``keep``.

    A failed write on any process (a full disk) removes ``step_N.tmp`` and raises SaveError on every
    process, naming the newest complete checkpoint, which is kept.
    """
    final = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    main = accelerator.is_main_process

    def prepare() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def write_own_files() -> None:
        if main:
            save_model(unwrapped, str(tmp / MODEL_FILE), force_contiguous=True)  # channels-last weights
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict(),
                        "training": state.state_dict()}, tmp / TRAIN_STATE_FILE)
        torch.save({"rng": rng_state(), **rank_state}, tmp / rank_file(accelerator.process_index))

    def finish() -> None:
        files = {p.name: p.stat().st_size for p in tmp.iterdir()}
        write_json_atomic(tmp / CHECKPOINT_MANIFEST, {"format": CHECKPOINT_FORMAT, "step": state.step,
                                                      "world_size": accelerator.num_processes, "files": files})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    failure = _first_failure(accelerator, prepare if main else None)
    for step in (write_own_files, finish if main else None):
        if failure is None:
            failure = _first_failure(accelerator, step)
    if failure is None:
        return final
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    complete = checkpoints(output_dir)
    kept = f"the last complete checkpoint, {complete[-1]}, is kept" if complete else "no checkpoint was written yet"
    raise SaveError(f"the checkpoint of step {state.step} could not be written ({failure}; "
                    f"{free_bytes(output_dir) / 2**20:.0f} MiB free in {output_dir}); its partial folder is removed "
                    f"and {kept}: free space, then run again with --resume auto")


def read_manifest(path: Path, world_size: int) -> dict:
    """The manifest of a complete checkpoint of ``world_size`` processes; ValueError naming --resume otherwise."""
    def refuse(why: str):
        raise ValueError(f"--resume: {path} {why}; pass another checkpoint, or --resume none to start over")

    try:
        manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    except FileNotFoundError:
        refuse(f"is not a complete checkpoint (no {CHECKPOINT_MANIFEST}: it was never finished, or another "
               "program or version wrote it)")
    except (OSError, ValueError) as err:
        refuse(f"has an unreadable {CHECKPOINT_MANIFEST} ({_first_line(err)})")
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        refuse(f"has a {CHECKPOINT_MANIFEST} this version does not read")
    if manifest.get("world_size") != world_size:
        refuse(f"was written by {manifest.get('world_size')} process(es) and this run has {world_size}: "
               "resume it with as many")
    for name in [MODEL_FILE, TRAIN_STATE_FILE] + [rank_file(r) for r in range(world_size)]:
        file = path / name
        if not file.is_file() or file.stat().st_size != manifest["files"].get(name):
            refuse(f"is damaged: {name} is missing or not the size its manifest records")
    return manifest


def resolve_resume(config: TrainConfig, output_dir: Path, world_size: int) -> Path | None:
    """The checkpoint to resume from (checked complete), or None to start fresh."""
    if config.resume == "none":
        return None
    if config.resume == "auto":
        for ignored in checkpoints(output_dir, complete=False):
            logger.warning("ignoring %s: not a complete checkpoint (no %s)", ignored, CHECKPOINT_MANIFEST)
        found = checkpoints(output_dir)
        if not found:
            return None
        path = found[-1]
    else:
        path = Path(config.resume)
    read_manifest(path, world_size)
    return path


def load_checkpoint(path: Path, accelerator: Accelerator, unwrapped: MultilingualCLIP,
                    optimizer: torch.optim.Optimizer, scheduler, state: TrainingState, loader: ChunkLoader,
                    batcher: HybridBatcher, sightings: BenchmarkSightings) -> None:
    """Restore everything ``save_checkpoint`` wrote, for this process.

    Only safetensors and ``torch.load(weights_only=True)`` read the files, so a file holding anything
    but tensors and plain data is refused, never run.
    """
    current = MODEL_FILE
    try:
        load_model(unwrapped, str(path / MODEL_FILE), device="cpu")
        current = TRAIN_STATE_FILE
        trained = torch.load(path / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(trained["optimizer"])
        scheduler.load_state_dict(trained["scheduler"])
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(trained["scaler"])
        state.load_state_dict(trained["training"])
        current = rank_file(accelerator.process_index)
        rank_state = torch.load(path / current, map_location="cpu", weights_only=True)
        set_rng_state(rank_state["rng"])
        loader.load_state_dict(rank_state["loader"])
        batcher.load_state_dict(rank_state["batcher"])  # the loader resumes after the chunks the batcher read
        sightings.load_state_dict(rank_state["benchmark_sightings"])
    except READ_ERRORS as err:
        raise ValueError(f"--resume: {path / current} cannot be restored ({_first_line(err)}): it is damaged, holds "
                         "something other than this trainer's tensors and plain data, or belongs to another model "
                         "or options; pass another checkpoint, or --resume none to start over") from None


# ------------------------------------------------------------------------------------- the loop

def train_step(model, unwrapped: MultilingualCLIP, batch: dict, loss_fn: ContrastiveLoss,
               optimizer: torch.optim.Optimizer, accelerator: Accelerator, config: TrainConfig,
               state: TrainingState) -> tuple[dict[str, torch.Tensor], float]:
    """One optimizer step on one hybrid batch; a non-finite loss skips the update on every rank."""
    captions = list(batch["captions"])
    pair_mask = batch["pair_mask"]
    if config.text_pair_weight > 0:  # translations ride in the same text forward pass (one DDP forward)
        captions += [c for c in batch["pair_captions"] if c is not None]
    tokens = unwrapped.tokenize(captions).to(accelerator.device)
    images = batch["images"].to(accelerator.device, non_blocking=True,
                                memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
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
    rank, world = accelerator.process_index, accelerator.num_processes
    lock: OutputLock | None = None

    def claim_output_dir() -> Path | None:
        """Before any work: a writable folder that no other run uses, no partial checkpoints, the resume point."""
        nonlocal lock
        check_output_dir(output_dir, "--output-dir")
        lock = OutputLock(output_dir)
        remove_partial_checkpoints(output_dir)
        return resolve_resume(config, output_dir, world)

    stop: StopRequested | None = None
    batches: Generator[dict, None, None] | None = None
    try:
        # Setup: what fails here is the caller's input (an option, the data, the output folder, a checkpoint
        # to resume) and becomes SetupError; a failure once the steps run is a fault and keeps its type.
        try:
            config.validate(world)
            set_seed(config.seed)
            resume_from = on_main(accelerator, claim_output_dir)
            check_output_dir_is_shared(output_dir)
            model = unwrapped = build_model(config)
            if accelerator.is_main_process:
                logger.info("parameters:\n%s", model.describe_parameters())
            on_main(accelerator, lambda: _check_room_for_model(unwrapped, output_dir))
            optimizer = build_optimizer(model, config, accelerator.device)
            scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
            # The scheduler is not prepare()d: a prepared scheduler steps once per process, we step once per
            # optimizer step.
            model, optimizer = accelerator.prepare(model, optimizer)
            if config.compile:
                model = torch.compile(model, dynamic=True)
            state = TrainingState()

            image_size = unwrapped.preprocess_cfg.size
            loader = config.build_loader(unwrapped.train_preprocess, rank, world,
                                         draft_size=image_size if isinstance(image_size, int) else None,
                                         pin_memory=accelerator.device.type == "cuda")
            batcher = config.build_batcher(world)
            sightings = BenchmarkSightings(read_benchmark_images(config.benchmark_data))
            if accelerator.is_main_process and sightings.benchmarks.warning():
                logger.warning("%s", sightings.benchmarks.warning())
            loss_fn = ContrastiveLoss(kind=config.loss, text_pair_weight=config.text_pair_weight)

            if resume_from is not None:
                load_checkpoint(resume_from, accelerator, unwrapped, optimizer, scheduler, state, loader, batcher,
                                sightings)
                logger.info("resumed from %s at step %d", resume_from, state.step)
            last_saved = state.step if resume_from is not None else None

            def checkpoint() -> None:
                nonlocal last_saved
                save_checkpoint(accelerator, output_dir, unwrapped, optimizer, scheduler, state,
                                {"loader": loader.state_dict(), "batcher": batcher.state_dict(),
                                 "benchmark_sightings": sightings.state_dict()},
                                config.keep_checkpoints)
                last_saved = state.step

            if accelerator.is_main_process:
                write_text_atomic(output_dir / "train_config.json",
                                  json.dumps(config.flat_options(), indent=2, default=str) + "\n")
            if config.report_to != "none":
                accelerator.init_trackers("mclip_hbt", config={k: v for k, v in config.flat_options().items()
                                                               if isinstance(v, (int, float, str, bool))})
        except (ModelUnavailableError, ValueError) as err:
            raise SetupError(str(err)) from err

        stop = StopRequested()
        step_log = open_step_log(output_dir / STEP_LOG, state.step) if accelerator.is_main_process else None
        batches = batcher(endless_chunks(loader, batcher, stop))
        progress = tqdm(total=config.max_steps, initial=state.step, disable=not accelerator.is_main_process,
                        desc="train", dynamic_ncols=True)
        loop_start = window_start = time.perf_counter()
        window_samples = 0
        model.train()
        while state.step < config.max_steps:
            wait_start = time.perf_counter()
            try:
                batch, problem = next(batches), None
            except (NoUsableData, StopWhileWaiting) as err:
                batch, problem = None, err
            data_s = time.perf_counter() - wait_start
            try:
                agree_on_batch(accelerator, problem)
            except StopWhileWaiting:
                kept = f"step {last_saved}" if last_saved is not None else "the start (no checkpoint yet)"
                accelerator.end_training()
                raise TrainingStopped(f"stop requested while waiting for data: no new checkpoint; --resume auto "
                                      f"continues from {kept}") from None
            sightings.observe(batch["keys"])
            losses, logit_scale = train_step(model, unwrapped, batch, loss_fn, optimizer, accelerator, config, state)
            scheduler.step()
            if accelerator.is_main_process:
                loss = round(losses["loss"].item(), 6)  # waits for the step, so time_s is when it ended
                step_log.write(json.dumps({**batch["record"], "loss": loss, "data_s": round(data_s, 4),
                                           "time_s": round(time.perf_counter() - loop_start, 4)}) + "\n")
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

            stop_flag = torch.tensor(float(stop.requested), device=accelerator.device)
            stop_now = accelerator.reduce(stop_flag, "sum").item() > 0
            periodic = config.checkpoint_every and state.step % config.checkpoint_every == 0
            if periodic or stop_now:
                checkpoint()
            if stop_now:
                accelerator.end_training()
                raise TrainingStopped(f"stop requested: checkpoint written at step {state.step}; resume with "
                                      "--resume auto")
        progress.close()
        if step_log is not None:
            step_log.close()
        if last_saved != state.step:  # the trained steps are safe on disk before the export
            checkpoint()

        final_dir = output_dir / "model"
        faults = FaultCounter()
        for rank_faults in gather_object([dict(batcher.faults)]):
            faults.update(rank_faults)
        meta = {"alpha": config.hybrid.alpha, "seed": config.seed, "steps": state.step,
                "mixed_precision": accelerator.mixed_precision,
                "batch_size": config.batch_size, "lang_distribution": config.hybrid.lang_distribution,
                "loss": config.loss, "train_data": config.data.train_data,
                "samples_seen": state.step * config.batch_size, "nonfinite_steps": state.nonfinite_total,
                "data_faults": dict(faults),
                "benchmark_images": sightings.summary(i for seen in gather_object([sorted(sightings.seen)])
                                                      for i in seen)}
        if accelerator.is_main_process:  # rank 0's batches, the ones its step log holds
            meta["batches"] = summarize_records(read_step_log(output_dir / STEP_LOG))
        on_main(accelerator, lambda: _export(unwrapped, final_dir, meta, output_dir))
        if accelerator.is_main_process:
            logger.info("data faults (all processes): %s", faults.summary())
            logger.info("model written to %s", final_dir)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return final_dir
    finally:
        if batches is not None:  # the loader's workers stop now, not whenever the garbage collector frees them
            batches.close()
        if stop is not None:
            stop.restore()
        if lock is not None:
            lock.release()


def _check_room_for_model(model: MultilingualCLIP, output_dir: Path) -> None:
    """Refuse a run whose output folder cannot even hold the final model (its tensors' bytes)."""
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    free = free_bytes(output_dir)
    if free < needed:
        raise OutputError(f"--output-dir: {output_dir} has {free / 2**20:.0f} MiB free, but the final model alone "
                          f"needs about {needed / 2**20:.0f} MiB (a checkpoint about 3 times that); free space or "
                          "choose another --output-dir")


def _export(model: MultilingualCLIP, final_dir: Path, meta: dict, output_dir: Path) -> None:
    """The final model folder with its train_meta.json, renamed into place whole; SaveError if it cannot be."""
    try:
        with atomic_directory(final_dir) as staging:
            model.save_pretrained(staging)
            write_json_atomic(staging / TRAIN_META_NAME, meta)
    except WRITE_ERRORS as err:
        raise SaveError(f"the final model could not be written to {final_dir} ({_first_line(err)}; "
                        f"{free_bytes(output_dir) / 2**20:.0f} MiB free); all {meta['steps']} steps are kept in "
                        f"{checkpoints(output_dir)[-1]}: free space, then run again with --resume auto to write "
                        "the model") from None


def cli_main(argv: list[str] | None = None) -> None:
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    config = parse_config(argv, num_processes=num_processes)
    try:
        train(config)
    except (SetupError, NoUsableData) as err:  # the input, not the program: one line, exit 2 like a bad flag
        _exit_with(err, 2)
    except SaveError as err:
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
