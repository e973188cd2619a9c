"""Checkpoints: each process writes its files into ``step_N.tmp``, the main process a manifest last, then the folder is
renamed into place; reading one back restores the model, optimizer, scheduler, grad scaler, counters and each
process's RNG and data state.

Checkpoints hold only tensors and plain data: the model as safetensors, the rest in files read back with
``torch.load(weights_only=True)``, and a ``manifest.json`` written last, without which a folder is not a
checkpoint. Loading one can therefore not run code (accelerate's ``save_state`` pickles the registered objects,
and ``load_state`` unpickles them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from mclip_hbt.fileio import free_bytes, write_json_atomic
from mclip_hbt.model.clip import MultilingualCLIP
from mclip_hbt.options import OptionError

logger = logging.getLogger("mclip_hbt.train")

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MANIFEST = "manifest.json"  # written last: what makes a checkpoint folder complete
#: 2: each file's SHA-256 beside its size, and the options the run trained with (format 1: sizes only).
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
MODEL_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"  # optimizer, scheduler, grad scaler and TrainingState (main process)
#: What a failed write raises: the OS, torch's zip writer (a RuntimeError) and safetensors.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
#: What reading a damaged or foreign checkpoint file raises; weights_only refuses a pickle of anything
#: but tensors and plain data with an UnpicklingError.
READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError,
               pickle.UnpicklingError, SafetensorError)


class SaveError(RuntimeError):
    """A checkpoint or the final model could not be written; the message says what was kept."""


class TrainingState:
    """Counters that a checkpoint must restore beyond model/optimizer/scheduler/RNG, and the run's segments: the
    options it trained with from each step on (a resume with changed options, when allowed, starts a segment)."""

    def __init__(self):
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.segments: list[dict] = []  # {"from_step": int, "options": {name: value}}

    def samples_seen(self) -> int:
        """Samples trained on, segment by segment (each with its own batch size)."""
        ends = [s["from_step"] for s in self.segments[1:]] + [self.step]
        return sum((end - s["from_step"]) * s["options"]["batch_size"] for s, end in zip(self.segments, ends))

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


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
            failure = first_line(err)
    return next((f for f in gather_object([failure]) if f), None)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, unwrapped: MultilingualCLIP,
                    optimizer: torch.optim.Optimizer, scheduler, state: TrainingState, per_rank: Mapping[str, object],
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
        torch.save({"rng": rng_state(), **{name: obj.state_dict() for name, obj in per_rank.items()}},
                   tmp / rank_file(accelerator.process_index))

    def finish() -> None:
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in tmp.iterdir()}
        write_json_atomic(tmp / CHECKPOINT_MANIFEST, {
            "format": CHECKPOINT_FORMAT, "step": state.step, "world_size": accelerator.num_processes,
            "files": files, "options": state.segments[-1]["options"] if state.segments else None})
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
    """The manifest of a complete checkpoint of ``world_size`` processes; OptionError naming --resume otherwise."""
    def refuse(why: str):
        raise OptionError("resume", f"{path} {why}; pass another checkpoint, or --resume none to start over")

    try:
        manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    except FileNotFoundError:
        refuse(f"is not a complete checkpoint (no {CHECKPOINT_MANIFEST}: it was never finished, or another "
               "program or version wrote it)")
    except (OSError, ValueError) as err:
        refuse(f"has an unreadable {CHECKPOINT_MANIFEST} ({first_line(err)})")
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS \
            or not isinstance(manifest.get("files"), dict):
        refuse(f"has a {CHECKPOINT_MANIFEST} this version does not read")
    if manifest.get("world_size") != world_size:
        refuse(f"was written by {manifest.get('world_size')} process(es) and this run has {world_size}: "
               "resume it with as many")
    for name in [MODEL_FILE, TRAIN_STATE_FILE] + [rank_file(r) for r in range(world_size)]:
        file, recorded = path / name, manifest["files"].get(name)
        size, digest = (recorded, None) if manifest["format"] == 1 else (
            (recorded.get("bytes"), recorded.get("sha256")) if isinstance(recorded, dict) else (None, None))
        if not file.is_file() or file.stat().st_size != size:
            refuse(f"is damaged: {name} is missing or not the size its manifest records")
        if digest is not None and sha256_of(file) != digest:
            refuse(f"is damaged or was changed: {name} does not have the SHA-256 its manifest records")
    return manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_resume_options(manifest: dict, path: Path, options: dict, allow_changed: bool) -> None:
    """OptionError naming every option that differs from those the checkpoint's run trained with (what it trained
    on, how, from which model), unless ``allow_changed``; a checkpoint of format 1 recorded none."""
    before = manifest.get("options")
    if before is None or allow_changed:
        return
    changed = {name: (before.get(name), value) for name, value in options.items() if before.get(name) != value}
    if changed:
        listed = "; ".join(f"--{name.replace('_', '-')} {old!r} there, {new!r} now"
                           for name, (old, new) in changed.items())
        raise OptionError("resume", f"{path} was trained with other options ({listed}); resume with the same "
                                    "ones, or pass --allow-changed-options to go on with these (train_meta.json "
                                    "then records each segment's options)")


def resolve_resume(resume: str, output_dir: Path, world_size: int) -> tuple[Path, dict] | None:
    """The checkpoint ``--resume`` names and its manifest, checked complete (every file's size and SHA-256):
    ``auto`` the newest in ``output_dir``, ``none`` None."""
    if resume == "none":
        return None
    if resume == "auto":
        for ignored in checkpoints(output_dir, complete=False):
            logger.warning("ignoring %s: not a complete checkpoint (no %s)", ignored, CHECKPOINT_MANIFEST)
        found = checkpoints(output_dir)
        if not found:
            return None
        path = found[-1]
    else:
        path = Path(resume)
    return path, read_manifest(path, world_size)


def load_checkpoint(path: Path, accelerator: Accelerator, unwrapped: MultilingualCLIP,
                    optimizer: torch.optim.Optimizer, scheduler, state: TrainingState,
                    per_rank: Mapping[str, object]) -> None:
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
        for name, obj in per_rank.items():  # in the caller's order: the loader before the batcher that read it
            obj.load_state_dict(rank_state[name])
    except READ_ERRORS as err:
        raise OptionError("resume", f"{path / current} cannot be restored ({first_line(err)}): it is damaged, holds "
                         "something other than this trainer's tensors and plain data, or belongs to another model "
                         "or options; pass another checkpoint, or --resume none to start over") from None
