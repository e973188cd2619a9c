"""MultilingualCLIP: presets, encoding, locking, persistence — with real (tiny or bundled) components."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from mclip_hbt import create_model
from mclip_hbt.offline.hub import ModelUnavailableError

CAPTIONS = ["a red circle", "ein roter Kreis links neben einem blauen Quadrat", "赤い丸", "два синих круга"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny").eval()


def _pixels(model, n=2):
    images = [Image.new("RGB", (40 + 7 * i, 48), (30 * i, 200, 90)) for i in range(n)]
    return torch.stack([model.preprocess(im) for im in images])


def test_tokenize_pads_to_longest_caption_not_77(tiny):
    tokens = tiny.tokenize(CAPTIONS)
    lengths = tokens["attention_mask"].sum(1)
    assert tokens["input_ids"].shape[1] == int(lengths.max()) < 77
    assert int(lengths.min()) < int(lengths.max())
    # the prefix is part of every caption
    assert tiny.text.tokenizer.decode(tokens["input_ids"][0], skip_special_tokens=True).startswith("query:")


def test_forward_matches_open_clip_output_dict(tiny):
    with torch.no_grad():
        out = tiny(_pixels(tiny), tiny.tokenize(CAPTIONS[:2]))
    assert out["image_features"].shape == out["text_features"].shape == (2, 32)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["logit_scale"], tiny.logit_scale.exp())
    assert "logit_bias" not in out


def test_padding_does_not_change_a_caption_embedding(tiny):
    with torch.no_grad():
        alone = tiny.encode_text(tiny.tokenize(CAPTIONS[:1]))
        padded = tiny.encode_text(tiny.tokenize(CAPTIONS))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


def test_save_and_reload_in_a_fresh_offline_process(tiny, tmp_path):
    saved = tiny.save_pretrained(tmp_path / "tiny")
    assert ({"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer"}
            <= {p.name for p in saved.iterdir()})
    assert (saved / "tokenizer" / "tokenizer.json").is_file()
    with torch.no_grad():
        expected_text = tiny.encode_text(tiny.tokenize(CAPTIONS))
        expected_image = tiny.encode_image(_pixels(tiny))
    torch.save({"text": expected_text, "image": expected_image}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch
        from PIL import Image
        from mclip_hbt.model.clip import MultilingualCLIP
        model = MultilingualCLIP.from_pretrained({str(saved)!r}).eval()
        images = [Image.new("RGB", (40 + 7 * i, 48), (30 * i, 200, 90)) for i in range(2)]
        pixels = torch.stack([model.preprocess(im) for im in images])
        with torch.no_grad():
            got = {{"text": model.encode_text(model.tokenize({CAPTIONS!r})), "image": model.encode_image(pixels)}}
        want = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(got["text"], want["text"]) and torch.equal(got["image"], want["image"])
        print("identical")
    """)
    # No hub, no cache of converted models, no source tree on the path: the directory must stand alone.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MCLIP_HBT_CACHE": str(tmp_path / "empty-cache"), "HF_HOME": str(tmp_path / "empty-hf")}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "identical" in result.stdout
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "mclip_hbt" and config["architecture"]["embed_dim"] == 32


@pytest.fixture(scope="module")
def offline_process() -> dict[str, str]:
    """One fresh process with the hub switched off (HF_HUB_OFFLINE is read at import) for the two offline
    tests below, each part run on its own: part name → what it printed, or its error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    script = textwrap.dedent("""
        import json, traceback
        import torch
        from mclip_hbt.model.clip import create_model
        from mclip_hbt.offline.hub import ModelUnavailableError

        def e5_preset():
            model = create_model("e5-small-vit-b32").eval()
            with torch.no_grad():
                f = model.encode_text(model.tokenize(["a dog on the beach", "ein Hund am Strand"]))
            return f"{tuple(f.shape)} {[round(float(n), 5) for n in f.norm(dim=-1)]} {model.text.prefix}"

        def hub_preset():
            try:
                create_model("xlmr-base-vit-b32")
            except ModelUnavailableError as err:
                return f"MSG {err}"
            return "no error"

        for part in (e5_preset, hub_preset):
            try:
                out = part()
            except Exception:
                out = "ERROR " + traceback.format_exc()
            print(json.dumps({part.__name__: out}))
    """)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    parts = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            parts.update(json.loads(line))
    assert set(parts) == {"e5_preset", "hub_preset"}, result.stdout + result.stderr
    return parts


def test_e5_small_preset_works_offline(offline_process):
    assert offline_process["e5_preset"].strip() == "(2, 512) [1.0, 1.0] query:"


def test_hub_preset_fails_offline_with_a_plain_message(offline_process):
    message = offline_process["hub_preset"]
    assert "MSG cannot load the" in message and "xlm-roberta-base" in message
    assert "HF_HUB_OFFLINE" in message


def test_unknown_name_is_refused():
    with pytest.raises(ModelUnavailableError, match="neither a preset"):
        create_model("no-such-preset")


def _numel(module_or_params) -> int:
    params = module_or_params.parameters() if hasattr(module_or_params, "parameters") else module_or_params
    return sum(p.numel() for p in params)


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_lit_locking_leaves_only_the_text_side_trainable():
    model = create_model("tiny")
    total = _numel(model)
    model.lock_image_tower()
    assert _trainable(model) == total - _numel(model.visual)
    assert model.parameter_summary()["image"]["trainable"] == 0


def test_image_tower_unlocked_groups_follow_open_clip():
    model = create_model("tiny")
    model.lock_image_tower(unlocked_groups=1)
    # open_clip's top group is the output projection alone
    assert model.parameter_summary()["image"]["trainable"] == model.visual.proj.numel()


def test_text_tower_top_layers_and_word_embeddings():
    model = create_model("tiny")
    layers = model.text.encoder_layers()
    model.lock_text_tower(unlocked_layers=1)
    expected = _numel(layers[-1]) + _numel(model.text_projection) + _numel(model.visual) + 1  # + logit scale
    assert _trainable(model) == expected
    model.lock_text_tower(unlocked_layers=2, freeze_embeddings=False)
    embeddings = model.text.transformer.get_input_embeddings()
    assert all(p.requires_grad for p in embeddings.parameters())
    model.freeze_word_embeddings()
    assert model.parameter_summary()["text"]["trainable"] == _numel(layers)
    with pytest.raises(ValueError, match="unlocked_layers"):
        model.lock_text_tower(unlocked_layers=3)


@pytest.mark.parametrize("projection", ["mlp", "none"])
def test_projection_kinds(projection):
    overrides = {"projection": projection}
    if projection == "none":
        overrides["embed_dim"] = 32  # the tiny text width
    model = create_model("tiny", **overrides).eval()
    with torch.no_grad():
        f = model.encode_text(model.tokenize(CAPTIONS[:2]))
    assert f.shape == (2, 32)
    if projection == "none":
        assert _numel(model.text_projection) == 0
    with pytest.raises(ValueError, match="projection 'none'"):
        create_model("tiny", projection="none", embed_dim=16)


def test_an_orthogonal_projection_keeps_text_similarities_through_training_and_saving(tmp_path):
    """A rotation of the encoder's outputs: caption-to-caption cosines stay the encoder's after optimizer
    steps that change the projection, and after a save and reload."""
    torch.manual_seed(0)
    model = create_model("tiny", projection="orthogonal", embed_dim=32)
    model.lock_text_tower(0)
    tokens = model.tokenize(CAPTIONS)
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model.eval().text(tokens), dim=-1)
    model.train()
    before = model.text_projection.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    images = torch.randn(len(CAPTIONS), 3, 32, 32)
    for _ in range(3):
        out = model(images, tokens)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        torch.nn.functional.cross_entropy(logits, torch.arange(len(CAPTIONS))).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.allclose(model.text_projection.weight, before)  # it trained
    model.save_pretrained(tmp_path / "m")
    for m in (model, type(model).from_pretrained(tmp_path / "m")):
        with torch.no_grad():
            text = m.eval().encode_text(tokens)
        torch.testing.assert_close(text @ text.T, pooled @ pooled.T, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="projection 'orthogonal'"):
        create_model("tiny", projection="orthogonal", embed_dim=16)


def test_image_weights_from_a_local_open_clip_checkpoint(tmp_path):
    source = create_model("tiny")
    checkpoint = tmp_path / "vision.pt"
    torch.save({"state_dict": {f"visual.{k}": v for k, v in source.visual.state_dict().items()}}, checkpoint)
    loaded = create_model("tiny", vision_pretrained=str(checkpoint))
    for (name, a), b in zip(source.visual.state_dict().items(), loaded.visual.state_dict().values()):
        assert torch.equal(a, b), name


def test_sigmoid_loss_models_carry_a_logit_bias(tiny):
    model = create_model("tiny", init_logit_bias=-10.0)
    out = model(_pixels(model), model.tokenize(CAPTIONS[:2]))
    assert out["logit_bias"].item() == -10.0


def test_length_groups_change_nothing_but_the_padding(tiny):
    tokens = tiny.tokenize(CAPTIONS * 2)
    with torch.no_grad():
        whole = tiny.encode_text(tokens)
        tiny.text.length_groups = 3
        try:
            grouped = tiny.encode_text(tokens)
        finally:
            tiny.text.length_groups = 1
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-4)
