"""The training loader: a stream of chunks of decoded samples from caption shards (docs/design.md §3).

It follows open_clip's ``get_wds_dataset`` (brace-expanded shard lists, ``::`` sources, an epoch-seeded
shard shuffle before splitting by rank and worker, a sample shuffle buffer, the model's image
transform), with two differences, both because training is distributed and the hybrid batcher picks
each step's caption language in the main process:

* workers yield **chunks** (``images``, ``captions``, ``mt``, ``keys``, ``faults``), not batches, and
  every sample keeps all its captions; each chunk carries the fault counts since its worker's previous
  chunk, and a slot's last chunk comes after its stream ends, so no count is lost;
* epochs are planned (``mclip_hbt.data.shard_plan``), so every rank yields the same number of chunks.

Resuming: ``ChunkLoader.state_dict()`` is ``{"epoch", "chunks_consumed"}`` (chunks handed to the consumer
on this rank). ``load_state_dict`` makes the next iteration skip those chunks: the loader delivers a
rank's chunks in a fixed order (round-robin over the workers that have chunks left, ``merge_order``), so
each worker knows how many of its own chunks were consumed, and it re-reads (but does not decode) their
raw samples to rebuild the same shuffle-buffer state. The remaining stream is the one the interrupted
run would have seen.
"""
from __future__ import annotations

import bisect
import logging
import multiprocessing
import os
import random
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mclip_hbt.data.samples import FaultCounter, decode_sample, read_tar_samples
from mclip_hbt.data.shard_plan import EpochPlan, SlotPlan, epoch_length, expand_shards, merge_order, plan_epoch
from mclip_hbt.data.urls import DEFAULT_STALL_S
from mclip_hbt.options import OptionError, option
from mclip_hbt.runtime import distributed_rank_world

logger = logging.getLogger(__name__)

#: A resampled worker gives up (yielding empty chunks) after this many consecutive shards without a sample.
_MAX_EMPTY_DRAWS = 100


# ---------------------------------------------------------------------------------------- datasets

@dataclass
class LoaderConfig:
    """Which shards the training samples come from and how they are read; each field is a ``train.py`` option."""

    train_data: str | Sequence[str] | None = option(None, "Training shards: brace patterns or directories; several "
                                                          "sources joined by '::'.")
    train_data_weights: str | Sequence[float] | None = option(None, "Sampling weights of the '::' sources, e.g. "
                                                                    "'1::0.5' (resampled mode).")
    resampled: bool = option(False, "Draw shards with replacement (infinite stream; recommended for multi-node "
                                    "runs).")
    samples_per_epoch: int | None = option(None, "With --resampled: samples per rank per epoch (default: the "
                                                 "shards' total / ranks).")
    workers: int = option(2, "DataLoader worker processes per rank (0 = decode in the main process).")
    chunk_size: int = option(32, "Samples per chunk that a worker hands to the hybrid batcher.")
    shuffle_buffer: int = option(1000, "Sample shuffle buffer per worker.")
    remote_timeout: float = option(DEFAULT_STALL_S, "Seconds an http(s) shard read may stall (or take to connect) "
                                                    "before the shard is given up as damaged (counted, skipped).")

    def __post_init__(self) -> None:
        if not self.remote_timeout >= 1:  # NaN too
            raise OptionError("remote_timeout", f"must be >= 1 second, got {self.remote_timeout}")
        for name, least in (("workers", 0), ("chunk_size", 1), ("shuffle_buffer", 0)):
            if getattr(self, name) < least:
                raise OptionError(name, f"must be >= {least}, got {getattr(self, name)}")


class SampleStream(IterableDataset):
    """Decoded samples of this rank (and DataLoader worker) for the current epoch, in stream order.

    Each sample also carries ``chunk``: the index of the chunk it belongs to in its slot's plan.
    """

    def __init__(self, config: LoaderConfig, image_transform: Callable, *, seed: int = 0, epoch: int = 0,
                 rank: int | None = None, world_size: int | None = None, draft_size: int | None = None):
        super().__init__()
        self.shards = expand_shards(config.train_data, config.train_data_weights, config.remote_timeout)
        self.remote_timeout = config.remote_timeout
        self.rank, self.world_size = distributed_rank_world(rank, world_size)
        samples_per_epoch = epoch_length(self.shards, resampled=config.resampled,
                                         samples_per_epoch=config.samples_per_epoch, world_size=self.world_size,
                                         weighted=config.train_data_weights is not None)
        self.image_transform = image_transform
        self.num_workers = config.workers
        self.chunk_size = config.chunk_size
        self.resampled = config.resampled
        self.seed = seed
        self.shuffle_buffer = config.shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.draft_size = draft_size
        # shared with (persistent) worker processes, like open_clip's SharedEpoch
        self._epoch = multiprocessing.RawValue("q", epoch)
        self._skip_chunks = multiprocessing.RawValue("q", 0)

    # --- position
    @property
    def epoch(self) -> int:
        return self._epoch.value

    @property
    def skip_chunks(self) -> int:
        return self._skip_chunks.value

    def set_epoch(self, epoch: int, chunks_consumed: int = 0) -> None:
        """Select the epoch (and the chunks of it this rank already consumed) for the next iteration."""
        self._epoch.value = epoch
        self._skip_chunks.value = chunks_consumed

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return plan_epoch(self.shards, epoch=self.epoch if epoch is None else epoch, seed=self.seed,
                          rank=self.rank, world_size=self.world_size, num_workers=self.num_workers,
                          chunk_size=self.chunk_size, resampled=self.resampled,
                          samples_per_epoch=self.samples_per_epoch)

    def __len__(self) -> int:
        """Chunks this rank yields in the next iteration."""
        return max(0, self.plan().chunks_per_rank - self.skip_chunks)

    # --- streaming
    def _worker(self) -> int:
        info = get_worker_info()
        if info is None:
            if self.num_workers > 1:
                raise RuntimeError(f"this stream is planned for {self.num_workers} DataLoader workers; "
                                   "iterate it through a DataLoader with that many workers")
            return 0
        if info.num_workers != max(1, self.num_workers):
            raise RuntimeError(f"stream planned for {self.num_workers} workers but the DataLoader has "
                               f"{info.num_workers}")
        return info.id

    def _raw_samples(self, slot: SlotPlan, worker: int, faults: FaultCounter) -> Iterator[dict]:
        if self.resampled:
            urls = [s.url for s in self.shards]
            weights = [s.weight * (s.size or 1) for s in self.shards]
            rng = random.Random(f"draws:{self.seed}:{self.epoch}:{self.rank}:{worker}")
            empty_draws = 0
            while empty_draws < _MAX_EMPTY_DRAWS:
                empty_draws += 1
                for sample in read_tar_samples(rng.choices(urls, weights)[0], faults, stall_s=self.remote_timeout):
                    empty_draws = 0
                    yield sample
            logger.error("no samples in %d consecutive shard draws; ending this worker's epoch early", _MAX_EMPTY_DRAWS)
            return
        # in a sample-level split every slot reads every shard; one of them reports damaged tars
        tar_faults = faults if slot.keep_offset == 0 else FaultCounter()
        for url, offset, size in slot.shards:
            for index, sample in enumerate(read_tar_samples(url, tar_faults, expected=size,
                                                            stall_s=self.remote_timeout)):
                if (offset + index) % slot.keep_every == slot.keep_offset:
                    yield sample

    def _consumed_chunks(self, worker: int, plan: EpochPlan) -> int:
        """How many of this worker's chunks the resume point covers."""
        return merge_order([s.num_chunks for s in plan.slots])[:self.skip_chunks].count(worker)

    def _stream(self, worker: int, plan: EpochPlan, faults: FaultCounter) -> Iterator[tuple[int, dict]]:
        """This worker's raw samples to decode, each with the index of its chunk in the plan.

        Raw, not decoded: a consumer learns that the stream passed a chunk before it decodes the
        next sample, so a chunk of faulty samples is handed on at once (a run waiting on broken data
        sees empty chunks arrive, not silence) and carries the faults of its own samples.
        """
        slot = plan.slots[worker]
        if slot.num_chunks == 0:
            return
        taken = self._consumed_chunks(worker, plan)
        starts = slot.chunk_starts()
        raw = self._raw_samples(slot, worker, faults)
        if self.shuffle_buffer > 1:
            rng = random.Random(f"samples:{self.seed}:{self.epoch}:{self.rank}:{worker}")
            raw = wds.shuffle(self.shuffle_buffer, max(1, self.shuffle_buffer // 5), rng=rng)(raw)
        skipping = taken > 0
        for index, sample in enumerate(raw):
            if self.resampled and index >= slot.num_samples:
                break
            chunk = bisect.bisect_right(starts, index) - 1
            if chunk < taken:  # consumed before a resume: read, not decoded
                continue
            if skipping:  # faults of the skipped part were reported by the run that consumed it
                faults.clear()
                skipping = False
            yield chunk, sample

    def _decode(self, raw: dict, faults: FaultCounter) -> dict | None:
        return decode_sample(raw, self.image_transform, faults, self.draft_size,
                             augment_seed=f"{self.seed}:{self.epoch}:{raw['__key__']}")

    def __iter__(self) -> Iterator[dict]:
        self.faults = FaultCounter()  # for single-process use; chunks carry them across processes
        for chunk, raw in self._stream(self._worker(), self.plan(), self.faults):
            sample = self._decode(raw, self.faults)
            if sample is not None:
                sample["chunk"] = chunk
                yield sample


class ChunkStream(SampleStream):
    """Yields this worker's planned chunks: ``{"images", "captions", "mt", "keys", "faults", "worker"}``.

    ``ChunkLoader`` puts them in ``merge_order`` and drops ``worker``.
    """

    def __iter__(self) -> Iterator[dict]:
        worker, plan, faults = self._worker(), self.plan(), FaultCounter()
        current = self._consumed_chunks(worker, plan)
        self._empty_images: torch.Tensor | None = None
        items = []
        for chunk, raw in self._stream(worker, plan, faults):
            while chunk > current:
                yield self._chunk(items, faults, worker)
                current, items = current + 1, []
            sample = self._decode(raw, faults)
            if sample is not None:
                items.append(sample)
        # the rest, possibly empty; the last carries the final faults
        for _ in range(current, plan.slots[worker].num_chunks):
            yield self._chunk(items, faults, worker)
            items = []

    def _chunk(self, items: list[dict], faults: FaultCounter, worker: int) -> dict:
        if items:
            images = torch.stack([s["image"] for s in items])
        else:
            if self._empty_images is None:
                # the transform's output shape, so empty chunks concatenate with full ones
                probe = self.image_transform(Image.new("RGB", (self.draft_size or 256,) * 2))
                self._empty_images = probe.new_empty((0, *probe.shape))
            images = self._empty_images
        return {"images": images, "captions": [s["captions"] for s in items], "mt": [s["mt"] for s in items],
                "keys": [s["key"] for s in items], "faults": faults.drain(), "worker": worker}


def _leave_stops_to_the_main_process(worker_id: int) -> None:
    """Ctrl-C, a scheduler or ``kill -- -PGID`` signal the whole process group; the main process alone
    decides how to stop (it checkpoints first), so a worker must not die of such a signal and leave the
    main process without data (PyTorch's SIGCHLD handler would then fail the run). The worker leaves the
    group; the main process still shuts it down (it signals the worker's pid), and a worker whose main
    process is gone exits by itself (PyTorch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # in case Ctrl-C comes before the worker has left the group
    os.setpgid(0, 0)


class ChunkLoader(DataLoader):
    """DataLoader over a ``ChunkStream``: tracks the epoch position and sums fault counts."""

    def __init__(self, stream: ChunkStream, *, pin_memory: bool = False):
        workers = stream.num_workers
        # Its own generator: worker seeds must not draw from (and so shift) the trainer's global RNG.
        super().__init__(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                         generator=torch.Generator().manual_seed(stream.seed),
                         worker_init_fn=_leave_stops_to_the_main_process,
                         persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
        self.chunks_consumed = stream.skip_chunks
        self.faults = FaultCounter()

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int, chunks_consumed: int = 0) -> None:
        self.dataset.set_epoch(epoch, chunks_consumed)
        self.chunks_consumed = chunks_consumed

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "chunks_consumed": self.chunks_consumed}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["epoch"]), int(state["chunks_consumed"]))

    def __iter__(self) -> Iterator[dict]:
        """This rank's chunks in ``merge_order`` (whatever worker delivers first), from the resume point."""
        self.faults = FaultCounter()
        self.chunks_consumed = self.dataset.skip_chunks
        plan = self.dataset.plan()
        order = deque(merge_order([s.num_chunks for s in plan.slots])[self.chunks_consumed:])
        waiting: dict[int, deque] = {w: deque() for w in range(len(plan.slots))}
        for chunk in super().__iter__():
            waiting[chunk.pop("worker")].append(chunk)
            while order and waiting[order[0]]:
                chunk = waiting[order.popleft()].popleft()
                self.chunks_consumed += 1
                self.faults.update_from(chunk)
                yield chunk
        self.dataset.set_epoch(self.epoch)  # a resume skip applies to one pass only
        log = logger.warning if self.faults.skipped() else logger.info
        log("epoch %d data: %s", self.epoch, self.faults.summary())


def build_loader(config: LoaderConfig, image_transform: Callable, *, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, draft_size: int | None = None, pin_memory: bool = False) -> ChunkLoader:
    """The training loader: chunks of ``config.chunk_size`` samples from ``config.workers`` worker processes.

    Do not ``accelerator.prepare()`` it: it already splits the data by rank. Call ``set_epoch`` before
    each epoch; save ``state_dict()`` with the trainer's checkpoint and resume with ``load_state_dict``.
    ``draft_size`` (the model's input size) turns on reduced-size JPEG decoding; ``pin_memory`` for
    copies to a GPU.
    """
    stream = ChunkStream(config, image_transform, seed=seed, rank=rank, world_size=world_size, draft_size=draft_size)
    return ChunkLoader(stream, pin_memory=pin_memory)
