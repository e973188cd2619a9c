"""eval.zeroshot: cases whose answer is known, the metric never rewarding a broken model, the command on tiny."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from known_models import COLOURS, NAMES, colour_model
from PIL import Image

from eval import zeroshot
from eval.metrics import NonFiniteEmbeddingsError
from eval.results import record_file_name


def write_split(root: Path, labels: list[list[int]]) -> Path:
    """A split as data_recipes.emoji_world writes it: one-colour pictures, their names, classes.json."""
    (root / "images").mkdir(parents=True)
    names = []
    for i, picture in enumerate(labels):
        name = f"pic_{i:03d}.png"
        Image.new("RGB", (16, 16), COLOURS[picture[0]]).save(root / "images" / name)
        names.append(name)
    (root / "test_image_names.txt").write_text("\n".join(names) + "\n")
    (root / "classes.json").write_text(json.dumps({"classes": [f"c{i}" for i in range(len(COLOURS))],
                                                   "names": NAMES, "labels": labels}))
    return root


def options(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"image_batch_size": 4, "num_workers": 0, "no_progress": True, "text_cache": None,
                                 "batch_size": 3, "translate_test": False, **kw})


@pytest.fixture
def split(tmp_path) -> Path:
    # every class once alone, and two pictures of two colours (not scored: they have two right answers)
    return write_split(tmp_path / "test_seen", [[i] for i in range(len(COLOURS))] + [[0, 1], [2, 3]])


def test_a_model_whose_features_are_identical_per_class_scores_one(split):
    classes, names, labels, image_names = zeroshot.read_class_table(split)
    assert len(labels) == len(COLOURS) and len(classes) == len(COLOURS)
    paths = [split / "images" / name for name in image_names]
    summary, unreadable = zeroshot.evaluate(colour_model(), names, ["en", "de"], paths, labels, options())
    assert unreadable == []
    for lang in ("en", "de"):
        assert summary[lang] == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}


def test_a_constant_model_scores_no_better_than_chance(split):
    _, names, labels, image_names = zeroshot.read_class_table(split)
    paths = [split / "images" / name for name in image_names]
    summary, _ = zeroshot.evaluate(colour_model(constant=True), names, ["en"], paths, labels, options())
    assert summary["en"]["acc1"] <= 1 / len(COLOURS) and summary["en"]["mean_per_class_recall"] == 0.0
    assert summary["en"]["acc5"] == 0.0  # every name ties with the true one, so it ranks last of 7


def test_non_finite_embeddings_are_refused_not_scored():
    with pytest.raises(NonFiniteEmbeddingsError):
        zeroshot.classification_scores(torch.full((2, 3), float("nan")), torch.eye(3), torch.tensor([0, 1]))


def test_translate_test_scores_every_language_on_the_english_names(split):
    _, names, labels, image_names = zeroshot.read_class_table(split)
    names = {**names, "de": ["?"] * len(COLOURS)}  # German names unknown to the model
    paths = [split / "images" / name for name in image_names]
    model = colour_model()
    model.tokenize = (lambda base: lambda texts: base([t if t != "?" else "grey" for t in texts]))(model.tokenize)
    plain, _ = zeroshot.evaluate(model, names, ["de"], paths, labels, options())
    translated, _ = zeroshot.evaluate(model, names, ["de"], paths, labels, options(translate_test=True))
    assert plain["de"]["acc1"] == 0.0 and translated["de"]["acc1"] == 1.0  # one name for all: every class ties


def test_the_command_on_the_tiny_model_writes_clip_benchmark_records(split, tmp_path, capsys):
    out = tmp_path / "zs.json"
    assert zeroshot.main(["--model", "tiny", "--split", str(split), "--lang", "en,de", "--num-workers", "0",
                          "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert [(r["dataset"], r["language"], r["task"]) for r in doc["results"]] == [
        ("emoji_seen", "en", "zeroshot_classification"), ("emoji_seen", "de", "zeroshot_classification")]
    assert set(doc["results"][0]["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert doc["meta"]["n_images"] == len(COLOURS) and doc["meta"]["chance_acc1"] == pytest.approx(1 / len(COLOURS))
    records = sorted(p.name for p in (tmp_path / "zs_clip_benchmark").iterdir())
    assert records == sorted(record_file_name(r) for r in doc["results"])
    assert all(name.endswith(f"_{lang}_zeroshot_classification.json") for name, lang in zip(records, ("de", "en")))


@pytest.mark.parametrize("damage, message", [
    (lambda split: (split / "classes.json").unlink(), "classes.json not found"),
    (lambda split: (split / "classes.json").write_text('{"classes": []}'), "not a class table"),
    (lambda split: (split / "images" / "pic_000.png").unlink(), "missing from"),
])
def test_a_split_it_cannot_use_is_one_line_and_exit_2(split, damage, message, capsys):
    damage(split)
    with pytest.raises(SystemExit) as exit_info:
        zeroshot.main(["--model", "tiny", "--split", str(split)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
