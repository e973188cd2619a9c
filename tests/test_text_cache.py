"""mclip_hbt.retrieval.text_cache: cached encoder outputs give the same embeddings as encoding, are shared only by
models whose text encoder is byte-for-byte the same, and a damaged cache is rebuilt, not trusted."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from eval import xtd
from mclip_hbt.model.clip import create_model
from mclip_hbt.retrieval.models import _from_mclip, load_retrieval_model
from mclip_hbt.retrieval.text_cache import TextFeatureCache

CAPTIONS = ["a red circle", "two blue squares", "ein roter Kreis", "zwei blaue Quadrate", "a red circle"]


@pytest.fixture(scope="module")
def tiny_module():
    torch.manual_seed(0)
    return create_model("tiny")


@pytest.fixture
def tiny_model(tiny_module):
    """A fresh retrieval model over a copy of one tiny random model (building one costs seconds)."""
    return lambda: _from_mclip(copy.deepcopy(tiny_module), name="tiny", pretrained="random",
                               device=torch.device("cpu"))


class CountingEncoder:
    """Wraps a model's text encoder and counts the captions it really encodes."""

    def __init__(self, model):
        self.inner, self.captions = model.text_encoder, 0
        model.text_encoder.register_forward_hook(self._count)

    def _count(self, module, args, output):
        self.captions += output.shape[0]


def test_cached_embeddings_equal_encoded_ones_and_are_encoded_once(tmp_path, tiny_model):
    model = tiny_model()
    counter = CountingEncoder(model)
    direct = model.encode_texts(CAPTIONS, progress=False)
    encoded_directly = counter.captions
    assert encoded_directly == len(set(CAPTIONS))  # without a cache too, a repeated caption is encoded once
    torch.testing.assert_close(direct[4], direct[0])
    cache = TextFeatureCache(tmp_path / "cache")
    first = model.encode_texts(CAPTIONS, progress=False, cache=cache)
    assert counter.captions - encoded_directly == len(set(CAPTIONS))  # duplicates encoded once
    again = model.encode_texts(CAPTIONS[1:3] + ["a new caption"], progress=False, cache=cache)
    assert counter.captions - encoded_directly == len(set(CAPTIONS)) + 1  # only the new caption
    torch.testing.assert_close(first, direct)
    torch.testing.assert_close(again[:2], direct[1:3])
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_a_changed_encoder_or_projection_is_told_apart(tmp_path, tiny_model):
    cache = TextFeatureCache(tmp_path / "cache")
    base = tiny_model()
    base.encode_texts(CAPTIONS, progress=False, cache=cache)

    retuned = tiny_model()  # same encoder weights, another projection: the cache is shared
    with torch.no_grad():
        retuned.text_head.weight.mul_(-1.0)
    torch.testing.assert_close(retuned.encode_texts(CAPTIONS, progress=False, cache=cache),
                               retuned.encode_texts(CAPTIONS, progress=False))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    saved = tmp_path / "saved"  # saved and loaded again: its tokenizer comes back with other padding state
    base.module.save_pretrained(saved)
    reloaded = load_retrieval_model(str(saved))
    torch.testing.assert_close(reloaded.encode_texts(CAPTIONS, progress=False, cache=cache),
                               base.encode_texts(CAPTIONS, progress=False))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    finetuned = tiny_model()  # one encoder weight moved: its own features, never the cached ones
    with torch.no_grad():
        next(finetuned.text_encoder.transformer.encoder.parameters()).add_(1e-3)
    torch.testing.assert_close(finetuned.encode_texts(CAPTIONS, progress=False, cache=cache),
                               finetuned.encode_texts(CAPTIONS, progress=False))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "fewer_features"])
def test_a_damaged_cache_file_is_rebuilt(tmp_path, capsys, damage, tiny_model):
    cache = TextFeatureCache(tmp_path / "cache")
    model = tiny_model()
    expected = model.encode_texts(CAPTIONS, progress=False, cache=cache)
    (path,) = (tmp_path / "cache").glob("*.safetensors")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    else:  # a valid file whose caption list is longer than its features
        from safetensors.torch import save_file
        save_file({"features": torch.zeros(1, 32)}, str(path), metadata={"texts": json.dumps(CAPTIONS)})
    torch.testing.assert_close(model.encode_texts(CAPTIONS, progress=False, cache=cache), expected)
    assert "unusable" in capsys.readouterr().err
    torch.testing.assert_close(model.encode_texts(CAPTIONS, progress=False, cache=cache), expected)


def test_xtd_with_a_text_cache_scores_as_without(tmp_path, tiny_module):
    captions = tmp_path / "split"
    captions.mkdir()
    lines = {"en": ["a dog", "a cat", "a bicycle"], "sw": ["mbwa", "paka", "baiskeli"],
             "yo": ["ajá", "ológbò", "kẹ̀kẹ́"]}
    for lang, texts in lines.items():
        (captions / f"test_1kcaptions_{lang}.txt").write_text("\n".join(texts) + "\n")
    (captions / "test_image_names.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    saved = tmp_path / "model"
    tiny_module.save_pretrained(saved)
    runs = {}
    for name, extra in (("plain", []), ("cached", ["--text-cache", str(tmp_path / "cache")]),
                        ("again", ["--text-cache", str(tmp_path / "cache")])):
        out = tmp_path / f"{name}.json"
        assert xtd.main(["--lang", "all", "--text-only", "--model", str(saved), "--captions", str(captions),
                         "--out", str(out), "--no-progress", *extra]) == 0
        runs[name] = json.loads(out.read_text())["summary"]
    assert runs["plain"] == runs["cached"] == runs["again"]
