"""Add machine translations of existing captions to a shard set, with any Hugging Face translation model.

    python -m data_recipes.translate --shards 'shards/xtd10/shard-{000000..000009}.tar' \\
        --model facebook/nllb-200-distilled-600M --source-lang en --target-langs de,fr --out shards/xtd10-mt

Writes a new shard set (the input is never modified): output shard ``i`` holds input shard ``i``'s
samples with one translation per source caption added under each target language, which is listed
in the sample's ``mt``. A target language that already has human captions keeps them unless
``--overwrite-existing``; earlier machine translations are replaced. Shards are written whole or not
at all, so an interrupted run picks up where it stopped: run the same command again. A damaged input
shard (unreadable, truncated, zero bytes) keeps the samples before the damage and a sample whose
``KEY.json`` is unusable is left out, with the training loader's fault reasons; both are reported,
and the run goes on.

Language codes by model family, found from the tokenizer: NLLB (``eng_Latn``-style codes, set through
``tokenizer.src_lang`` and ``forced_bos_token_id``), M2M100 (``tokenizer.src_lang`` and
``get_lang_id``), multi-target Marian (``>>fr<<`` prefixed to the source text), and single-pair
models such as most Marian ``opus-mt-en-XX`` (no codes: exactly one target language).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mclip_hbt.data.samples import FaultCounter, parse_sample, read_tar_samples
from mclip_hbt.data.shard_plan import expand_shards
from mclip_hbt.data.shards import CaptionShardWriter, ShardSample, is_shard_folder
from mclip_hbt.fileio import OutputError, check_output_dir, check_replaceable, parse_json
from mclip_hbt.languages import canonical_lang, parse_lang_list
from mclip_hbt.options import OptionError

#: ISO 639-1 → NLLB-200 (FLORES-200) code, for every language the project knows.
NLLB_CODES: dict[str, str] = {
    "ar": "arb_Arab", "bg": "bul_Cyrl", "bn": "ben_Beng", "ca": "cat_Latn", "cs": "ces_Latn", "da": "dan_Latn",
    "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn", "es": "spa_Latn", "et": "est_Latn", "fa": "pes_Arab",
    "fi": "fin_Latn", "fr": "fra_Latn", "he": "heb_Hebr", "hi": "hin_Deva", "hr": "hrv_Latn", "hu": "hun_Latn",
    "id": "ind_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang", "lt": "lit_Latn", "lv": "lvs_Latn",
    "ms": "zsm_Latn", "nl": "nld_Latn", "no": "nob_Latn", "pl": "pol_Latn", "pt": "por_Latn", "ro": "ron_Latn",
    "ru": "rus_Cyrl", "sk": "slk_Latn", "sl": "slv_Latn", "sv": "swe_Latn", "th": "tha_Thai", "tr": "tur_Latn",
    "uk": "ukr_Cyrl", "vi": "vie_Latn", "zh": "zho_Hans",
}

#: Keys of dataset.json that CaptionShardWriter computes; every other key is carried over from the input.
STATS_KEYS = ("num_samples", "num_shards", "languages")


@dataclass(frozen=True)
class TargetCodes:
    """How to ask the model for one target language."""
    text_prefix: str = ""  # prepended to every source text (multi-target Marian)
    forced_bos_token_id: int | None = None  # first generated token (NLLB, M2M100)


def language_codes(tokenizer, source: str, targets: list[str]) -> dict[str, TargetCodes]:
    """Set the tokenizer's source language and return the codes for each target; ``ValueError`` when
    the model cannot translate from ``source`` or into one of ``targets``."""
    vocab = tokenizer.get_vocab()
    if hasattr(tokenizer, "get_lang_id"):  # M2M100: ISO codes
        try:
            tokenizer.src_lang = source
            return {t: TargetCodes(forced_bos_token_id=tokenizer.get_lang_id(t)) for t in targets}
        except KeyError as e:
            raise ValueError(f"this M2M100 model has no language code {e}") from e
    if NLLB_CODES["en"] in vocab:  # NLLB: FLORES-200 codes
        missing = [lang for lang in [source, *targets] if NLLB_CODES.get(lang) not in vocab]
        if missing:
            raise ValueError(f"this NLLB model has no code for {', '.join(missing)}")
        tokenizer.src_lang = NLLB_CODES[source]
        return {t: TargetCodes(forced_bos_token_id=vocab[NLLB_CODES[t]]) for t in targets}
    if any(token.startswith(">>") and token.endswith("<<") for token in vocab):  # multi-target Marian
        codes = {}
        for t in targets:
            token = next((tok for tok in (f">>{t}<<", f">>{NLLB_CODES.get(t, t)[:3]}<<") if tok in vocab), None)
            if token is None:
                raise ValueError(f"this model has no target token for {t} (tried >>{t}<< and its ISO 639-3 form)")
            codes[t] = TargetCodes(text_prefix=token + " ")
        return codes
    if len(targets) != 1:
        raise ValueError("this model takes no language codes (one model per language pair): give one target language")
    return {targets[0]: TargetCodes()}


class Translator:
    """Batched generation with a seq2seq model; batches hold texts of similar length."""

    def __init__(self, model, tokenizer, device: torch.device, batch_size: int, max_new_tokens: int, num_beams: int):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.batch_size, self.max_new_tokens, self.num_beams = batch_size, max_new_tokens, num_beams

    @torch.inference_mode()
    def translate(self, texts: list[str], codes: TargetCodes, on_batch=lambda done: None) -> list[str]:
        """Translations of ``texts`` in order; ``on_batch(indices)`` is called after each batch."""
        # Longest first, so a batch that does not fit in memory fails at once rather than at the end.
        order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
        generate_args = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": False}
        if codes.forced_bos_token_id is not None:
            generate_args["forced_bos_token_id"] = codes.forced_bos_token_id
        out = [""] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            inputs = self.tokenizer([codes.text_prefix + texts[i] for i in batch], return_tensors="pt",
                                    padding=True, truncation=True).to(self.device)
            generated = self.model.generate(**inputs, **generate_args)
            for i, text in zip(batch, self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                out[i] = text.strip()
            on_batch(batch)
        return out


def translate_shard(samples: list[ShardSample], translator: Translator, source: str, codes: dict[str, TargetCodes],
                    overwrite_existing: bool, bar: tqdm, counts: Counter) -> list[tuple[ShardSample, dict, set]]:
    """Return ``(sample, captions, mt)`` per sample with translations added; ``counts`` gets
    ``translated:LANG``, ``kept:LANG`` (human captions left alone) and ``empty:LANG`` (empty outputs,
    dropped; a sample whose translations are all empty keeps what it had)."""
    captions = [{lang: list(texts) for lang, texts in s.record["captions"].items()} for s in samples]
    mts = [set(s.record["mt"]) for s in samples]
    for target, target_codes in codes.items():
        todo = []  # samples whose target captions are (re)made
        for i, caps in enumerate(captions):
            if not caps.get(source):
                continue
            if caps.get(target) and target not in mts[i] and not overwrite_existing:
                counts[f"kept:{target}"] += 1
                bar.update(len(caps[source]))
            else:
                todo.append(i)
        # Each distinct source caption is translated once; `uses` weighs the progress bar by captions.
        uses = Counter(text for i in todo for text in captions[i][source])
        unique = list(uses)
        translated = translator.translate(unique, target_codes,
                                          on_batch=lambda batch: bar.update(sum(uses[unique[j]] for j in batch)))
        by_text = dict(zip(unique, translated))
        for i in todo:
            texts = [by_text[t] for t in captions[i][source] if by_text[t]]
            counts[f"translated:{target}"] += len(texts)
            counts[f"empty:{target}"] += len(captions[i][source]) - len(texts)
            if texts:
                captions[i][target] = texts
                mts[i].add(target)
    return list(zip(samples, captions, mts))


def input_metadata(shards: list[Path]) -> dict:
    """The input's dataset.json (beside the first shard), or ``{}`` when there is none; ``ValueError``
    when it is not a JSON object."""
    path = shards[0].parent / "dataset.json"
    if not path.is_file():
        return {}
    meta = parse_json(path.read_bytes())
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


def read_input_shard(path: Path, faults: FaultCounter) -> list[ShardSample]:
    """The usable samples of one input shard, read as the training loader reads them: a damaged shard
    keeps the samples before the damage, a sample with an unusable ``KEY.json`` is left out, and each
    fault is counted in ``faults``."""
    samples = []
    for raw in read_tar_samples(str(path), faults):
        parsed = parse_sample(raw, faults)
        if parsed is not None:
            record, ext = parsed
            samples.append(ShardSample(raw["__key__"], raw[ext], ext, record))
    return samples


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_recipes.translate", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True,
                   help="input shards: a folder or a brace pattern such as 'dir/shard-{000000..000009}.tar'")
    p.add_argument("--model", required=True,
                   help="Hugging Face translation model name or local folder (NLLB, M2M100, Marian, ...)")
    p.add_argument("--source-lang", default="en", help="language of the captions to translate (default: %(default)s)")
    p.add_argument("--target-langs", required=True, help="comma-separated languages to translate into")
    p.add_argument("--out", required=True, help="output folder for the new shard set (must differ from the input's)")
    p.add_argument("--prefix", default="shard", help="output shard file name prefix (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even though it holds files that are not a shard set")
    p.add_argument("--overwrite-existing", action="store_true",
                   help="replace human captions already present in a target language")
    p.add_argument("--batch-size", type=int, default=64, help="captions per generation batch (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device for the model (default: cuda when available, else cpu)")
    p.add_argument("--max-new-tokens", type=int, default=128,
                   help="longest translation, in tokens (default: %(default)s)")
    p.add_argument("--num-beams", type=int, default=4, help="beam size (1: greedy) (default: %(default)s)")
    p.add_argument("--max-shards", type=int, default=None,
                   help="stop after translating this many shards (run again to continue)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shards = [Path(shard.url) for shard in expand_shards(args.shards)]
    except OptionError as err:  # no shards, or a folder whose sizes.json does not match its tars
        parser.error(f"--shards: {err.message}")
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        parser.error(f"--shards: {len(missing)} files do not exist, e.g. {missing[0]}")
    out_dir = Path(args.out)
    if any(p.parent.resolve() == out_dir.resolve() for p in shards):
        parser.error("--out must not be the input shards' folder: the originals stay untouched")
    try:
        check_replaceable(out_dir, "--out", is_shard_folder, overwrite=args.overwrite)
    except OutputError as e:
        parser.error(str(e))
    try:
        source = canonical_lang(args.source_lang)
    except ValueError as e:
        parser.error(f"--source-lang: {e}")
    try:
        targets = [t for t in parse_lang_list(args.target_langs) if t != source]
    except ValueError as e:
        parser.error(f"--target-langs: {e}")
    if not targets:
        parser.error("--target-langs: give at least one language other than --source-lang")
    for name in ("batch_size", "max_new_tokens", "num_beams", "max_shards"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        parser.error(f"--device: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device: CUDA is not available on this machine")
    try:
        meta = input_metadata(shards)
    except (OSError, ValueError) as e:
        parser.error(f"--shards: cannot use {shards[0].parent / 'dataset.json'} ({e}); fix or remove it")

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # slow import, after the cheap checks
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as e:
        parser.error(f"--model: cannot load a tokenizer from {args.model}: {e}")
    try:
        codes = language_codes(tokenizer, source, targets)
    except ValueError as e:
        parser.error(f"--model {args.model}: {e}")
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model).to(device).eval()
    except (OSError, ValueError) as e:
        parser.error(f"--model: cannot load a sequence-to-sequence model from {args.model}: {e}")
    try:
        check_output_dir(out_dir, "--out")
    except OutputError as e:
        parser.error(str(e))
    translator = Translator(model, tokenizer, device, args.batch_size, args.max_new_tokens, args.num_beams)

    extra = {k: v for k, v in meta.items() if k not in STATS_KEYS}
    extra["translations"] = [*meta.get("translations", []), {
        "model": args.model, "source_lang": source, "target_langs": targets, "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens, "overwrite_existing": args.overwrite_existing}]
    # The input's own counts size the bar when the whole input set is being translated.
    whole_set = meta.get("num_shards") == len(shards) and len({p.parent for p in shards}) == 1
    source_captions = meta.get("languages", {}).get(source, {}).get("captions", 0) if whole_set else 0
    bar = tqdm(total=source_captions * len(targets) or None, unit="caption", desc="translating")
    counts: Counter = Counter()
    faults = FaultCounter()
    translated_shards = 0
    # One output shard per input shard (end_shard), so finished shards can be recognised on a restart.
    with CaptionShardWriter(out_dir, prefix=args.prefix, max_count=sys.maxsize) as writer:
        for shard in shards:
            done = writer.adopt_existing_shard()
            if done is not None:
                bar.update(sum(len(r["captions"].get(source, [])) for r in done) * len(targets))
                continue
            if args.max_shards is not None and translated_shards == args.max_shards:
                break
            shard_faults = FaultCounter()
            samples = read_input_shard(shard, shard_faults)
            if shard_faults:
                print(f"{shard}: {shard_faults.summary()}; output shard {writer.shard_path(writer.shard_index).name} "
                      f"gets its {len(samples)} usable samples", file=sys.stderr)
                faults.update(shard_faults)
            for sample, captions, mt in translate_shard(samples, translator, source, codes,
                                                        args.overwrite_existing, bar, counts):
                writer.write(sample.key, sample.image, sample.image_ext, captions, mt=sorted(mt),
                             source=sample.record["source"])
            writer.end_shard()
            translated_shards += 1
        # stopped early (--max-shards): later shards of an earlier run stay, to be adopted next time
        stats = writer.close(extra, complete=len(writer.sizes) == len(shards))
    bar.close()

    print(f"{stats['num_shards']} of {len(shards)} shards in {out_dir} ({translated_shards} translated now); "
          f"{stats['num_samples']} samples")
    for t in targets:
        print(f"  {t}: {counts[f'translated:{t}']} captions translated now, {counts[f'empty:{t}']} empty translations "
              f"dropped, {counts[f'kept:{t}']} samples kept their human captions; "
              f"{stats['languages'].get(t, {}).get('captions', 0)} captions in total")
    if faults:
        print(f"input faults: {faults.summary()}")
    if stats["num_shards"] < len(shards):
        print("stopped early (--max-shards): run the same command again to continue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
