"""What the loop is fed, and how it stops: chunks epoch after epoch, a batch every process agrees it has, and
SIGTERM/SIGINT turned into a vote at the end of a step (or an exit while waiting for data)."""
from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mclip_hbt.data.hybrid import HybridBatcher
from mclip_hbt.data.loader import ChunkLoader


class NoUsableData(ValueError):
    """A whole epoch gave the hybrid batcher no sample to train on."""


class StopWhileWaiting(Exception):
    """A stop was requested while the data gave nothing to train on."""


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the end of the current step, or at once while it
    waits for data that gives nothing to train on. Leaving the ``with`` block reinstalls the old handlers."""

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.requested = True

    def voted(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop: all of them then stop after the same step."""
        flag = torch.tensor(float(self.requested), device=accelerator.device)
        return accelerator.reduce(flag, "sum").item() > 0

    def __enter__(self) -> "StopRequested":
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
