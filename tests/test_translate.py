"""translate: tiny random translation models built offline prove the plumbing (codes, mt marks, counts, resume)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    NllbTokenizer,
    PreTrainedTokenizerFast,
)
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

from data_recipes.translate import NLLB_CODES, language_codes
from data_recipes.translate import main as translate
from mclip_hbt.data.shards import CaptionShardWriter, iter_shard
from mclip_hbt.languages import canonical_lang

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
TINY = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, tie_word_embeddings=False,
            init_std=0.5)  # large random weights, so outputs depend on the input and the target code

# (captions, mt) per input sample, three per shard.
SAMPLES = [
    ({"en": ["A dog runs on the grass."]}, []),
    ({"en": ["Two people ride bikes.", "A cat sleeps on a red sofa."], "de": ["Zwei Leute fahren Rad."]}, []),
    ({"de": ["Nur ein deutscher Satz."]}, []),
    ({"en": ["A dog runs on the grass."], "fr": ["une ancienne traduction"]}, ["fr"]),
    ({"en": ["A red sofa."]}, []),
    ({"en": ["Two dogs ride on the grass."]}, []),
    ({"en": ["A cat."]}, []),
]


def train_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    texts = [t for caps, _ in SAMPLES for ts in caps.values() for t in ts]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIAL))
    return tok


def save_tiny(model, tokenizer, folder: Path) -> Path:
    """Zero the output rows of special tokens so the random model writes ordinary words until
    max_new_tokens (never an empty translation), then save model and tokenizer."""
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.all_special_ids] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory) -> Path:
    bpe = json.loads(train_bpe().to_str())["model"]
    tokenizer = NllbTokenizer(vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]])
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(M2M100Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id, **TINY))
    return save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny-nllb"))


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    """A code-less single-pair model, like most Marian opus-mt models."""
    bpe = train_bpe()
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", bpe.token_to_id("</s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id,
                                       decoder_start_token_id=tokenizer.pad_token_id, **TINY))
    return save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny-marian"))


@pytest.fixture
def shards(tmp_path) -> Path:
    folder = tmp_path / "in"
    writer = CaptionShardWriter(folder, max_count=3)
    for i, (captions, mt) in enumerate(SAMPLES):
        writer.write(f"s{i}", bytes([i]) * 10, "jpg", captions, mt=mt, source="synthetic")
    writer.close({"profile": {"name": "test"}})
    return folder


def read_set(folder: Path) -> list[tuple]:
    return [(s.key, s.image, s.record) for shard in sorted(folder.glob("*.tar")) for s in iter_shard(shard)]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def run(shards: Path, model: Path, out: Path, *extra: str) -> None:
    assert translate(["--shards", str(shards), "--model", str(model), "--target-langs", "de,fr", "--out", str(out),
                      "--device", "cpu", "--batch-size", "2", "--num-beams", "2", "--max-new-tokens", "6", *extra]) == 0


def test_nllb_translations_are_added_marked_and_counted(shards, nllb_dir, tmp_path):
    before = digest(shards)
    run(shards, nllb_dir, tmp_path / "out")
    assert digest(shards) == before  # originals untouched

    outputs = read_set(tmp_path / "out")
    assert [(k, img) for k, img, _ in outputs] == [(k, img) for k, img, _ in read_set(shards)]
    records = [r for _, _, r in outputs]
    for record, (captions, _) in zip(records, SAMPLES):
        assert record["source"] == "synthetic"
        if "en" not in captions:
            assert record["captions"] == captions and record["mt"] == []
            continue
        assert record["captions"]["en"] == captions["en"]
        for target in ("de", "fr"):
            if target in record["mt"]:
                assert len(record["captions"][target]) == len(captions["en"])
                assert all(t.strip() for t in record["captions"][target])
    assert records[1]["captions"]["de"] == ["Zwei Leute fahren Rad."] and records[1]["mt"] == ["fr"]  # human kept
    assert records[3]["captions"]["fr"] != ["une ancienne traduction"]  # earlier machine translation replaced
    assert [r["mt"] for r in records] == [["de", "fr"], ["fr"], [], ["de", "fr"], ["de", "fr"], ["de", "fr"],
                                          ["de", "fr"]]
    # The same source caption gets the same translation; the forced target code changes the output.
    assert records[0]["captions"]["de"] == records[3]["captions"]["de"]
    assert ([r["captions"]["de"] for r in records if "de" in r["mt"]]
            != [r["captions"]["fr"] for r in records if "de" in r["mt"]])

    meta = json.loads((tmp_path / "out/dataset.json").read_text())
    assert meta["num_samples"] == len(SAMPLES) and meta["num_shards"] == 3
    for lang in ("de", "fr"):
        assert meta["languages"][lang]["captions"] == sum(len(r["captions"].get(lang, [])) for r in records)
        assert meta["languages"][lang]["mt_captions"] == sum(len(r["captions"][lang])
                                                             for r in records if lang in r["mt"])
    assert meta["languages"]["fr"]["mt_captions"] == 7 and meta["languages"]["de"]["mt_captions"] == 5
    assert meta["profile"] == {"name": "test"}  # the input's own metadata is carried over
    assert (meta["translations"][-1]["model"] == str(nllb_dir)
            and meta["translations"][-1]["target_langs"] == ["de", "fr"])
    assert json.loads((tmp_path / "out/sizes.json").read_text()) == \
        {"shard-000000.tar": 3, "shard-000001.tar": 3, "shard-000002.tar": 1}


def test_overwrite_existing_replaces_human_captions(shards, nllb_dir, tmp_path):
    run(shards, nllb_dir, tmp_path / "out", "--overwrite-existing")
    record = read_set(tmp_path / "out")[1][2]
    assert record["mt"] == ["de", "fr"] and len(record["captions"]["de"]) == 2
    assert "Zwei Leute fahren Rad." not in record["captions"]["de"]


def test_empty_translations_are_dropped_and_counted(shards, nllb_dir, tmp_path, capsys):
    # One new token is only the forced target-language code, which decodes to nothing.
    run(shards, nllb_dir, tmp_path / "out", "--max-new-tokens", "1")
    assert [r for _, _, r in read_set(tmp_path / "out")] == [r for _, _, r in read_set(shards)]
    assert "de: 0 captions translated now, 5 empty translations dropped" in capsys.readouterr().out


@pytest.mark.slow
def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(shards, nllb_dir, tmp_path):
    run(shards, nllb_dir, tmp_path / "whole")

    out = tmp_path / "resumed"
    first = subprocess.run([sys.executable, "-m", "data_recipes.translate",
                            "--shards", f"{shards}/shard-{{000000..000002}}.tar", "--model", str(nllb_dir),
                            "--target-langs", "de,fr", "--out", str(out), "--device", "cpu",
                            "--batch-size", "2", "--num-beams", "2", "--max-new-tokens", "6", "--max-shards", "1"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "stopped early" in first.stdout
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar"]
    (out / "shard-000001.tar.tmp").write_bytes(b"half a shard left by a killed run")
    done_first = (out / "shard-000000.tar").stat().st_mtime_ns

    run(shards, nllb_dir, out)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == done_first  # finished shard not redone
    assert not list(out.glob("*.tmp"))
    assert read_set(out) == read_set(tmp_path / "whole")
    for name in ("dataset.json", "sizes.json"):
        assert json.loads((out / name).read_text()) == json.loads((tmp_path / "whole" / name).read_text())


def test_code_less_model_translates_into_its_one_language(shards, pair_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # two targets cannot be told apart without codes
        run(shards, pair_dir, tmp_path / "refused")
    assert exit_info.value.code == 2 and "give one target language" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

    assert translate(["--shards", str(shards), "--model", str(pair_dir), "--target-langs", "de", "--out",
                      str(tmp_path / "out"), "--device", "cpu", "--num-beams", "1", "--max-new-tokens", "5"]) == 0
    records = [r for _, _, r in read_set(tmp_path / "out")]
    assert [r["mt"] for r in records] == [["de"], [], [], ["de", "fr"], ["de"], ["de"], ["de"]]
    assert all(len(r["captions"]["de"]) == len(r["captions"]["en"]) for r in records if "de" in r["mt"])


def test_nllb_language_codes_from_the_tokenizer(nllb_dir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(nllb_dir)
    codes = language_codes(tokenizer, "en", ["de", "ja"])
    assert codes["de"].forced_bos_token_id == tokenizer.convert_tokens_to_ids("deu_Latn")
    assert codes["ja"].forced_bos_token_id == tokenizer.convert_tokens_to_ids("jpn_Jpan")
    assert tokenizer.convert_ids_to_tokens(tokenizer("A dog.")["input_ids"])[0] == "eng_Latn"
    # Every language of the table is in the project's canonical form and has a code NLLB-200 really uses.
    assert all(canonical_lang(lang) == lang for lang in NLLB_CODES)
    assert set(NLLB_CODES.values()) <= set(FAIRSEQ_LANGUAGE_CODES)


def test_bad_input_shards_and_records_are_skipped_counted_and_survive_a_rerun(nllb_dir, tmp_path, capsys):
    """Issue 11 case 9: a shard with an unparsable KEY.json, a truncated shard and a zero-byte shard."""
    folder = tmp_path / "in"
    writer = CaptionShardWriter(folder, max_count=3)
    for i in range(7):
        writer.write(f"s{i}", bytes([i]) * 10, "jpg", {"en": [f"A dog number {i}."]})
    writer.close()
    first = folder / "shard-000000.tar"
    with tarfile.open(first) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(first, "w") as tar:  # s1's KEY.json nested deeper than the JSON parser recurses
        for name, data in members:
            info = tarfile.TarInfo(name)
            data = b"[" * 200000 if name == "s1.json" else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    second = folder / "shard-000001.tar"
    with tarfile.open(second) as tar:
        cut = next(m for m in tar.getmembers() if m.name == "s5.jpg").offset_data + 5
    os.truncate(second, cut)  # inside s5: s3 and s4 survive
    (folder / "shard-000002.tar").write_bytes(b"")

    out = tmp_path / "out"
    run(folder, nllb_dir, out)
    captured = capsys.readouterr()
    assert "shard-000000.tar: 1 samples skipped (bad_json=1)" in captured.err
    assert "shard-000001.tar: 1 samples skipped (bad_tar=1)" in captured.err
    assert "shard-000002.tar: 1 samples skipped (bad_tar=1)" in captured.err
    assert "input faults: 3 samples skipped (bad_json=1, bad_tar=2)" in captured.out
    outputs = read_set(out)
    assert [key for key, _, _ in outputs] == ["s0", "s2", "s3", "s4"]
    assert all(record["mt"] == ["de", "fr"] for _, _, record in outputs)
    assert json.loads((out / "sizes.json").read_text()) == \
        {"shard-000000.tar": 2, "shard-000001.tar": 2, "shard-000002.tar": 0}

    before = digest(out)
    run(folder, nllb_dir, out)  # the finished output shards are adopted; the bad inputs are not read again
    assert digest(out) == before
