"""A model trained here loads where users already work: open_clip's local-dir (in a fresh offline process)
and transformers' AutoModel, giving our embeddings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_thread

from mclip_hbt.export import main as export_main
from mclip_hbt.model.clip import create_model
from mclip_hbt.model.export import OPEN_CLIP_CONFIG, TEXT_ENCODER_CARD, export_open_clip, export_transformers

#: Captions with what tokenizers trip on: doubled and edge spaces, CJK, accents, a long one.
CAPTIONS = ["a dog on a bike", " Zwei  Katzen auf dem Sofa ", "犬と自転車に乗った男性", "un perro grande y marrón",
            "Ein Mann mit einem roten Hut steht neben einem alten Auto auf einer Straße in der Stadt bei Nacht"]

# Run in a fresh process, hub switched off: what open_clip and transformers make of the exported folders.
LOAD_ELSEWHERE = r"""
import json, sys
import open_clip, torch
from transformers import AutoModel, AutoTokenizer
kind, folder, pixels_file, captions = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with torch.no_grad():
    if kind == "open_clip":
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        model.eval()
        text = model.encode_text(tokenizer(captions), normalize=True)
        image = model.encode_image(torch.load(pixels_file), normalize=True)
        print(json.dumps({"text": text.tolist(), "image": image.tolist(), "size": preprocess.transforms[0].size}))
    else:  # the plain text encoder: AutoModel, then mean pooling over the attention mask
        encoder, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
        tokens = tokenizer(captions, padding=True, return_tensors="pt")
        hidden = encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        print(json.dumps({"pooled": ((hidden * mask).sum(1) / mask.sum(1)).tolist()}))
"""


def load_elsewhere(kind: str, folder: Path, pixels: torch.Tensor, tmp_path: Path) -> dict:
    torch.save(pixels, tmp_path / "pixels.pt")
    proc = subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, kind, str(folder), str(tmp_path / "pixels.pt"),
                           json.dumps(CAPTIONS)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def ours(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our embeddings, on one thread as ``load_elsewhere``'s process computes its own."""
    with torch.no_grad(), one_thread():
        tokens = model.tokenize([c.strip() for c in CAPTIONS])  # open_clip's tokenizer strips the edges too
        return model.encode_text(tokens), model.encode_image(pixels)


@pytest.mark.slow
def test_open_clip_loads_the_e5_small_export_with_its_prefix_and_gives_our_embeddings(tmp_path):
    # (the tiny model takes the same path in the test below, after its folder has moved)
    torch.manual_seed(0)
    model = create_model("e5-small-vit-b32").eval()
    size = model.preprocess_cfg.size
    pixels = torch.rand(3, 3, size, size)
    text, image = ours(model, pixels)
    export_open_clip(model, tmp_path / "export")
    theirs = load_elsewhere("open_clip", tmp_path / "export", pixels, tmp_path)
    assert torch.equal(torch.tensor(theirs["image"]), image)
    assert torch.allclose(torch.tensor(theirs["text"]), text, atol=1e-5, rtol=0)
    assert theirs["size"] in (size, [size, size])


def test_a_trained_models_export_moved_and_relinked_loads_with_our_embeddings(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    pixels = torch.rand(2, 3, 32, 32)
    text, image = ours(model, pixels)
    model.save_pretrained(tmp_path / "run" / "model")
    assert export_main(["open_clip", str(tmp_path / "run" / "model"), str(tmp_path / "export")]) == 0
    moved = shutil.move(tmp_path / "export", tmp_path / "elsewhere" / "export")
    # open_clip's own error after a move is a Hugging Face "repo id" complaint: the folder says what to do
    readme = (Path(moved) / "README.md").read_text()
    assert "python -m mclip_hbt.export relink NEW_PLACE" in readme and str(tmp_path / "export") in readme
    assert export_main(["relink", str(moved)]) == 0
    assert str(Path(moved).resolve()) in (Path(moved) / "README.md").read_text()
    text_cfg = json.loads((Path(moved) / OPEN_CLIP_CONFIG).read_text())["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == str(Path(moved).resolve())
    theirs = load_elsewhere("open_clip", Path(moved), pixels, tmp_path)
    assert torch.equal(torch.tensor(theirs["image"]), image)
    assert torch.allclose(torch.tensor(theirs["text"]), text, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_hf_text_encoder_export_reproduces_our_pooled_text(tmp_path):
    # A trained model: the e5 encoder after a change of its weights, with its projection saved beside it.
    model = create_model("e5-small-vit-b32").eval()
    with torch.no_grad():
        for p in model.text.transformer.encoder.layer[-1].parameters():
            p.add_(0.01 * torch.randn_like(p))
    export_transformers(model, tmp_path / "text-encoder")
    theirs = load_elsewhere("transformers", tmp_path / "text-encoder", torch.zeros(1), tmp_path)
    with torch.no_grad():
        pooled = model.text(model.tokenize(CAPTIONS))  # encode_text before the projection
    assert torch.allclose(torch.tensor(theirs["pooled"]), pooled, atol=1e-5, rtol=0)
    card = json.loads((tmp_path / "text-encoder" / TEXT_ENCODER_CARD).read_text())
    assert card["prefix_in_tokenizer"] == "query: " and card["pooling"] == "mean"


def test_export_refuses_an_unknown_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["open_clip", str(tmp_path / "no-such-model"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "neither a preset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_killed_exports_staging_copy_is_removed_by_the_next_export(tmp_path):
    import os
    import signal
    import subprocess

    out = tmp_path / "exports" / "demo"
    out.parent.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])  # a writer that is still running: its staging folder stays
    live = out.parent / f".demo.{sleeper.pid}.abcd1234.tmp"
    live.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned = out.parent / f".demo.{dead.pid}.efgh5678.tmp"  # a full model copy a killed export left
    (abandoned / "weights").mkdir(parents=True)
    try:
        assert export_main(["open_clip", "tiny", str(out)]) == 0
        assert not abandoned.exists() and live.exists() and (out / "open_clip_config.json").is_file()
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()


@pytest.mark.parametrize("projection", ["orthogonal", "mlp"])  # a rotation exports as its linear map
def test_sentence_transformers_loads_the_text_encoder_export_into_the_image_text_space(projection, tmp_path):
    # It once loaded the encoder without the projection: vectors outside the space the images live in.
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = create_model("tiny", projection=projection).eval()
    export_transformers(model, tmp_path / "encoder")
    texts = ["ein rotes Herz", "a red heart", "赤いハート"]  # no "query: ": the exported tokenizer adds it
    theirs = torch.tensor(SentenceTransformer(str(tmp_path / "encoder"), device="cpu").encode(texts))
    with torch.no_grad():
        ours = model.encode_text(model.tokenize(texts))
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
