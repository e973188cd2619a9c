"""Both ends of the declared version ranges that change file formats: a model saved under transformers 5 loads
under 4.x, the bundled encoder converted under either gives the same embeddings, and shards written by
webdataset 1.x read under 0.2.x and back. The old versions are laid over this venv (``pip --target``, first on
PYTHONPATH) in a subprocess; they come from the package index once and stay in the checkout's .cache/."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mclip_hbt.data.shards import CaptionShardWriter, iter_shard
from mclip_hbt.fileio import exclusive_lock
from mclip_hbt.model.clip import MultilingualCLIP, create_model
from mclip_hbt.paths import REPO_ROOT

#: The oldest releases the ranges in pyproject.toml admit for the file-format libraries (and what they need
#: that this venv's newer releases replace).
OLD_RELEASES = {
    "transformers4": ["transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2", "requests",
                      "urllib3", "idna", "charset_normalizer", "certifi"],
    "webdataset0.2": ["webdataset==0.2.86"],
}
CAPTIONS = ["a dog on a bike", "ein Hund auf einem Fahrrad", "犬と自転車", "un  perro   grande", "Ａ１ full-width"]


@pytest.fixture(scope="session")
def old_release():
    """``old_release(name)`` → the folder holding that set of old releases, installed on first use."""
    root = REPO_ROOT / ".cache" / "compat"

    def folder(name: str) -> Path:
        target = root / name
        with exclusive_lock(root / f".{name}.lock"):  # one installer at a time (pytest -n runs several sessions)
            if not (target / ".complete").is_file():
                done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
                                       "--target", str(target), *OLD_RELEASES[name]],
                                      capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"pip could not install {OLD_RELEASES[name]}: {done.stderr[-2000:]}"
                (target / ".complete").write_text("")
        return target
    return folder


def run_under(overlay: Path, script: str, *args: str, cache: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{overlay}{os.pathsep}{REPO_ROOT}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", **({"MCLIP_HBT_CACHE": str(cache)} if cache else {})}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


ENCODE_SAVED = r"""
import json, sys, torch, transformers
from mclip_hbt.fileio import exclusive_lock
from mclip_hbt.model.clip import MultilingualCLIP
captions = json.loads(sys.argv[1])
model = MultilingualCLIP.from_pretrained(sys.argv[2]).eval()
with torch.no_grad():
    text = model.encode_text(model.tokenize(captions))
print(json.dumps({"version": transformers.__version__, "text": text.tolist(),
                  "ids": model.tokenize(captions)["input_ids"].tolist()}))
"""


def _encode(model: MultilingualCLIP) -> tuple[torch.Tensor, list]:
    with torch.no_grad():
        return model.encode_text(model.tokenize(CAPTIONS)), model.tokenize(CAPTIONS)["input_ids"].tolist()


def test_a_model_saved_under_transformers_5_loads_under_4(old_release, tmp_path):
    overlay = old_release("transformers4")
    torch.manual_seed(0)
    ours = create_model("tiny").eval()
    ours.save_pretrained(tmp_path / "saved-by-5")
    text, ids = _encode(ours)
    loaded_by_4 = run_under(overlay, ENCODE_SAVED, json.dumps(CAPTIONS), str(tmp_path / "saved-by-5"))
    assert loaded_by_4["version"].startswith("4.")
    # The same ids; the same floats up to the summation order of another process's thread count.
    assert loaded_by_4["ids"] == ids and torch.allclose(torch.tensor(loaded_by_4["text"]), text, atol=1e-6, rtol=0)


ENCODE_BUNDLED = r"""
import json, sys, torch, transformers
from mclip_hbt.offline.bundled_e5 import E5_QUERY_PREFIX, bundled_model_path
from mclip_hbt.model.text_tower import TextTower
tower = TextTower.from_name("bundled:multilingual-e5-small", prefix=E5_QUERY_PREFIX).eval()
with torch.no_grad():
    pooled = tower(tower.tokenize(json.loads(sys.argv[1])))
print(json.dumps({"version": transformers.__version__, "folder": str(bundled_model_path()), "pooled": pooled.tolist()}))
"""


def test_the_bundled_encoder_converted_under_transformers_4_matches_5(old_release, tmp_path):
    under_4 = run_under(old_release("transformers4"), ENCODE_BUNDLED, json.dumps(CAPTIONS), cache=tmp_path / "cache4")
    under_5 = run_under(Path(), ENCODE_BUNDLED, json.dumps(CAPTIONS))  # the session's cache, built by 5.x
    assert under_4["version"].startswith("4.") and under_5["version"].startswith("5.")
    assert under_4["folder"].startswith(str(tmp_path / "cache4"))  # converted by 4.x, not read from 5.x's cache
    assert torch.allclose(torch.tensor(under_4["pooled"]), torch.tensor(under_5["pooled"]), atol=1e-6, rtol=0)


SHARDS = r"""
import json, sys, webdataset
from mclip_hbt.data.shards import CaptionShardWriter, iter_shard
if sys.argv[1] == "write":
    with CaptionShardWriter(sys.argv[2], max_count=4) as writer:
        for i in range(6):
            writer.write(f"k{i}", bytes([i]) * 8, "png", {"en": [f"caption {i}"], "sw": [f"maelezo {i}"]}, mt=["sw"])
samples = [(s.key, s.image.hex(), s.record) for shard in sorted(__import__("pathlib").Path(sys.argv[2]).glob("*.tar"))
           for s in iter_shard(shard)]
print(json.dumps({"version": webdataset.__version__, "samples": samples}))
"""


def test_shards_written_and_read_across_webdataset_0_2_and_1(old_release, tmp_path):
    overlay = old_release("webdataset0.2")
    with CaptionShardWriter(tmp_path / "by-1", max_count=4) as writer:
        for i in range(6):
            writer.write(f"k{i}", bytes([i]) * 8, "png", {"en": [f"caption {i}"], "sw": [f"maelezo {i}"]}, mt=["sw"])
    ours = [(s.key, s.image.hex(), s.record) for shard in sorted((tmp_path / "by-1").glob("*.tar"))
            for s in iter_shard(shard)]
    read_by_old = run_under(overlay, SHARDS, "read", str(tmp_path / "by-1"))
    assert read_by_old["version"].startswith("0.2.") and [tuple(s) for s in read_by_old["samples"]] == ours
    written_by_old = run_under(overlay, SHARDS, "write", str(tmp_path / "by-0.2"))
    assert [(s.key, s.image.hex(), s.record) for shard in sorted((tmp_path / "by-0.2").glob("*.tar"))
            for s in iter_shard(shard)] == [tuple(s) for s in written_by_old["samples"]] == ours
