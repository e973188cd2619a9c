"""The hybrid batcher: turns a stream of multilingual sample chunks into monolingual / cross-lingual batches.

docs/design.md §2. Each step is *monolingual* with probability ``alpha`` (every caption in language X) or
*cross-lingual* (each sample's caption language drawn independently from the languages it has).
The mode and X of step ``s`` are a pure function of ``(seed, s)``, so every rank and every resumed
run draws the same ones; per-sample draws (caption language, which caption, translation pair) are
a pure function of ``(seed, s, sample key)``.

Buffering. Samples wait in one pool, in arrival order, each stored once whatever its number of
languages (a per-language count is kept for logging). A cross-lingual step takes the ``B`` oldest
waiting samples; a monolingual step takes the ``B`` oldest that have X, reading more chunks while
it is short. Chunks are read only on demand and only while the pool is below
``max_buffered_samples``, so the pool never holds more than that plus one chunk less one sample.

Fallback (decided per rank, never stalls). A monolingual step stops looking for X when the pool is
at its ceiling (``buffer_full``), after ``fallback_after`` chunks read in that step
(``fallback_after``), or when the stream ends (``end_of_stream``); it then takes every X sample it
has and tops the batch up with the oldest other samples, whose languages are drawn as in a
cross-lingual step. ``record["fallback"]`` says why and how many X captions it got. The global
batch is monolingual exactly when no rank fell back; ranks still agree on mode and X.

Streams and resume. ``batcher(chunks)`` yields batches until ``chunks`` cannot fill another one;
the samples left waiting stay for the next call (the next epoch's stream), so none is dropped.
``state_dict()`` holds the step, the chunks read from the current stream and the waiting samples
themselves (images included: at most ``max_buffered_samples`` of them, the price of an exact
resume). After ``load_state_dict`` the next call's stream must continue after those chunks (the
loader resumes itself); the batches are then exactly those an uninterrupted run would have yielded.
"""
from __future__ import annotations

import random
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from mclip_hbt.data.samples import FaultCounter
from mclip_hbt.languages import parse_lang_list
from mclip_hbt.options import OptionError, option

LANG_DISTRIBUTIONS = ("uniform", "proportional", "temperature")
STATE_VERSION = 1


@dataclass
class HybridConfig:
    """How steps and caption languages are drawn (the module docstring); each field is a ``train.py`` option.

    The run's seed and whether translation pairs are wanted are not options of this component:
    ``HybridBatcher`` takes them from the callers that own them (``--seed``, ``--text-pair-weight``).
    """

    alpha: float = option(0.5, "Probability that a step is monolingual (all captions in one language); 1-alpha: "
                               "cross-lingual.")
    lang_distribution: str = option("uniform", "How languages are drawn: uniform, proportional (to sample counts) or "
                                               "temperature.", choices=LANG_DISTRIBUTIONS)
    temperature: float = option(2.0, "Temperature tau for --lang-distribution temperature: p ∝ n^(1/tau); a larger "
                                     "tau upsamples rare languages more.")
    languages: str | Sequence[str] | None = option(None, "Comma-separated languages to train on (default: every "
                                                         "language in the shards).")
    max_buffered_samples: int = option(512, "Ceiling on samples waiting in the hybrid batcher per process (they are "
                                            "saved in checkpoints); a monolingual batch in a language on a share p "
                                            "of the samples needs about batch/p of them.")
    machine_translations: bool = option(True, "Train on machine-translated captions (a sample's 'mt' languages, "
                                              "e.g. from data_recipes.translate); --no-machine-translations keeps "
                                              "only human-written captions.")
    fallback_after: int = option(64, "Chunks to read while filling a monolingual batch before falling back (logged; "
                                     "0: fall back as soon as the waiting samples run short).")

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError("alpha", f"must be in [0, 1], got {self.alpha}")
        if self.lang_distribution not in LANG_DISTRIBUTIONS:
            raise OptionError("lang_distribution", f"must be one of {', '.join(LANG_DISTRIBUTIONS)}, got "
                                                   f"{self.lang_distribution!r}")
        if not self.temperature > 0:
            raise OptionError("temperature", f"must be > 0, got {self.temperature}")
        if self.max_buffered_samples < 1:
            raise OptionError("max_buffered_samples", f"must be >= 1, got {self.max_buffered_samples}")
        if self.fallback_after < 0:
            raise OptionError("fallback_after", f"must be >= 0, got {self.fallback_after}")
        if self.languages is not None:
            try:
                self.languages = parse_lang_list(self.languages)
            except ValueError as err:
                raise OptionError("languages", str(err)) from None


def language_weights(counts: Mapping[str, float], distribution: str, temperature: float) -> dict[str, float]:
    """Unnormalised drawing weights: 1 (uniform), n (proportional) or n^(1/τ) (temperature)."""
    if distribution == "uniform":
        return {lang: 1.0 for lang, n in counts.items() if n > 0}
    power = 1.0 if distribution == "proportional" else 1.0 / temperature
    return {lang: float(n) ** power for lang, n in counts.items() if n > 0}


@dataclass
class _Waiting:
    key: str
    image: torch.Tensor
    captions: dict[str, list[str]]
    langs: tuple[str, ...]  # the sample's training languages, sorted


class HybridBatcher:
    """Local batches for one rank; see the module docstring for the policy.

    ``local_batch_size`` = global batch / world size. ``lang_counts``: samples per language (a
    dataset.json's ``languages[lang]["samples"]``, summed over sources: samples, not captions,
    because a monolingual step needs samples that have X); they fix the language set and the
    proportional/temperature weights for every rank. Without them both come from the samples read
    so far, which differ between ranks, so a distributed run must pass them (or, for uniform, a
    ``languages`` list). ``seed`` fixes every draw; ``translation_pairs`` makes it supply, per sample,
    a caption in a second language (for the text–text term).

    ``batcher(chunks)`` takes loader chunks ``{"images", "captions", "keys", "faults", ...}`` and
    yields dicts: ``images`` Tensor[B, ...]; ``captions``, ``langs``, ``keys`` (lists of B);
    ``pair_captions``, ``pair_langs`` (a translation in another language, or None; all None without
    ``translation_pairs``) and ``pair_mask`` (bool Tensor[B], True where there is a pair); ``record`` (``step``,
    ``mode`` "mono"|"cross", ``lang`` (X or None), ``lang_counts``, ``fallback`` None |
    {``reason``, ``filled``, ``needed``}, ``buffered`` = pool size when the batch was taken,
    ``chunks_read`` in this step, ``faults`` reported by those chunks).
    """

    def __init__(self, config: HybridConfig, local_batch_size: int, world_size: int = 1,
                 lang_counts: Mapping[str, int] | None = None, *, seed: int = 0, translation_pairs: bool = False):
        if local_batch_size < 1:
            raise OptionError("batch_size", f"the local batch size must be >= 1, got {local_batch_size}")
        self.batch_size = local_batch_size
        if config.max_buffered_samples < self.batch_size:
            raise OptionError("max_buffered_samples", f"must hold at least one local batch ({self.batch_size} "
                                                      f"samples), got {config.max_buffered_samples}")
        if lang_counts is None and world_size > 1 and (
                config.lang_distribution != "uniform" or config.languages is None):
            raise OptionError("train_data", "a distributed run draws languages from per-language sample counts "
                                            "(lang_counts, from the dataset.json beside the shards: every rank sees "
                                            "other samples), and these shards have none: rebuild them with their "
                                            "recipe, or pass --languages with --lang-distribution uniform")
        if lang_counts is not None and config.languages is not None:
            missing = [lang for lang in config.languages if lang_counts.get(lang, 0) <= 0]
            if missing:
                raise OptionError("languages", f"no samples in {', '.join(missing)} in these shards (their "
                                               f"dataset.json counts {', '.join(sorted(lang_counts)) or 'none'})")
        self.seed = seed
        self.translation_pairs = translation_pairs
        self.config = config
        self._counts = dict(lang_counts) if lang_counts is not None else None
        self._observed: Counter[str] = Counter()  # used only without lang_counts
        self._pool: OrderedDict[int, _Waiting] = OrderedDict()
        self._next_id = 0
        self._source: Iterator[Mapping] = iter(())
        self._resumed = False
        self.step = 0
        self.chunks_consumed = 0
        self.faults = FaultCounter()  # data faults reported by the chunks read, over the whole run
        self.samples_kept = 0  # samples taken into the pool from chunks (not saved: callers watch it grow)
        self._step_faults: Counter[str] = Counter()
        self._step_reads = 0

    # --- drawing ---------------------------------------------------------------------------
    def language_distribution(self) -> dict[str, float]:
        """Current drawing weights (unnormalised) over the training languages."""
        if self.config.lang_distribution == "uniform" and self.config.languages is not None:
            counts = {lang: 1 for lang in self.config.languages}
        else:
            counts = self._counts if self._counts is not None else self._observed
            if self.config.languages is not None:
                counts = {lang: counts.get(lang, 0) for lang in self.config.languages}
        return language_weights(counts, self.config.lang_distribution, self.config.temperature)

    def plan(self, step: int) -> tuple[str, str | None]:
        """(mode, X) of ``step``: the same on every rank and after a resume.

        A pure function of (seed, step) given ``lang_counts`` or uniform over ``languages``;
        otherwise the weights are the counts read so far (single process only, saved in the state).
        """
        rng = random.Random(f"hybrid-step:{self.seed}:{step}")
        if rng.random() >= self.config.alpha:
            return "cross", None
        weights = self.language_distribution()
        langs = sorted(weights)
        return "mono", rng.choices(langs, weights=[weights[lang] for lang in langs])[0]

    def _draw_captions(self, step: int, sample: _Waiting, lang: str | None,
                       weights: Mapping[str, float]) -> tuple[str, str, str | None, str | None]:
        """(caption, lang, pair caption, pair lang) of one sample; ``lang`` None draws it."""
        rng = random.Random(f"hybrid-sample:{self.seed}:{step}:{sample.key}")
        if lang is None:
            lang = rng.choices(sample.langs, weights=[weights[candidate] for candidate in sample.langs])[0]
        caption = rng.choice(sample.captions[lang])
        others = [other for other in sample.langs if other != lang]
        if not self.translation_pairs or not others:
            return caption, lang, None, None
        pair_lang = rng.choices(others, weights=[weights[other] for other in others])[0]
        return caption, lang, rng.choice(sample.captions[pair_lang]), pair_lang

    # --- the pool --------------------------------------------------------------------------
    def _training_langs(self, captions: Mapping[str, list[str]]) -> tuple[str, ...]:
        langs = [lang for lang, texts in captions.items() if texts]
        if self.config.languages is not None:
            langs = [lang for lang in langs if lang in self.config.languages]
        if self._counts is not None:
            langs = [lang for lang in langs if self._counts.get(lang, 0) > 0]
        return tuple(sorted(langs))  # draws must not depend on the JSON's key order

    def _add(self, key: str, image: torch.Tensor, captions: dict[str, list[str]]) -> int | None:
        langs = self._training_langs(captions)
        if not langs:
            self._count_faults({"no_training_language": 1})
            return None
        sample_id = self._next_id
        self._next_id += 1
        self._pool[sample_id] = _Waiting(key, image, captions, langs)
        return sample_id

    def _remove(self, sample_id: int) -> _Waiting:
        sample = self._pool.pop(sample_id)
        return sample

    def _count_faults(self, faults: Mapping[str, int]) -> None:
        self.faults.update(faults)
        self._step_faults.update(faults)

    def _read_chunk(self) -> list[int] | None:
        """Read one chunk into the pool; return the new samples' ids, or None at the end of the stream."""
        chunk = next(self._source, None)
        if chunk is None:
            return None
        self.chunks_consumed += 1
        self._step_reads += 1
        self._count_faults(chunk.get("faults") or {})
        new_ids = []
        images = chunk.get("images")
        machine = chunk.get("mt") or [()] * len(chunk.get("keys", []))
        for i, (key, captions) in enumerate(zip(chunk.get("keys", []), chunk.get("captions", []))):
            if not self.config.machine_translations:
                captions = {lang: texts for lang, texts in captions.items() if lang not in machine[i]}
            # clone: a view would keep the whole chunk's tensor alive while one sample waits
            sample_id = self._add(key, images[i].clone(), captions)
            if sample_id is not None:
                self.samples_kept += 1
                new_ids.append(sample_id)
                self._observed.update(self._pool[sample_id].langs)
        return new_ids

    def _oldest(self, n: int, exclude: set[int]) -> list[int] | None:
        """Ids of the ``n`` oldest waiting samples not in ``exclude``, reading if needed; None if the stream cannot."""
        while len(self._pool) - len(exclude) < n:
            if self._read_chunk() is None:
                return None
        picked = []
        for sample_id in self._pool:
            if len(picked) == n:
                break
            if sample_id not in exclude:
                picked.append(sample_id)
        return picked

    def _monolingual(self, lang: str) -> tuple[list[int], dict | None] | None:
        """Ids for a step in ``lang`` (X samples first) and the fallback record, or None at the end."""
        have = [sample_id for sample_id, sample in self._pool.items() if lang in sample.langs]
        reads = 0
        reason = None
        while len(have) < self.batch_size:
            if len(self._pool) >= self.config.max_buffered_samples:
                reason = "buffer_full"
            elif reads >= self.config.fallback_after:
                reason = "fallback_after"
            else:
                new_ids = self._read_chunk()
                reads += 1
                if new_ids is None:
                    reason = "end_of_stream"
                else:
                    have += [sample_id for sample_id in new_ids if lang in self._pool[sample_id].langs]
                    continue
            break
        if reason is None:
            return have[:self.batch_size], None
        top_up = self._oldest(self.batch_size - len(have), exclude=set(have))
        if top_up is None:
            return None
        return have + top_up, {"reason": reason, "filled": len(have), "needed": self.batch_size}

    # --- iteration -------------------------------------------------------------------------
    def __call__(self, chunks: Iterable[Mapping]) -> Iterator[dict]:
        """Batches from ``chunks`` (and the samples still waiting) until they cannot fill another."""
        self._source = iter(chunks)
        if self._resumed:  # count on from the restored position in this stream
            self._resumed = False
        else:
            self.chunks_consumed = 0
        try:
            while (batch := self._next_batch()) is not None:
                yield batch
        finally:  # exhausted or closed early: let go of the chunk stream, and of the loader workers behind it
            source, self._source = self._source, iter(())
            if hasattr(source, "close"):
                source.close()

    def _next_batch(self) -> dict | None:
        step = self.step
        self._step_reads = 0
        self._step_faults = Counter()
        while not self.language_distribution():  # learning the languages from the data itself
            if self._read_chunk() is None:
                return None
        mode, lang = self.plan(step)
        fallback = None
        if mode == "mono":
            taken = self._monolingual(lang)
            if taken is None:
                return None
            ids, fallback = taken
            n_fixed = fallback["filled"] if fallback else len(ids)
        else:
            ids = self._oldest(self.batch_size, exclude=set())
            if ids is None:
                return None
            n_fixed = 0
        buffered = len(self._pool)
        weights = self.language_distribution()
        samples = [self._remove(sample_id) for sample_id in ids]
        drawn = [self._draw_captions(step, sample, lang if i < n_fixed else None, weights)
                 for i, sample in enumerate(samples)]
        self.step += 1
        langs = [d[1] for d in drawn]
        return {
            "images": torch.stack([sample.image for sample in samples]),
            "captions": [d[0] for d in drawn],
            "langs": langs,
            "keys": [sample.key for sample in samples],
            "pair_captions": [d[2] for d in drawn],
            "pair_langs": [d[3] for d in drawn],
            "pair_mask": torch.tensor([d[2] is not None for d in drawn], dtype=torch.bool),
            "record": {
                "step": step, "mode": mode, "lang": lang, "lang_counts": dict(Counter(langs)),
                "fallback": fallback, "buffered": buffered, "chunks_read": self._step_reads,
                "faults": {k: v for k, v in self._step_faults.items() if v},
            },
        }

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Step, chunks read from the current stream, observed counts, fault totals and the waiting samples."""
        waiting = list(self._pool.values())
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "chunks_consumed": self.chunks_consumed,
            "observed_counts": dict(self._observed),
            "faults": dict(self.faults),
            "waiting_keys": [sample.key for sample in waiting],
            "waiting_captions": [sample.captions for sample in waiting],
            "waiting_images": torch.stack([sample.image for sample in waiting]) if waiting else None,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict`; the next ``batcher(chunks)`` call continues from it, and its stream must
        continue after the ``chunks_consumed`` chunks already read (``ChunkLoader.load_state_dict`` does)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported hybrid batcher state version {state.get('version')!r}")
        self.step = int(state["step"])
        self.chunks_consumed = int(state["chunks_consumed"])
        self._resumed = True
        self._observed = Counter(state["observed_counts"])
        self.faults = FaultCounter(state["faults"])
        self._pool.clear()
        images = state["waiting_images"]
        for i, (key, captions) in enumerate(zip(state["waiting_keys"], state["waiting_captions"])):
            self._add(key, images[i].clone(), captions)


def summarize_records(records: Iterable[Mapping]) -> dict:
    """How the logged steps were drawn, for a run's metadata: ``steps``, ``monolingual_steps``,
    ``fallbacks`` (monolingual steps that fell back, by reason) and ``monolingual_share``: per language
    X, the mean share of X captions in X's monolingual batches (1.0 = every such batch held only X).

    α is what a run asked for; these say what it got, since a language on few samples cannot fill a
    monolingual batch from a bounded buffer and its steps are topped up with other languages.
    """
    steps, fallbacks, shares = 0, Counter(), defaultdict(list)
    for record in records:
        steps += 1
        if record["mode"] != "mono":
            continue
        counts = record["lang_counts"]
        shares[record["lang"]].append(counts.get(record["lang"], 0) / max(1, sum(counts.values())))
        if record.get("fallback"):
            fallbacks[record["fallback"]["reason"]] += 1
    return {"steps": steps, "monolingual_steps": sum(map(len, shares.values())), "fallbacks": dict(fallbacks),
            "monolingual_share": {lang: round(sum(s) / len(s), 4) for lang, s in sorted(shares.items())}}
