"""Which shards a run reads, and how an epoch divides among ranks and loader workers (docs/design.md §3).

Epochs are **planned**. From ``sizes.json`` every rank computes the same assignment of shards to
(rank, worker) slots and hence how many samples each slot reads. Chunks are defined by *stream
position*: a slot's k-th raw sample belongs to chunk ``k * num_chunks // num_samples``-ish (an even
split), so a faulty sample only makes its chunk smaller. Every rank yields exactly ``chunks_per_rank``
chunks per epoch: in non-resampled mode one epoch reads each sample exactly once across all ranks and
workers, and no rank runs out of data before the others (which would hang DDP). In resampled mode every
rank yields ``ceil(samples_per_epoch / chunk_size)`` chunks of shards drawn with replacement (weighted by
source, seeded per epoch, rank and worker).

Placement rules:

* ``num_shards >= world_size * num_workers``: shards go to ranks, then to each rank's workers, largest
  first to the least-loaded one (ties in epoch-shuffle order), which keeps per-rank sample counts close;
  lighter ranks simply get smaller chunks.
* fewer shards than slots: every slot reads every shard and keeps the samples whose epoch position ``p``
  has ``p % num_slots == slot`` (sample-level split; correct, but each slot reads all bytes).
* A chunk may hold fewer than ``chunk_size`` samples, or none (all its samples were faulty, a tar was
  truncated, or a light rank pads to the common chunk count). Consumers must accept empty chunks.

The plan, the shard shuffle and the resampled shard draws are pure functions of (seed, epoch, rank,
worker).
"""
from __future__ import annotations

import glob
import json
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import webdataset as wds

from mclip_hbt.data.urls import DEFAULT_STALL_S, open_url
from mclip_hbt.options import OptionError


@dataclass(frozen=True)
class Shard:
    url: str
    size: int | None  # samples, from sizes.json; None when the directory has no sizes.json
    weight: float  # source weight, for resampling


def _sizes_file(directory: str, cache: dict[str, dict | None], stall_s: float) -> dict | None:
    """A directory's parsed ``sizes.json`` (read once per directory); None when absent or unreadable."""
    if directory not in cache:
        try:
            with open_url(os.path.join(directory, "sizes.json"), stall_s) as stream:
                sizes = json.load(stream)
            cache[directory] = sizes if isinstance(sizes, dict) else None
        except (OSError, ValueError):
            cache[directory] = None
    return cache[directory]


def _read_sizes(url: str, cache: dict[str, dict | None], stall_s: float) -> int | None:
    directory, name = os.path.split(url)
    sizes = _sizes_file(directory, cache, stall_s)
    return None if sizes is None or name not in sizes else int(sizes[name])


def _check_directory(source: str, tar_paths: list[str], cache: dict[str, dict | None]) -> None:
    """A shard folder's ``sizes.json`` must list exactly its ``.tar`` files.

    The recipes write ``sizes.json`` after the shards (and delete an old one first), so a folder
    without it, or with one naming other files, is a write that was interrupted: new shards mixed
    with old ones, or a count that no longer matches.
    """
    if not tar_paths:
        return
    sizes = _sizes_file(os.path.dirname(tar_paths[0]), cache, DEFAULT_STALL_S)  # a local folder
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


#: More shards than any real data set has (LAION-5B is about 500,000 shards of 10,000): a pattern naming more is a typo.
MAX_SHARDS_PER_SOURCE = 10_000_000
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")


def brace_count(pattern: str) -> int:
    """How many names a brace pattern expands to (``s-{000..099}-{a,b}.tar``: 200), counted without expanding."""
    count = 1
    for inside in _BRACE.findall(pattern):
        match = _RANGE.fullmatch(inside)
        if match:
            first, last, step = int(match[1]), int(match[2]), abs(int(match[3] or 1)) or 1
            count *= abs(last - first) // step + 1
        else:
            count *= inside.count(",") + 1
    return count


def expand_shards(urls: str | Sequence[str], weights: str | Sequence[float] | None = None,
                  stall_s: float = DEFAULT_STALL_S) -> list[Shard]:
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
            count = brace_count(source)
            if count > MAX_SHARDS_PER_SOURCE:  # refused before expanding: the list alone would take gigabytes
                raise OptionError("train_data", f"{source!r} names {count:,} shards, more than the "
                                                f"{MAX_SHARDS_PER_SOURCE:,} one source may hold; check the braces")
            try:
                urls_of_source = wds.shardlists.expand_urls(source)
            except ValueError as err:  # a brace pattern webdataset cannot expand
                raise OptionError("train_data", str(err)) from None
        for url in urls_of_source:
            shards.append(Shard(url, _read_sizes(url, sizes_cache, stall_s), factor))
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
                                            "(mclip_hbt.data.shards writes it)")
        return None
    if samples_per_epoch is None:
        if missing:
            raise OptionError("samples_per_epoch",
                                  "resampled mode needs it when the shards have no sizes.json")
        return math.ceil(sum(s.size for s in shards) / world_size)
    if samples_per_epoch < 1:
        raise OptionError("samples_per_epoch", f"must be >= 1, got {samples_per_epoch}")
    return samples_per_epoch



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


