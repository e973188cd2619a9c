"""eval.m3c on the real Multi30K and XTD10 caption files: text-only, and end to end with placeholder
images named as in the split files (tiny model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_first_lines
from PIL import Image

from eval import m3c
from eval.benchmark_data import load_multi30k_test2016
from mclip_hbt.data.caption_files import read_lines

MULTI30K = ["en", "de", "fr", "cs"]
COCO = ["en", "ja", "zh"]
#: Images per part in the end-to-end run.
N_END_TO_END = 200


def test_multi30k_reader_keeps_five_task2_captions_for_en_and_de(shared_data):
    split = load_multi30k_test2016(shared_data / "multi30k", MULTI30K)
    assert len(split.image_names) == 1000 and split.image_names[0].endswith(".jpg")
    assert [len(split.captions[lang][0]) for lang in MULTI30K] == [5, 5, 1, 1]
    # task 2's captions are independent descriptions, task 1's en is the source the others translate
    assert split.captions["en"][0][0] != split.aligned["en"][0]
    assert split.captions["fr"][0] == [split.aligned["fr"][0]]


def test_text_only_on_the_real_caption_files(shared_data, tmp_path, capsys, monkeypatch):
    # The real caption files cut to their first 100 lines (read whole by the test above), found where
    # the command looks by default: $MCLIP_HBT_DATA/multi30k and $MCLIP_HBT_DATA/xtd10.
    for part, pattern in (("multi30k", "test_2016*"), ("xtd10", "test_*.txt")):
        assert copy_first_lines(shared_data / part, tmp_path / "data" / part, pattern, 100)
    monkeypatch.setenv("MCLIP_HBT_DATA", str(tmp_path / "data"))
    out = tmp_path / "m3c_text.json"
    assert m3c.main(["--text-only", "--model", "tiny", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["results"] == []
    assert set(doc["summary"]) == {"multi30k", "mscoco-1k"}
    assert set(doc["summary"]["multi30k"]["crosslingual"]["r@1"]["cs"]) == {"en", "de", "fr"}
    assert set(doc["summary"]["mscoco-1k"]["multilingual_text"]["per_language"]) == set(COCO)
    assert doc["meta"]["part_languages"] == {"multi30k": MULTI30K, "mscoco-1k": COCO}
    assert doc["meta"]["n_images"] == {"multi30k": 100, "mscoco-1k": 100}
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
    # The real caption files cut to their first N lines (the full files are read by the tests above;
    # every image-text setting runs the same for N images as for 1,000, the encoding takes a fifth).
    n = N_END_TO_END
    multi30k, xtd10 = tmp_path / "multi30k", tmp_path / "xtd10"
    assert len(copy_first_lines(shared_data / "multi30k", multi30k, "test_2016*", n)) == 15
    assert copy_first_lines(shared_data / "xtd10", xtd10, "test_*.txt", n)
    flickr, coco = tmp_path / "flickr30k-images", tmp_path / "coco"
    placeholder_images(flickr, read_lines(multi30k / "data/task1/image_splits/test_2016_flickr.txt"))
    # COCO keeps train and val images in their own folders; the evaluator finds them there.
    placeholder_images(coco, [f"{name.split('_')[1]}/{name}"
                              for name in read_lines(xtd10 / "XTD10/test_image_names.txt")])
    out, plot = tmp_path / "m3c.json", tmp_path / "m3c.png"
    assert m3c.main(["--model", "tiny", "--flickr-images", str(flickr), "--coco-images", str(coco),
                     "--multi30k", str(multi30k), "--xtd-captions", str(xtd10),
                     "--out", str(out), "--plot", str(plot), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert [(r["dataset"], r["language"]) for r in doc["results"]] == \
        [("multi30k", lang) for lang in MULTI30K] + [("mscoco-1k", lang) for lang in COCO]
    # Multi30K: five task-2 captions per image in en and de, the task-1 one in fr and cs.
    assert doc["meta"]["image_text_captions"] == {"multi30k": {"en": 5 * n, "de": 5 * n, "fr": n, "cs": n},
                                                  "mscoco-1k": {"en": n, "ja": n, "zh": n}}
    assert doc["meta"]["n_images"] == {"multi30k": n, "mscoco-1k": n}
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
