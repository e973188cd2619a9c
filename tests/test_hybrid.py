"""The hybrid batcher on synthetic chunk streams (real tensors; the batcher never looks at pixels)."""
from __future__ import annotations

import io
import itertools
import math
from collections import Counter

import pytest
import torch

from mclip_hbt.data.hybrid import HybridBatcher, HybridConfig, summarize_records

LANGS = ("de", "en", "fr")
#: Chi-square critical value for 2 degrees of freedom at p = 0.001 (the chi-square(2) law is
#: exponential with mean 2, so the quantile is closed-form).
CHI2_DF2_P001 = -2 * math.log(1e-3)


def make_stream(n_chunks: int, chunk_size: int, langs_of, prefix: str = "s"):
    """Chunks like mclip_hbt.data.loader's; sample ``i`` has the languages ``langs_of(i)`` and 2 captions in each."""
    for c in range(n_chunks):
        idx = range(c * chunk_size, (c + 1) * chunk_size)
        keys = [f"{prefix}{i:07d}" for i in idx]
        yield {
            "images": torch.stack([torch.full((3, 2, 2), float(i)) for i in idx]),
            "captions": [{lang: [f"{k} {lang} 0", f"{k} {lang} 1"] for lang in langs_of(i)} for k, i in zip(keys, idx)],
            "mt": [[] for _ in idx],
            "keys": keys,
            "faults": {},
        }


def all_langs(i):
    return LANGS


def en_plus_half(i):
    """Every sample has en; de and fr on alternating halves of the i % 4 cycle (0: en only)."""
    return ("en",) + (("de",) if i % 4 in (1, 3) else ()) + (("fr",) if i % 4 in (2, 3) else ())


def chi_square(observed: Counter, probs: dict[str, float]) -> float:
    n = sum(observed.values())
    return sum((observed[lang] - n * p) ** 2 / (n * p) for lang, p in probs.items())


def within_binomial(observed: Counter, probs: dict[str, float], sigmas: float = 4.0) -> bool:
    n = sum(observed.values())
    return all(abs(observed[lang] - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) for lang, p in probs.items())


def run(batcher, chunks, steps):
    return list(itertools.islice(batcher(chunks), steps))


def test_alpha_fraction_monolingual_purity_and_cross_mixing():
    steps, alpha, batch = 2000, 0.3, 32
    batcher = HybridBatcher(HybridConfig(alpha=alpha), batch, seed=7)
    batches = run(batcher, make_stream(10**6, 64, en_plus_half), steps)
    records = [b["record"] for b in batches]
    mono = [r for r in records if r["mode"] == "mono"]
    assert abs(len(mono) / steps - alpha) <= 0.03
    assert all(r["fallback"] is None for r in mono)  # plenty of each language: no excuse to fall back
    single_lang_cross, p_single = 0, []
    for b in batches:
        assert len(b["captions"]) == batch == b["images"].shape[0]
        if b["record"]["mode"] == "mono":
            assert set(b["langs"]) == {b["record"]["lang"]}
            assert all(f" {b['record']['lang']} " in c for c in b["captions"])
        else:
            assert b["record"]["lang"] is None
            # independent uniform draws give one language for the whole batch with probability
            # sum over L of prod_i P(sample i draws L): the samples allow mixing unless that is 1
            options = [en_plus_half(int(k[1:])) for k in b["keys"]]
            p_single.append(sum(math.prod(1 / len(o) if lang in o else 0.0 for o in options) for lang in LANGS))
            single_lang_cross += len(set(b["langs"])) == 1
        # a caption is one of its own sample's captions, in the stated language
        assert all(c.startswith(k + f" {lang} ") for c, k, lang in zip(b["captions"], b["keys"], b["langs"]))
    expected = sum(p_single)
    assert any(p < 1e-6 for p in p_single)
    assert abs(single_lang_cross - expected) <= 4 * math.sqrt(sum(p * (1 - p) for p in p_single))
    # each sample is used at most once
    keys = [k for b in batches for k in b["keys"]]
    assert len(keys) == len(set(keys))
    # X is uniform over the three languages
    x_counts = Counter(r["lang"] for r in mono)
    assert chi_square(x_counts, {lang: 1 / 3 for lang in LANGS}) < CHI2_DF2_P001


def test_cross_lingual_languages_follow_temperature_weights_from_dataset_json():
    # dataset.json says 1000:100:10 samples; every sample of this stream has all three languages,
    # so each caption language must follow p ∝ n^(1/2) exactly
    dataset_json = {"languages": {"en": {"samples": 1000, "captions": 5000},
                                  "de": {"samples": 100, "captions": 100},
                                  "fr": {"samples": 10, "captions": 10}}}
    counts = {lang: info["samples"] for lang, info in dataset_json["languages"].items()}
    weights = {lang: n ** 0.5 for lang, n in counts.items()}
    probs = {lang: w / sum(weights.values()) for lang, w in weights.items()}
    config = HybridConfig(alpha=0.0, lang_distribution="temperature", temperature=2.0)
    batcher = HybridBatcher(config, 32, lang_counts=counts, seed=3)
    drawn = Counter(lang for b in run(batcher, make_stream(10**6, 64, all_langs), 300) for lang in b["langs"])
    assert chi_square(drawn, probs) < CHI2_DF2_P001
    assert within_binomial(drawn, probs)


def test_monolingual_language_follows_temperature_of_observed_counts():
    # without dataset.json the counts are the ones read so far; this stream has exactly
    # 1000:100:10 per 1110-sample cycle: en on all, de on 1 in 10, fr on 1 in 100
    def unbalanced(i):
        return ("en",) + (("de",) if i % 10 == 0 else ()) + (("fr",) if i % 100 == 0 else ())

    config = HybridConfig(alpha=1.0, lang_distribution="temperature", temperature=2.0, max_buffered_samples=512,
                          fallback_after=2)
    batcher = HybridBatcher(config, 16, seed=11)
    records = [b["record"] for b in run(batcher, make_stream(10**6, 100, unbalanced), 2000)]
    probs = {lang: w / (10 + 10 ** 0.5 + 1) for lang, w in {"en": 10, "de": 10 ** 0.5, "fr": 1}.items()}
    x_counts = Counter(r["lang"] for r in records)
    assert chi_square(x_counts, probs) < CHI2_DF2_P001
    assert within_binomial(x_counts, probs)
    # fr is on 1% of samples: its steps fall back rather than wait, and say so
    fr_fallbacks = [r["fallback"] for r in records if r["lang"] == "fr" and r["fallback"]]
    assert fr_fallbacks and all(f["filled"] < f["needed"] == 16 for f in fr_fallbacks)


def test_ranks_draw_identical_modes_and_languages():
    counts = {"en": 10, "de": 5, "fr": 5}
    config = HybridConfig(alpha=0.5, lang_distribution="proportional")
    per_rank = [run(HybridBatcher(config, 16, world_size=2, lang_counts=counts, seed=5),
                    make_stream(10**6, 50, langs, prefix=f"r{r}-"), 300)
                for r, langs in enumerate((all_langs, en_plus_half))]
    plans = [[(b["record"]["mode"], b["record"]["lang"]) for b in batches] for batches in per_rank]
    assert plans[0] == plans[1]
    assert {mode for mode, _ in plans[0]} == {"mono", "cross"}
    assert all(len(b["captions"]) == 16 for batches in per_rank for b in batches)
    # the ranks hold different samples
    assert not set(per_rank[0][0]["keys"]) & set(per_rank[1][0]["keys"])


def test_distributed_run_refuses_counts_only_one_rank_could_see():
    with pytest.raises(ValueError, match="lang_counts"):
        HybridBatcher(HybridConfig(lang_distribution="temperature"), 4, world_size=2)


def test_buffer_ceiling_holds_and_absent_language_falls_back_without_stalling():
    # fr is absent from the first 3000 samples, then on every other sample
    def fr_late(i):
        return ("en", "de") + (("fr",) if i >= 3000 and i % 2 else ())

    ceiling, chunk, batch, fallback_after = 256, 40, 32, 3
    config = HybridConfig(alpha=0.6, languages=["en", "de", "fr"], max_buffered_samples=ceiling,
                          fallback_after=fallback_after)
    batcher = HybridBatcher(config, batch, seed=2)
    records = [b["record"] for b in itertools.islice(batcher(make_stream(10**6, chunk, fr_late)), 400)]
    assert len(records) == 400  # never stalled
    assert max(r["buffered"] for r in records) <= ceiling + chunk - 1
    # a step reads at most fallback_after chunks looking for X, plus what a top-up needs (< 1 batch)
    assert max(r["chunks_read"] for r in records) <= fallback_after + math.ceil(batch / chunk)
    early_fr = [r for r in records if r["lang"] == "fr" and r["step"] < 3000 // batch - 10]
    assert early_fr and all(r["fallback"] and r["fallback"]["filled"] == 0 for r in early_fr)
    assert {r["fallback"]["reason"] for r in early_fr} <= {"buffer_full", "fallback_after"}
    # a fallen-back step is filled from the oldest other samples, with cross-lingual languages
    assert all(sum(r["lang_counts"].values()) == batch for r in early_fr)
    late_fr = [r for r in records if r["lang"] == "fr" and r["step"] > 3000 // batch + 20]
    assert any(r["fallback"] is None and r["lang_counts"] == {"fr": batch} for r in late_fr)


def test_summary_reports_what_monolingual_steps_got_for_a_rare_language():
    # "sw" is on every 4th sample: a ceiling of 32 samples holds about 8, one of 1024 about 256
    def rare_sw(i):
        return ("en", "de") + (("sw",) if i % 4 == 0 else ())

    def summary(ceiling):
        config = HybridConfig(alpha=0.3, languages=["en", "de", "sw"], max_buffered_samples=ceiling,
                              fallback_after=10**6)
        records = [b["record"] for b in run(HybridBatcher(config, 32, seed=3), make_stream(10**6, 32, rare_sw), 150)]
        return records, summarize_records(records)

    records, small = summary(32)
    assert small["steps"] == 150 and small["monolingual_steps"] == sum(r["mode"] == "mono" for r in records)
    sw_steps = [r for r in records if r["lang"] == "sw"]
    assert small["fallbacks"] == {"buffer_full": len(sw_steps)}
    assert small["monolingual_share"]["en"] == small["monolingual_share"]["de"] == 1.0
    shares = [r["lang_counts"].get("sw", 0) / 32 for r in sw_steps]
    assert small["monolingual_share"]["sw"] == pytest.approx(sum(shares) / len(shares), abs=1e-4)
    assert small["monolingual_share"]["sw"] < 0.5
    _, large = summary(2048)
    assert large["monolingual_share"]["sw"] == 1.0 and large["fallbacks"] == {}
    cross = summarize_records([{"mode": "cross", "lang": None, "lang_counts": {"en": 3}, "fallback": None}])
    assert cross == {"steps": 1, "monolingual_steps": 0, "fallbacks": {}, "monolingual_share": {}}


def test_stream_end_keeps_leftovers_for_the_next_stream_and_counts_faults():
    chunks = list(make_stream(5, 30, en_plus_half))
    chunks[1]["faults"] = {"decode_error": 2}
    # a sample with no training language is skipped and counted
    chunks[2]["captions"][0] = {"ja": ["猫"]}
    chunks.append({"images": torch.empty(0, 3, 2, 2), "captions": [], "mt": [], "keys": [], "faults": {"bad_json": 1}})
    batcher = HybridBatcher(HybridConfig(alpha=0.5, languages="en,de,fr"), 16, seed=1)
    first = run(batcher, chunks, 100)
    usable = 5 * 30 - 1
    assert len(first) == usable // 16
    assert batcher.faults == {"decode_error": 2, "no_training_language": 1, "bad_json": 1}
    assert sum(b["record"]["faults"].get("decode_error", 0) for b in first) == 2
    # the next epoch's stream starts with the samples left waiting: none is lost at the boundary
    second = run(batcher, make_stream(3, 30, en_plus_half, prefix="e2-"), 100)
    keys = [k for b in first + second for k in b["keys"]]
    assert len(keys) == len(set(keys)) == (usable + 90) // 16 * 16
    assert [b["record"]["step"] for b in first + second] == list(range(len(first) + len(second)))


@pytest.mark.parametrize("pairs", [False, True])
def test_resume_mid_stream_reproduces_uninterrupted_run(pairs):
    def stream():
        return make_stream(10**6, 24, lambda i: ("en", "de") + (("fr",) if i % 7 == 0 else ()))

    config = HybridConfig(alpha=0.7, max_buffered_samples=200, fallback_after=4)
    options = {"seed": 9, "translation_pairs": pairs}
    straight = run(HybridBatcher(config, 16, **options), stream(), 40)

    first = HybridBatcher(config, 16, **options)
    before = run(first, stream(), 20)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    assert first.state_dict()["waiting_keys"], "the test must resume with samples waiting"
    # a fresh process, whose loader resumes after the chunks the batcher had consumed
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = HybridBatcher(config, 16, **options)
    resumed.load_state_dict(state)
    after = run(resumed, itertools.islice(stream(), state["chunks_consumed"], None), 20)
    for a, b in zip(straight, before + after, strict=True):
        assert torch.equal(a["images"], b["images"])
        assert {k: v for k, v in a.items() if k not in ("images", "pair_mask")} == \
            {k: v for k, v in b.items() if k not in ("images", "pair_mask")}
        assert torch.equal(a["pair_mask"], b["pair_mask"])


def test_text_pairs_are_in_another_language_of_the_same_sample():
    config = HybridConfig(alpha=0.5)
    batches = run(HybridBatcher(config, 16, seed=4, translation_pairs=True), make_stream(10**6, 50, en_plus_half), 200)
    n_pairs = 0
    for b in batches:
        assert b["pair_mask"].tolist() == [p is not None for p in b["pair_captions"]]
        for key, lang, pair, pair_lang in zip(b["keys"], b["langs"], b["pair_captions"], b["pair_langs"]):
            has_two = int(key[1:]) % 4 != 0  # en_plus_half: only i % 4 == 0 is en-only
            assert (pair is not None) == has_two
            if pair is not None:
                n_pairs += 1
                assert pair_lang != lang and pair.startswith(f"{key} {pair_lang} ")
    assert n_pairs > 0
    # without translation pairs none are drawn
    plain = run(HybridBatcher(config, 16, seed=4), make_stream(10**6, 50, en_plus_half), 5)
    assert all(p is None for b in plain for p in b["pair_captions"]) and not any(b["pair_mask"].any() for b in plain)


def test_bad_options_are_refused_with_their_name():
    with pytest.raises(ValueError, match="alpha"):
        HybridConfig(alpha=1.5)
    with pytest.raises(ValueError, match="--lang-distribution"):
        HybridConfig(lang_distribution="zipf")
    with pytest.raises(ValueError, match="--max-buffered-samples"):
        HybridBatcher(HybridConfig(max_buffered_samples=8), 16)
    with pytest.raises(ValueError, match="local batch size"):
        HybridBatcher(HybridConfig(), 0)
    with pytest.raises(ValueError, match="no samples"):
        HybridBatcher(HybridConfig(languages="en,ko"), 8, lang_counts={"en": 5})
