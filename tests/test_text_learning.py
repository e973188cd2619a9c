"""Learning without forgetting: a learning rate for the text encoder, LoRA merged at save, the teacher term."""
from __future__ import annotations

import pytest
import torch
from accelerate.utils import set_seed
from test_train import _train_in_process, shards  # noqa: F401  (shards is a fixture)

from mclip_hbt.model.clip import MultilingualCLIP, create_model
from mclip_hbt.train.config import parse_config
from mclip_hbt.train.loop import build_model, build_optimizer
from mclip_hbt.train.text_learning import TextLearningConfig, TextTeacher, add_lora

RUN = ["--batch-size", "16", "--warmup-steps", "1", "--checkpoint-every", "0"]


def test_lora_trains_only_the_adapted_layers_and_saves_a_plain_encoder(shards, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    result = _train_in_process(["--train-data", str(shards), "--output-dir", str(run), "--max-steps", "3", *RUN,
                                "--text-lora-rank", "4", "--text-lora-targets", "query,value", "--text-lr", "1e-2",
                                "--text-distill-weight", "1.0"])
    assert result.returncode == 0, result.stderr[-3000:]
    trained = MultilingualCLIP.from_pretrained(run / "model")
    assert not [k for k in trained.state_dict() if "lora" in k or "base_layer" in k]
    set_seed(0)  # what the trainer does before building its model (--seed 0), so this is its initial model
    initial = create_model("tiny")
    before, after = initial.text.transformer.state_dict(), trained.text.transformer.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".query." in k or ".value." in k for k in changed), sorted(changed)
    assert {f"encoder.layer.{i}.attention.self.{name}.weight" for i in (0, 1) for name in ("query", "value")} \
        <= changed  # every adapted layer learned: its merged update is not zero


def test_text_lr_gives_the_encoder_a_learning_rate_of_its_own(shards, tmp_path):  # noqa: F811
    config = parse_config(["--config", "configs/tiny.yaml", "--train-data", str(shards), "--output-dir",
                           str(tmp_path), "--lr", "1e-3", "--text-lr", "2e-5", "--text-unlocked-layers", "1"])
    model = build_model(config)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    encoder = [p for p in model.text.transformer.parameters() if p.requires_grad]
    assert encoder and {lr_of[id(p)] for p in encoder} == {2e-5}
    assert {lr_of[id(p)] for p in model.text_projection.parameters()} == {1e-3}
    assert {lr_of[id(p)] for p in model.visual.parameters()} == {1e-3}
    frozen = [p for p in model.text.transformer.parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in lr_of for p in frozen)


@pytest.mark.parametrize("lora", [False, True], ids=["weights", "lora"])
def test_the_teacher_is_the_encoder_as_it_was_and_measures_drift(lora):
    torch.manual_seed(0)
    model = create_model("tiny").eval()  # no dropout: the same input gives the same features
    if lora:
        add_lora(model.text, TextLearningConfig(text_lora_rank=4))
    teacher = TextTeacher(model.text, TextLearningConfig(text_distill_weight=1.0))
    tokens = model.tokenize(["ein rotes Herz", "a red heart", "赤いハート"])
    assert teacher.loss(model.text(tokens), tokens).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # the student drifts; the teacher, a copy, does not
        for p in model.text.encoder_layers()[-1].parameters():
            p.add_(torch.randn_like(p))
    assert teacher.loss(model.text(tokens), tokens).item() > 1e-3
    assert teacher.loss(teacher.tower(tokens), tokens).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--text-lora-rank", "4", "--text-unlocked-layers", "1"], "--text-lora-rank: LoRA trains the adapters only"),
    (["--text-lora-rank", "4", "--text-lora-targets", "no_such_layer"], "--text-lora-targets:"),
    (["--text-lr", "-1"], "--text-lr: must be >= 0"),
    (["--text-distill-loss", "kl"], "--text-distill-loss"),
])
def test_a_bad_text_learning_option_is_one_line_and_exit_2(shards, tmp_path, args, message):  # noqa: F811
    result = _train_in_process(["--train-data", str(shards), "--output-dir", str(tmp_path / "run"), *RUN, *args])
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    if "no_such_layer" in args:
        assert "query" in result.stderr  # the refusal names the layers there are
