"""eval.xflickrco on the real xFlickr&CO caption files: the Japanese marker stripping, the bundled encoder's
text-only figures against a computation of our own, and end to end with placeholder images."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, AutoTokenizer

from eval import xflickrco
from eval.benchmark_data import XFLICKRCO_LANGS, load_xflickrco
from eval.references import load_references
from mclip_hbt.offline.bundled_e5 import E5_QUERY_PREFIX, bundled_model_path

#: The first ten Japanese lines (Flickr30k images) as they must read after stripping, written by hand from
#: the file: the ASCII digits glued to phrases go; the full-width numbers (５人, ２人, １１人) stay.
JA_FIRST_TEN = [
    "耳ピアスをした男が、メガネをかけてオレンジ色の帽子をかぶっている。",
    "黒と白の犬が、白い柵で囲まれている、草で覆われた庭を走っている。",
    "踵落としをして空手の師匠が持っている板を割ろうとしている、若い女性の弟子。",
    "全員がヘルメットとゴーグルを着用したスノーモービル乗りの５人が、森林の雪の積もっている空き地で、"
    "スノーモービルの前に一列に並んでいる。皆、黒いスノーパンツをはいていて、左から右に向かって順に、"
    "黒いコート、白いコート、赤いコート、青いコート、そして黒いコートを着ている。",
    "２人の男が家の屋根の上に座っていて、もう１人の男ははしごに乗っている。",
    "明るいピンク色のドレスを着た新婦が、男性の親族との写真撮影のためにポーズしているところを、"
    "クリーム色のシャツを着て白いパンツをはいた男が撮っている。",
    "ビーニー帽、スキージャケット、手袋にバックパックといった冬の装備を身に着けた１１人のグループが、"
    "雪用の足ヒレをつけて、氷のブロックでできた家の外に立っている。一方で、ドアの前に立っている人は、"
    "グループを案内しているようだ。",
    "背後で青いウェアのチームのほかのメンバーが見守っている中、赤いウェアの野球選手が、青いウェアの選手を"
    "避けようとして空中に飛び上がっている。青いウェアの選手がボールを受けてすぐ後ろに迫っているのだ。",
    "帽子をかぶって白いシャツを着た男が、窓を掃除している。",
    "蛍光ベストを着た男性が歩道に座り、表紙に自転車が描かれたパンフレットを掲げている。",
]
#: Images in the text-only cross-check (the README gives the figures on all 2,000).
N_TEXT_CHECK = 60
#: Images of each part (Flickr30k, COCO) in the end-to-end run (all 2,000: a command, in the README).
N_PER_PART = 100


@pytest.fixture(scope="module")
def xflickrco_dir(shared_data) -> Path:
    folder = shared_data / "xflickrco"
    if not folder.is_dir():
        pytest.skip(f"xFlickr&CO captions not found at {folder}: the project's shared/data holds them "
                    "(IGLUE's datasets/xFlickrCO/annotations)")
    return folder


def first_lines(source: Path, dest: Path, n: int, coco_too: bool = False) -> Path:
    """Copies of the caption files cut to their first ``n`` lines (Flickr30k images), and with ``coco_too`` the
    first ``n`` of the COCO part (lines 1,001 on)."""
    for lang in XFLICKRCO_LANGS:
        lines = (source / lang / "test.jsonl").read_text(encoding="utf-8").splitlines()
        lines = lines[:n] + (lines[1000:1000 + n] if coco_too else [])
        (dest / lang).mkdir(parents=True, exist_ok=True)
        (dest / lang / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def test_japanese_flickr_captions_lose_their_entity_numbers_and_coco_ones_keep_their_digits(xflickrco_dir):
    split = load_xflickrco(xflickrco_dir, ["ja", "en"])
    assert len(split.image_names) == 2000
    assert split.image_names[1000].startswith("COCO_val2014_")
    assert split.aligned["ja"][:10] == JA_FIRST_TEN
    assert split.aligned["ja"][1023] == "信号機が2つついていて両方とも赤信号である"  # a COCO caption: a real number
    assert split.aligned["en"][0] == "The man with pierced ears is wearing glasses and an orange hat."


def _e5_to_english_r1(captions: dict[str, list[str]]) -> dict[str, float]:
    """Caption X → English R@1 with transformers alone: the bundled e5-small, "query: " prefix, mean pooling
    over real tokens, 77 tokens at most (what mclip_hbt.retrieval.models' bare text encoder does), cosine similarity."""
    folder = bundled_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer([E5_QUERY_PREFIX + t for t in texts], padding=True, truncation=True, max_length=77,
                          return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    english = embed(captions["en"])
    truth = torch.arange(len(english))
    return {lang: (embed(texts) @ english.T).argmax(1).eq(truth).float().mean().item()
            for lang, texts in captions.items() if lang != "en"}


@pytest.mark.slow
def test_bundled_e5_text_only_matches_an_independent_computation(xflickrco_dir, tmp_path):
    captions = first_lines(xflickrco_dir, tmp_path / "captions", N_TEXT_CHECK)
    out = tmp_path / "e5.json"
    assert xflickrco.main(["--lang", "all", "--text-only", "--model", "bundled:multilingual-e5-small",
                           "--captions", str(captions), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    ours = {x: doc["summary"]["crosslingual"]["r@1"][x]["en"] for x in XFLICKRCO_LANGS if x != "en"}
    split = load_xflickrco(captions, list(XFLICKRCO_LANGS))
    assert ours == pytest.approx(_e5_to_english_r1(split.aligned), abs=1e-6)
    assert doc["meta"]["ja_entity_numbers_stripped"] is True and "independently" in doc["meta"]["caption_relation"]


def placeholder_images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(folder / name, quality=80)


@pytest.mark.slow
def test_end_to_end_with_placeholder_images_of_both_parts(xflickrco_dir, tmp_path):
    captions = first_lines(xflickrco_dir, tmp_path / "captions", N_PER_PART, coco_too=True)
    names = load_xflickrco(captions, ["en"]).image_names
    flickr, coco = tmp_path / "flickr30k-images", tmp_path / "COCO2014" / "val2014"
    flickr.mkdir()
    coco.mkdir(parents=True)
    placeholder_images(flickr, [n for n in names if not n.startswith("COCO_")])
    placeholder_images(coco, [n for n in names if n.startswith("COCO_")])
    out, plot = tmp_path / "xflickrco.json", tmp_path / "xflickrco.png"
    assert xflickrco.main(["--lang", "all", "--model", "tiny", "--captions", str(captions),
                           "--flickr-images", str(flickr), "--coco-images", str(tmp_path / "COCO2014"),
                           "--out", str(out), "--plot", str(plot), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert [r["language"] for r in doc["results"]] == list(XFLICKRCO_LANGS)
    assert {r["dataset"] for r in doc["results"]} == {"xflickrco"}
    summary = doc["summary"]
    assert set(summary["monolingual"]) == set(XFLICKRCO_LANGS)
    assert set(summary["crosslingual"]["r@1"]["ja"]) == set(XFLICKRCO_LANGS) - {"ja"}
    assert set(summary["multilingual_text"]["per_language"]) == set(XFLICKRCO_LANGS)
    assert summary["multilingual_image"]["map"] > 0
    assert doc["meta"]["n_images"] == 2 * N_PER_PART and doc["meta"]["n_unreadable_images"] == 0
    assert plot.stat().st_size > 0
    # the published rows: IGLUE's four UNITER-family models and the CLIP-style ones, each with its source
    for benchmark in ("xflickrco", "xflickrco-i2t"):
        rows = load_references(benchmark)
        assert {"mUNITER (IGLUE zero-shot)", "xUNITER (IGLUE zero-shot)", "UC2 (IGLUE zero-shot)",
                "M3P (IGLUE zero-shot)"} <= {r.name for r in rows}
        assert all(set(r.values) == set(XFLICKRCO_LANGS) and r.source["file"] for r in rows)
    uc2 = next(r for r in load_references("xflickrco") if r.name.startswith("UC2"))
    non_english = [v for lang, v in uc2.values.items() if lang != "en"]
    assert sum(non_english) / len(non_english) == pytest.approx(20.3, abs=0.01)  # IGLUE's published mean
