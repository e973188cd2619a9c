"""eval.m3c on the real Multi30K and XTD10 caption files: text-only, and end to end with placeholder
images named as in the split files (tiny model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from data_recipes.caption_files import read_lines
from eval import m3c
from eval.benchmark_data import load_multi30k_test2016

MULTI30K = ["en", "de", "fr", "cs"]
COCO = ["en", "ja", "zh"]


def test_multi30k_reader_keeps_five_task2_captions_for_en_and_de(shared_data):
    split = load_multi30k_test2016(shared_data / "multi30k", MULTI30K)
    assert len(split.image_names) == 1000 and split.image_names[0].endswith(".jpg")
    assert [len(split.captions[lang][0]) for lang in MULTI30K] == [5, 5, 1, 1]
    # task 2's captions are independent descriptions, task 1's en is the source the others translate
    assert split.captions["en"][0][0] != split.aligned["en"][0]
    assert split.captions["fr"][0] == [split.aligned["fr"][0]]


def test_text_only_on_the_real_caption_files(shared_data, tmp_path, capsys):
    out = tmp_path / "m3c_text.json"
    assert m3c.main(["--text-only", "--model", "tiny", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["results"] == []
    assert set(doc["summary"]) == {"multi30k", "mscoco-1k"}
    assert set(doc["summary"]["multi30k"]["crosslingual"]["r@1"]["cs"]) == {"en", "de", "fr"}
    assert set(doc["summary"]["mscoco-1k"]["multilingual_text"]["per_language"]) == set(COCO)
    assert doc["meta"]["part_languages"] == {"multi30k": MULTI30K, "mscoco-1k": COCO}
    assert "no padding to five" in doc["meta"]["caption_counts"]
    assert "no padding to five" in capsys.readouterr().out


def placeholder_images(folder: Path, names: list[str]) -> None:
    """Tiny solid-colour JPEGs, one colour per image, at the given relative names."""
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(path, quality=80)


@pytest.mark.slow
def test_end_to_end_with_placeholder_images(shared_data, tmp_path):
    flickr, coco = tmp_path / "flickr30k-images", tmp_path / "coco"
    placeholder_images(flickr, read_lines(shared_data / "multi30k/data/task1/image_splits/test_2016_flickr.txt"))
    # COCO keeps train and val images in their own folders; the evaluator finds them there.
    placeholder_images(coco, [f"{n.split('_')[1]}/{n}"
                              for n in read_lines(shared_data / "xtd10/XTD10/test_image_names.txt")])
    out, plot = tmp_path / "m3c.json", tmp_path / "m3c.png"
    assert m3c.main(["--model", "tiny", "--flickr-images", str(flickr), "--coco-images", str(coco),
                     "--out", str(out), "--plot", str(plot), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert [(r["dataset"], r["language"]) for r in doc["results"]] == \
        [("multi30k", lang) for lang in MULTI30K] + [("mscoco-1k", lang) for lang in COCO]
    assert doc["meta"]["image_text_captions"] == {"multi30k": {"en": 5000, "de": 5000, "fr": 1000, "cs": 1000},
                                                  "mscoco-1k": {"en": 1000, "ja": 1000, "zh": 1000}}
    assert doc["meta"]["n_images"] == {"multi30k": 1000, "mscoco-1k": 1000}
    for part, langs in (("multi30k", MULTI30K), ("mscoco-1k", COCO)):
        mono = doc["summary"][part]["monolingual"]
        assert list(mono) == langs
        for m in mono.values():
            six = [m[f"{d}_r@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]
            assert m["mean_recall"] == pytest.approx(sum(six) / 6)
    assert plot.stat().st_size > 0


def test_images_are_required_unless_text_only(capsys):
    with pytest.raises(SystemExit) as exc:
        m3c.main(["--model", "tiny", "--parts", "multi30k"])
    assert exc.value.code == 2
    assert "--flickr-images is required" in capsys.readouterr().err


def test_language_outside_m3c_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        m3c.main(["--model", "tiny", "--text-only", "--lang", "en,ko"])
    assert exc.value.code == 2
    assert "no captions for ko" in capsys.readouterr().err
