"""Streaming loader for caption shards (``mclip_hbt.shards`` format) that yields chunks of samples.

The pipeline follows open_clip's ``get_wds_dataset``: brace-expanded shard lists, several sources
joined by ``::``, an epoch-seeded shard shuffle before splitting by rank and by DataLoader worker,
tolerant tar reading, a sample shuffle buffer, PIL decoding and the model's image transform. Two
things differ, both because training is distributed and the hybrid batcher picks each step's
caption language in the main process:

* Workers yield **chunks** (``images``, ``captions``, ``mt``, ``keys``, ``faults``), not batches,
  and every sample keeps all its captions.
* Epochs are **planned**. From ``sizes.json`` every rank computes the same assignment of shards to
  (rank, worker) slots and hence how many samples each slot reads. Chunks are defined by *stream
  position*: a slot's k-th raw sample belongs to chunk ``k * num_chunks // num_samples``-ish (an
  even split), so a faulty sample only makes its chunk smaller. Every rank yields exactly
  ``chunks_per_rank`` chunks per epoch — in non-resampled mode one epoch reads each sample exactly
  once across all ranks and workers, and no rank runs out of data before the others (which would
  hang DDP). In resampled mode every rank yields ``ceil(samples_per_epoch / chunk_size)`` chunks
  of shards drawn with replacement (weighted by source, seeded per epoch, rank and worker).

Placement rules:

* ``num_shards >= world_size * num_workers``: shards go to ranks, then to each rank's workers,
  largest first to the least-loaded one (ties in epoch-shuffle order), which keeps per-rank sample
  counts close; lighter ranks simply get smaller chunks.
* fewer shards than slots: every slot reads every shard and keeps the samples whose epoch position
  ``p`` has ``p % num_slots == slot`` (sample-level split; correct, but each slot reads all bytes).
* A chunk may hold fewer than ``chunk_size`` samples, or none (all its samples were faulty, a tar
  was truncated, or a light rank pads to the common chunk count). Consumers must accept empty
  chunks; their ``faults`` still count.

Faults never stop the stream. Reasons: ``bad_tar`` (unreadable or truncated shard: the complete
samples before the damage are kept), ``bad_image`` (undecodable bytes), ``missing_image``,
``bad_json`` (unparsable ``KEY.json`` or wrong types), ``no_captions`` (no json, or no caption left)
are skipped samples; ``unknown_language`` counts samples that lost captions in a language code
``canonical_lang`` rejects — the sample is kept with its other languages (and skipped as
``no_captions`` only if none remain). Each worker logs the first fault of each reason with its shard
URL; each chunk carries the counts since the worker's previous chunk, and a slot's last chunk is
emitted after its stream ends, so no count is lost. ``ChunkLoader`` sums them per epoch.

Resuming: ``ChunkLoader.state_dict()`` is ``{"epoch", "chunks_consumed"}`` (chunks handed to the
consumer on this rank). ``load_state_dict`` (or ``set_epoch(epoch, chunks_consumed=n)``) makes the
next iteration skip those chunks: the loader delivers a rank's chunks in a fixed order (round-robin
over the workers that have chunks left, ``merge_order``), so each worker knows how many of its own
chunks were consumed, and it re-reads (but does not decode) their raw samples to rebuild the same
shuffle-buffer state. The plan, the shard
shuffle, the sample shuffle and the resampled shard draws are pure functions of (seed, epoch,
rank, worker), so the remaining stream is the one the interrupted run would have seen.
"""
from __future__ import annotations

import bisect
import glob
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import tarfile
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from mclip_hbt.fileio import parse_json
from mclip_hbt.images import ImageError, open_image
from mclip_hbt.languages import canonical_lang
from mclip_hbt.options import OptionError, option
from mclip_hbt.runtime import distributed_rank_world
from mclip_hbt.shards import IMAGE_EXTS

logger = logging.getLogger(__name__)

#: Fault reasons that drop a sample (``unknown_language`` only drops captions).
SKIP_REASONS = ("bad_tar", "bad_image", "missing_image", "bad_json", "no_captions")

#: A resampled worker gives up (yielding empty chunks) after this many consecutive shards without a sample.
_MAX_EMPTY_DRAWS = 100


class FaultCounter(Counter):
    """Per-reason fault counts: recorded by workers, summed by consumers from chunks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._warned: set[str] = set()

    def record(self, reason: str, where: str, detail: str = "") -> None:
        """Count one fault; log the first one of each reason (later ones are only counted)."""
        self[reason] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("data fault %s in %s%s (further %r faults in this worker are counted, not logged)",
                           reason, where, f": {detail}" if detail else "", reason)

    def drain(self) -> dict[str, int]:
        """Return the counts and reset them (what a chunk carries)."""
        counts = dict(self)
        self.clear()
        return counts

    def update_from(self, chunk: dict) -> None:
        """Add a chunk's ``faults``."""
        self.update(chunk.get("faults", {}))

    def skipped(self) -> int:
        return sum(self[r] for r in SKIP_REASONS)

    def summary(self) -> str:
        if not self:
            return "no data faults"
        parts = ", ".join(f"{reason}={count}" for reason, count in sorted(self.items()))
        return f"{self.skipped()} samples skipped ({parts})"


# ----------------------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Shard:
    url: str
    size: int | None  # samples, from sizes.json; None when the directory has no sizes.json
    weight: float  # source weight, for resampling


def _sizes_file(directory: str, cache: dict[str, dict | None]) -> dict | None:
    """A directory's parsed ``sizes.json`` (read once per directory); None when absent or unreadable."""
    if directory not in cache:
        try:
            with wds.gopen(os.path.join(directory, "sizes.json")) as stream:
                sizes = json.load(stream)
            cache[directory] = sizes if isinstance(sizes, dict) else None
        except (OSError, ValueError):
            cache[directory] = None
    return cache[directory]


def _read_sizes(url: str, cache: dict[str, dict | None]) -> int | None:
    directory, name = os.path.split(url)
    sizes = _sizes_file(directory, cache)
    return None if sizes is None or name not in sizes else int(sizes[name])


def _check_directory(source: str, tar_paths: list[str], cache: dict[str, dict | None]) -> None:
    """A shard folder's ``sizes.json`` must list exactly its ``.tar`` files.

    The recipes write ``sizes.json`` after the shards (and delete an old one first), so a folder
    without it, or with one naming other files, is a write that was interrupted: new shards mixed
    with old ones, or a count that no longer matches.
    """
    if not tar_paths:
        return
    sizes = _sizes_file(os.path.dirname(tar_paths[0]), cache)
    redo = "it looks like an interrupted write: re-run the recipe that made it (data_recipes.from_captions, " \
           "synth_scenes or translate) into an empty folder"
    if sizes is None:
        raise OptionError("train_data", f"{source} holds {len(tar_paths)} .tar shard(s) but no readable sizes.json; "
                                      f"{redo}")
    present = {os.path.basename(path) for path in tar_paths}
    unlisted, missing = sorted(present - sizes.keys()), sorted(sizes.keys() - present)
    if unlisted or missing:
        raise OptionError("train_data", f"{source}: sizes.json does not match the .tar files present "
                                      f"({len(unlisted)} not listed, e.g. {unlisted[:3]}; {len(missing)} listed but "
                                      f"absent, e.g. {missing[:3]}); {redo}")


def expand_shards(urls: str | Sequence[str], weights: str | Sequence[float] | None = None) -> list[Shard]:
    """Expand ``"a/s-{000..009}.tar::b/s-{0..3}.tar"`` (or a list of such sources) into shards.

    A source that is a local directory stands for the ``*.tar`` files in it.

    ``weights`` (``"1::2"`` or a list, one per source) scale how often a source's shards are drawn
    in resampled mode; like open_clip's upsampling factors, weight 1 everywhere samples in
    proportion to source size (a shard's draw probability is weight × its sample count).
    """
    sources = urls.split("::") if isinstance(urls, str) else list(urls)
    if weights is None:
        factors = [1.0] * len(sources)
    else:
        given = weights.split("::") if isinstance(weights, str) else list(weights)
        try:
            factors = [float(w) for w in given]
        except (TypeError, ValueError):
            raise OptionError("train_data_weights", "data weights must be numbers, one per source, like "
                                                    f"'1::0.5'; got {weights!r}") from None
        if len(factors) != len(sources):
            raise OptionError("train_data_weights", f"got {len(factors)} data weights for {len(sources)} sources")
        if not all(math.isfinite(w) and w >= 0 for w in factors) or not any(w > 0 for w in factors):
            raise OptionError("train_data_weights", "data weights must be finite, >= 0 and not all zero; got "
                                                    f"{weights!r}")
    sizes_cache: dict[str, dict | None] = {}
    shards = []
    for source, factor in zip(sources, factors):
        is_dir = "://" not in source and os.path.isdir(source)
        if is_dir:
            urls_of_source = sorted(glob.glob(os.path.join(source, "*.tar")))
            _check_directory(source, urls_of_source, sizes_cache)
        else:
            try:
                urls_of_source = wds.shardlists.expand_urls(source)
            except ValueError as err:  # a brace pattern webdataset cannot expand
                raise OptionError("train_data", str(err)) from None
        for url in urls_of_source:
            shards.append(Shard(url, _read_sizes(url, sizes_cache), factor))
    if not shards:
        raise OptionError("train_data", f"no shards in {urls!r}")
    return shards


def epoch_length(shards: Sequence[Shard], *, resampled: bool, samples_per_epoch: int | None, world_size: int,
                 weighted: bool = False) -> int | None:
    """Samples per rank per epoch in resampled mode (default: the shards' total / ranks), None otherwise.

    Raises ``OptionError`` for options no epoch can be planned from (the trainer checks them
    with this before it builds a model): shards that hold no samples, weights without resampling,
    a non-resampled epoch without ``sizes.json`` counts, a bad ``samples_per_epoch``.
    """
    missing = [s.url for s in shards if s.size is None]
    if not missing and not any(s.size for s in shards):
        raise OptionError("train_data", f"the {len(shards)} shard(s) hold no samples (sizes.json gives 0 for "
                                        f"each, e.g. {shards[0].url}): build them again")
    if weighted and not resampled:
        raise OptionError("train_data_weights", "data weights need resampled mode (--resampled), as in open_clip")
    if not resampled:
        if samples_per_epoch is not None:
            raise OptionError("samples_per_epoch", "sets the epoch length of resampled mode only (add --resampled)")
        if missing:
            raise OptionError("train_data", f"no sample count for {missing[0]} ({len(missing)} shards): a "
                                            "non-resampled epoch is planned from sizes.json beside the shards "
                                            "(mclip_hbt.shards writes it)")
        return None
    if samples_per_epoch is None:
        if missing:
            raise OptionError("samples_per_epoch",
                                  "resampled mode needs it when the shards have no sizes.json")
        return math.ceil(sum(s.size for s in shards) / world_size)
    if samples_per_epoch < 1:
        raise OptionError("samples_per_epoch", f"must be >= 1, got {samples_per_epoch}")
    return samples_per_epoch


# -------------------------------------------------------------------------------------- epoch plan

@dataclass(frozen=True)
class SlotPlan:
    """What one (rank, worker) slot reads in one epoch."""

    shards: tuple[tuple[str, int, int], ...]  # (url, epoch position of its first sample, size), in read order
    keep_every: int  # sample-level split: keep epoch positions p with p % keep_every == keep_offset
    keep_offset: int
    num_samples: int  # planned raw samples of this slot
    num_chunks: int

    def chunk_starts(self) -> list[int]:
        """First stream index of each chunk: an even split of ``num_samples`` into ``num_chunks``."""
        return [c * self.num_samples // self.num_chunks for c in range(self.num_chunks)]


@dataclass(frozen=True)
class EpochPlan:
    slots: tuple[SlotPlan, ...]  # this rank's workers
    chunks_per_rank: int


def _least_loaded(loads: list[int]) -> int:
    return min(range(len(loads)), key=lambda i: (loads[i], i))


def _spread_chunks(sizes: list[int], total: int, chunk_size: int) -> list[int]:
    """Chunks per worker: enough for ``chunk_size`` each, extra ones to the fullest, ``total`` in all."""
    chunks = [math.ceil(s / chunk_size) for s in sizes]
    if not any(sizes):  # a rank without samples still yields the common count, as empty chunks
        chunks[0] = total
        return chunks
    for _ in range(total - sum(chunks)):
        fullest = max((i for i in range(len(sizes)) if sizes[i]), key=lambda i: (sizes[i] / chunks[i], -i))
        chunks[fullest] += 1
    return chunks


def plan_epoch(shards: Sequence[Shard], *, epoch: int, seed: int, rank: int, world_size: int, num_workers: int,
               chunk_size: int, resampled: bool, samples_per_epoch: int | None = None) -> EpochPlan:
    """Every rank computes the same plan, so all agree on the chunk count without communicating."""
    workers = max(1, num_workers)
    if resampled:
        per_rank = math.ceil(samples_per_epoch / chunk_size)
        chunks = [per_rank // workers + (w < per_rank % workers) for w in range(workers)]
        slots = tuple(SlotPlan((), 1, 0, n * chunk_size, n) for n in chunks)
        return EpochPlan(slots, per_rank)

    order = list(shards)
    random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    offsets, position = [], 0
    for shard in order:
        offsets.append(position)
        position += shard.size
    entries = [(s.url, off, s.size) for s, off in zip(order, offsets)]
    num_slots = world_size * workers

    if len(order) >= num_slots:
        # two-level largest-first placement; the stable sort keeps the epoch shuffle among equal sizes
        by_size = sorted(range(len(order)), key=lambda i: -order[i].size)
        rank_loads, rank_items = [0] * world_size, [[] for _ in range(world_size)]
        for i in by_size:
            r = _least_loaded(rank_loads)
            rank_loads[r] += order[i].size
            rank_items[r].append(i)
        slot_items = []
        for r in range(world_size):
            loads, items = [0] * workers, [[] for _ in range(workers)]
            for i in rank_items[r]:
                w = _least_loaded(loads)
                loads[w] += order[i].size
                items[w].append(i)
            slot_items.append([tuple(entries[i] for i in sorted(its)) for its in items])
        slot_sizes = [[sum(e[2] for e in slot) for slot in slot_items[r]] for r in range(world_size)]
        keep = [[(1, 0)] * workers for _ in range(world_size)]
    else:
        total = position
        slot_items = [[tuple(entries)] * workers for _ in range(world_size)]
        keep = [[(num_slots, r * workers + w) for w in range(workers)] for r in range(world_size)]
        slot_sizes = [[len(range(r * workers + w, total, num_slots)) for w in range(workers)]
                      for r in range(world_size)]

    min_chunks = [sum(math.ceil(s / chunk_size) for s in sizes) for sizes in slot_sizes]
    per_rank = max(min_chunks)
    chunks = _spread_chunks(slot_sizes[rank], per_rank, chunk_size)
    slots = tuple(SlotPlan(slot_items[rank][w], *keep[rank][w], slot_sizes[rank][w], chunks[w])
                  for w in range(workers))
    return EpochPlan(slots, per_rank)


def merge_order(chunks: Sequence[int]) -> list[int]:
    """The worker of each chunk in a rank's stream: round-robin over the workers that have chunks left.

    It is also the order DataLoader's workers deliver in, so ``ChunkLoader`` rarely has to wait.
    """
    left = list(chunks)
    order = []
    while any(left):
        for worker, n in enumerate(left):
            if n:
                order.append(worker)
                left[worker] -= 1
    return order


# ------------------------------------------------------------------------------ reading and decoding

def _complete(sample: dict | None) -> bool:
    return sample is not None and "json" in sample and any(ext in sample for ext in IMAGE_EXTS)


def read_tar_samples(url: str, faults: FaultCounter, expected: int | None = None) -> Iterator[dict]:
    """Group a tar's members into raw samples (``__key__``, ``__url__``, one entry per extension).

    Unlike webdataset's ``tarfile_to_samples`` this never lets a damaged shard leak a partial sample
    into the next shard, and it reports one ``bad_tar`` per damaged shard: an unreadable or truncated
    tar ends the shard, keeping the complete samples read so far.
    """
    current: dict | None = None
    count = 0
    try:
        with wds.gopen(url) as stream:
            for member in tar_file_iterator(stream):
                prefix, suffix = base_plus_ext(member["fname"])
                if prefix is None:
                    continue
                if current is None or prefix != current["__key__"]:
                    if current is not None:
                        count += 1
                        yield current
                    current = {"__key__": prefix, "__url__": url}
                current[suffix.lower()] = member["data"]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        faults.record("bad_tar", url, f"{type(exc).__name__}: {exc}")
        if _complete(current):  # its members were all read before the damage
            yield current
        return
    if current is not None:
        count += 1
        yield current
    if expected is not None and count < expected:
        faults.record("bad_tar", url, f"ended after {count} of {expected} samples (sizes.json)")


def decode_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Upright 8-bit RGB image (``mclip_hbt.images.open_image``, as the recipes use); raises ``ImageError``."""
    return open_image(data, draft_size)


def parse_captions(raw_json: bytes, where: str, faults: FaultCounter) -> dict | None:
    """The ``KEY.json`` record checked: ``{"captions", "mt", "source"}`` with canonical language codes,
    or None (fault recorded) when unusable."""
    try:
        record = parse_json(raw_json)  # every parse failure, nesting too deep included, is a ValueError
        if not isinstance(record, dict):
            raise ValueError("KEY.json is not a JSON object")
        captions = record.get("captions") or {}
        mt = record.get("mt") or []
        if not isinstance(captions, dict) or not isinstance(mt, list):
            raise ValueError("'captions' must be an object and 'mt' a list")
    except ValueError as exc:
        faults.record("bad_json", where, str(exc))
        return None
    kept: dict[str, list[str]] = {}
    unknown = []
    for lang, texts in captions.items():
        texts = [texts] if isinstance(texts, str) else texts
        texts = [t for t in texts if isinstance(t, str) and t.strip()] if isinstance(texts, list) else []
        if not texts:
            continue
        try:
            kept.setdefault(canonical_lang(lang), []).extend(texts)
        except (ValueError, AttributeError):
            unknown.append(lang)
    if unknown:
        faults.record("unknown_language", where, f"dropped captions in {unknown}")
    if not kept:
        faults.record("no_captions", where)
        return None
    mt_langs = set()
    for lang in mt:
        try:
            mt_langs.add(canonical_lang(lang))
        except (ValueError, AttributeError):
            pass  # an unknown code in mt has no captions left to flag
    source = record.get("source")
    return {"captions": kept, "mt": sorted(mt_langs & kept.keys()), "source": source if isinstance(source, str) else ""}


def parse_sample(raw: dict, faults: FaultCounter) -> tuple[dict, str] | None:
    """A raw tar sample's checked record (``parse_captions``) and image extension, or None (fault
    recorded): the per-sample checks of every reader of shards (training, ``data_recipes.translate``)."""
    where = f"{raw['__url__']}:{raw['__key__']}"
    if "json" not in raw:
        faults.record("no_captions", where, "no KEY.json")
        return None
    record = parse_captions(raw["json"], where, faults)
    if record is None:
        return None
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        faults.record("missing_image", where)
        return None
    return record, ext


def decode_sample(raw: dict, image_transform: Callable, faults: FaultCounter, draft_size: int | None = None,
                  augment_seed: str | None = None) -> dict | None:
    """Raw tar sample → ``{"key", "image", "captions", "mt"}``, or None (fault recorded).

    ``augment_seed`` makes the transform's random augmentation a function of the sample (and epoch)
    rather than of the worker's RNG, so a resumed run sees exactly the crops an unbroken run saw.
    """
    parsed = parse_sample(raw, faults)
    if parsed is None:
        return None
    record, ext = parsed
    try:
        image = decode_image(raw[ext], draft_size)
    except ImageError as exc:
        faults.record("bad_image", f"{raw['__url__']}:{raw['__key__']}", str(exc))
        return None
    if augment_seed is None:
        pixels = image_transform(image)
    else:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also seed every accelerator (~100x slower)
            torch.default_generator.manual_seed(zlib.crc32(augment_seed.encode()))
            pixels = image_transform(image)
    return {"key": raw["__key__"], "image": pixels, "captions": record["captions"], "mt": record["mt"]}


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

    def __post_init__(self) -> None:
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
        self.shards = expand_shards(config.train_data, config.train_data_weights)
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
                for sample in read_tar_samples(rng.choices(urls, weights)[0], faults):
                    empty_draws = 0
                    yield sample
            logger.error("no samples in %d consecutive shard draws; ending this worker's epoch early", _MAX_EMPTY_DRAWS)
            return
        # in a sample-level split every slot reads every shard; one of them reports damaged tars
        tar_faults = faults if slot.keep_offset == 0 else FaultCounter()
        for url, offset, size in slot.shards:
            for index, sample in enumerate(read_tar_samples(url, tar_faults, expected=size)):
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
