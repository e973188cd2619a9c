"""from_captions: real caption files and placeholder images in, shards out, captions exactly as written."""
from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_recipes.from_captions import main as from_captions
from mclip_hbt.data.caption_files import CaptionFileError, read_aligned_captions, read_lines

XTD_FILES = {"en": "XTD10", "es": "XTD10", "it": "XTD10", "ko": "XTD10", "pl": "XTD10", "ru": "XTD10",
             "tr": "XTD10", "zh": "XTD10", "de": "MIC", "fr": "MIC", "jp": "STAIR"}


def plain_lines(path: Path) -> list[str]:
    """The test's own reading of a caption file: split on \\r?\\n, a final newline ends the last line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        lines = re.split(r"\r?\n", f.read())
    return lines[:-1] if lines[-1] == "" else lines


def placeholder_images(folder: Path, names: list[str], subfolder=lambda name: "") -> None:
    """Tiny solid-colour JPEGs, one per name."""
    for i, name in enumerate(names):
        path = folder / subfolder(name) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 9), (i % 256, (7 * i) % 256, 128)).save(path)


def read_shards(out: Path) -> list[tuple[str, dict, dict[str, bytes]]]:
    """(key, KEY.json record, {ext: bytes}) for every sample, in shard order, read with tarfile alone."""
    samples: dict[str, tuple[dict, dict]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                record, files = samples.setdefault(key, ({}, {}))
                if ext == "json":
                    record.update(json.loads(data))
                else:
                    files[ext] = data
    return [(key, record, files) for key, (record, files) in samples.items()]


@pytest.fixture(scope="module")
def multi30k_images(shared_data, tmp_path_factory):
    names = [n.strip() for n in read_lines(shared_data / "multi30k/data/task1/image_splits/test_2016_flickr.txt")]
    folder = tmp_path_factory.mktemp("flickr30k")
    placeholder_images(folder, names)
    return names, folder


@pytest.mark.slow
@pytest.mark.parametrize("task", ["task1", "task2"])
def test_multi30k_test2016_captions_round_trip(shared_data, multi30k_images, tmp_path, task):
    names, images = multi30k_images
    root = shared_data / "multi30k/data"
    if task == "task1":  # one caption per image, four languages
        files = {lang: [root / f"task1/raw/test_2016_flickr.{lang}.gz"] for lang in ("en", "de", "fr", "cs")}
    else:  # five independent captions per image in en and de, all aligned with the same image list
        files = {lang: [root / f"task2/raw/test_2016.{i}.{lang}.gz" for i in range(1, 6)] for lang in ("en", "de")}
    args = ["--images", str(images), "--out", str(tmp_path), "--image-list",
            str(root / "task1/image_splits/test_2016_flickr.txt"), "--shard-size", "300", "--max-side", "8",
            "--workers", "2", "--source", "multi30k", "--allow-benchmark-images"]
    for lang, paths in files.items():
        args += [arg for p in paths for arg in ("--captions", f"{lang}={p}")]
    assert from_captions(args) == 0

    samples = read_shards(tmp_path)
    assert [key for key, _, _ in samples] == [Path(n).stem for n in names]
    expected = {lang: [plain_lines(p) for p in paths] for lang, paths in files.items()}
    for i, (_, record, files_in_tar) in enumerate(samples):
        assert record["captions"] == {lang: [lines[i] for lines in per_file] for lang, per_file in expected.items()}
        assert record["source"] == "multi30k" and record["mt"] == []
        assert Image.open(io.BytesIO(files_in_tar["jpg"])).size == (8, 6)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert meta["num_samples"] == len(names) == sum(sizes.values())
    assert list(sizes.values()) == [300, 300, 300, 100]
    assert {lang: v["captions"] for lang, v in meta["languages"].items()} == \
        {lang: len(names) * len(paths) for lang, paths in files.items()}
    assert meta["skipped"] == {} and (tmp_path / "skipped.jsonl").read_text() == ""
    # Multi30K test2016 is the Flickr half of xFlickr&CO: every image is a test image of both, kept and counted.
    found = meta["benchmark_images"]
    assert found["kept"] == {"multi30k-test2016": 1000, "xflickrco": 1000} and found["skipped"] == {}


@pytest.mark.slow
def test_xtd10_crlf_files_round_trip_with_coco_subfolders(shared_data, tmp_path):
    xtd = shared_data / "xtd10"
    names = [n.strip() for n in read_lines(xtd / "XTD10/test_image_names.txt")]
    images = tmp_path / "coco"
    placeholder_images(images, names, subfolder=lambda n: "train2014" if "_train2014_" in n else "val2014")
    files = {lang: xtd / folder / f"test_1kcaptions_{lang}.txt" for lang, folder in XTD_FILES.items()}
    assert b"\r\n" in files["es"].read_bytes() and not files["es"].read_bytes().endswith(b"\n")

    args = ["--images", str(images), "--out", str(tmp_path / "out"),
            "--image-list", str(xtd / "XTD10/test_image_names.txt"), "--max-side", "8", "--workers", "2",
            "--mt", "de,fr", "--allow-benchmark-images"]
    for lang, path in files.items():
        args += ["--captions", f"{lang}={path}"]
    assert from_captions(args) == 0

    samples = read_shards(tmp_path / "out")
    assert len(samples) == len(names)
    expected = {("ja" if lang == "jp" else lang): plain_lines(path) for lang, path in files.items()}
    assert all(len(lines) == len(names) for lines in expected.values())
    for i, (_, record, _) in enumerate(samples):
        assert record["captions"] == {lang: [lines[i]] for lang, lines in expected.items()}
        assert record["mt"] == ["de", "fr"]
    # Lines with leading or trailing spaces in the source keep them.
    assert any(line != line.strip() for line in expected["tr"])
    meta = json.loads((tmp_path / "out/dataset.json").read_text())
    assert meta["languages"]["de"]["mt_captions"] == len(names) and meta["languages"]["en"]["mt_captions"] == 0


def test_read_lines_handles_crlf_gzip_and_missing_final_newline(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b" a dog \r\nzwei Katzen\r\n\r\nlast")
    with gzip.open(tmp_path / "lf.txt.gz", "wb") as f:
        f.write("un chat\tnoir\nsecond\n".encode())
    assert read_lines(tmp_path / "crlf.txt") == [" a dog ", "zwei Katzen", "", "last"]
    assert read_lines(tmp_path / "lf.txt.gz") == ["un chat\tnoir", "second"]

    (tmp_path / "names.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    with pytest.raises(CaptionFileError, match="crlf.txt has 4 lines but the image list"):
        read_aligned_captions(tmp_path / "names.txt", {"en": [tmp_path / "crlf.txt"]})


def test_jsonl_input_merges_repeated_images_and_keeps_mt(tmp_path):
    images = tmp_path / "images"
    placeholder_images(images, ["a.jpg", "sub/b.png", "c.jpg"])
    records = [
        {"image": "a.jpg", "captions": {"en": " A red square. ", "de": ["Ein rotes Quadrat.", "Rot."]}, "mt": ["de"]},
        {"image": "sub/b.png", "captions": {"en": ["Two dots"], "jp": "二つの点"}},
        {"image": "a.jpg", "captions": {"fr": ["Un carré rouge."]}},
        {"image": "c.jpg", "captions": {"en": "   "}},  # no real caption: skipped, reported
    ]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    assert from_captions(["--jsonl", str(jsonl), "--images", str(images), "--out", str(tmp_path / "out"),
                          "--workers", "1", "--format", "png", "--mt", "fr"]) == 0

    samples = read_shards(tmp_path / "out")
    assert [(key, record["captions"], record["mt"], set(files)) for key, record, files in samples] == [
        ("a", {"en": [" A red square. "], "de": ["Ein rotes Quadrat.", "Rot."], "fr": ["Un carré rouge."]},
         ["de", "fr"], {"png", "txt"}),
        ("sub_b", {"en": ["Two dots"], "ja": ["二つの点"]}, [], {"png", "txt"}),
    ]
    assert samples[0][2]["txt"].decode() == " A red square. "
    assert samples[0][1]["source"] == "captions"
    skipped = [json.loads(line) for line in (tmp_path / "out/skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"image": "c.jpg", "reason": "no captions"}]


def test_a_jsonl_caption_that_is_not_unicode_text_skips_its_line(tmp_path):
    images = tmp_path / "images"
    placeholder_images(images, ["a.jpg", "b.jpg"])
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"image": "a.jpg", "captions": {"en": "broken \\ud800"}}\n'  # valid JSON, a lone surrogate
                     '{"image": "b.jpg", "captions": {"en": "fine"}}\n', encoding="utf-8")
    assert from_captions(["--jsonl", str(jsonl), "--images", str(images), "--out", str(tmp_path / "out"),
                          "--workers", "1"]) == 0
    assert [key for key, _, _ in read_shards(tmp_path / "out")] == ["b"]
    skipped = [json.loads(line) for line in (tmp_path / "out/skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["reason"] == "bad record" and "surrogates" in skipped[0]["detail"]


@pytest.mark.parametrize("suffix, rows", [
    (".tsv", ["image\ten\tde", "x.jpg\tA cat, sitting.\tEine Katze.", 'y.jpg\t"Quoted" dog\t',
              "x.jpg\tA second cat.\t"]),
    (".csv", ["image,en,de", 'x.jpg,"A cat, sitting.",Eine Katze.', 'y.jpg,"""Quoted"" dog",',
              "x.jpg,A second cat.,"]),
])
def test_table_input_one_column_per_language(tmp_path, suffix, rows):
    images = tmp_path / "images"
    placeholder_images(images, ["x.jpg", "y.jpg"])
    table = tmp_path / f"captions{suffix}"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert from_captions(["--table", str(table), "--images", str(images), "--out", str(tmp_path / "out"),
                          "--workers", "1"]) == 0
    samples = read_shards(tmp_path / "out")
    assert [(key, record["captions"]) for key, record, _ in samples] == [
        ("x", {"en": ["A cat, sitting.", "A second cat."], "de": ["Eine Katze."]}),
        ("y", {"en": ['"Quoted" dog']}),
    ]


def test_missing_and_corrupt_images_are_skipped_and_reported(tmp_path):
    images = tmp_path / "images"
    names = [f"img{i}.jpg" for i in range(8)]
    placeholder_images(images, names)
    (images / "img2.jpg").unlink()
    (images / "img4.jpg").write_bytes(b"this is not an image")
    jpeg = (images / "img6.jpg").read_bytes()
    (images / "img6.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "en.txt").write_text("\n".join(f"caption {i}" for i in range(8)) + "\n")

    run = subprocess.run([sys.executable, "-m", "data_recipes.from_captions", "--images", str(images),
                          "--out", str(tmp_path / "out"), "--image-list", str(tmp_path / "names.txt"),
                          "--captions", f"en={tmp_path / 'en.txt'}", "--shard-size", "2", "--workers", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "wrote 5 samples in 3 shards" in run.stdout and "missing: 1, unreadable: 2" in run.stdout

    skipped = [json.loads(line) for line in (tmp_path / "out/skipped.jsonl").read_text().splitlines()]
    assert [(s["image"], s["reason"]) for s in skipped] == \
        [("img2.jpg", "missing"), ("img4.jpg", "unreadable"), ("img6.jpg", "unreadable")]
    samples = read_shards(tmp_path / "out")
    assert [record["captions"]["en"] for _, record, _ in samples] == [[f"caption {i}"] for i in (0, 1, 3, 5, 7)]
    meta = json.loads((tmp_path / "out/dataset.json").read_text())
    assert meta["num_samples"] == 5 and meta["num_shards"] == 3
    assert meta["skipped"] == {"missing": 1, "unreadable": 2}
    assert meta["languages"]["en"] == {"samples": 5, "captions": 5, "mt_captions": 0, "mt_samples": 0}


def test_images_shrink_to_max_side_but_never_grow(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 20), "red").save(images / "wide.jpg")
    Image.new("RGB", (6, 10), "blue").save(images / "small.jpg")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"image": n, "captions": {"en": n}}) + "\n" for n in ("wide.jpg", "small.jpg")))
    assert from_captions(["--jsonl", str(jsonl), "--images", str(images), "--out", str(tmp_path / "out"),
                          "--max-side", "16", "--format", "webp", "--workers", "1"]) == 0
    sizes = [Image.open(io.BytesIO(files["webp"])).size for _, _, files in read_shards(tmp_path / "out")]
    assert sizes == [(16, 8), (6, 10)]


@pytest.mark.parametrize("extra, message", [
    (["--captions", "en={captions}"], "has 2 lines but the image list"),
    (["--captions", "xx={captions}"], "unknown language code 'xx'"),
    (["--captions", "en"], "--captions expects LANG=FILE"),
    (["--captions", "en={captions}", "--quality", "0"], "--quality must be between 1 and 100"),
    ([], "--image-list needs at least one --captions"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, extra, message):
    (tmp_path / "names.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    (tmp_path / "captions.txt").write_text("one\ntwo\n")
    (tmp_path / "images").mkdir()
    extra = [a.format(captions=tmp_path / "captions.txt") for a in extra]
    with pytest.raises(SystemExit) as exit_info:
        from_captions(["--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                       "--image-list", str(tmp_path / "names.txt"), *extra])
    assert exit_info.value.code == 2  # argparse's usage error, not a crash
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_benchmark_test_images_are_skipped_unless_allowed(shared_data, tmp_path, capsys):
    """XTD10's own names, a COCO 2017 spelling of one of them and a Flickr30k test image are skipped by
    default and listed; --allow-benchmark-images keeps them, counted and named in dataset.json."""
    xtd = [n.strip() for n in read_lines(shared_data / "xtd10/XTD10/test_image_names.txt")]
    benchmark = xtd[:25] + xtd[-5:]  # train2014 and val2014 names
    coco_2017 = xtd[100].split("_")[-1]  # COCO_train2014_000000123456.jpg is 000000123456.jpg in COCO 2017
    flickr = "1007129816.jpg"  # first image of Multi30K test2016, also in xFlickr&CO
    others = [f"holiday_{i:04d}.jpg" for i in range(20)]
    names = benchmark + [coco_2017, flickr] + others
    images = tmp_path / "images"
    placeholder_images(images, names)
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"image": n, "captions": {"en": f"photo {i}", "de": f"Foto {i}"}}) + "\n"
                             for i, n in enumerate(names)))
    args = ["--jsonl", str(jsonl), "--images", str(images), "--max-side", "8", "--workers", "1",
            "--benchmark-data", str(shared_data)]

    assert from_captions([*args, "--out", str(tmp_path / "guarded")]) == 0
    assert "benchmark test images skipped: multi30k-test2016: 1, xflickrco: 1, xtd10: 31" in capsys.readouterr().out
    assert sorted(key for key, _, _ in read_shards(tmp_path / "guarded")) == [Path(n).stem for n in others]
    listed = [json.loads(line) for line in (tmp_path / "guarded/skipped.jsonl").read_text().splitlines()]
    assert [s["image"] for s in listed] == benchmark + [coco_2017, flickr]
    assert {s["reason"] for s in listed} == {"benchmark image"}
    meta = json.loads((tmp_path / "guarded/dataset.json").read_text())
    assert meta["skipped"] == {"benchmark image": 32} and meta["num_samples"] == 20
    assert meta["benchmark_images"]["checked"] == {"xtd10": 1000, "xflickrco": 2000, "multi30k-test2016": 1000}
    assert meta["benchmark_images"]["skipped"] == {"multi30k-test2016": 1, "xflickrco": 1, "xtd10": 31}

    assert from_captions([*args, "--out", str(tmp_path / "allowed"), "--allow-benchmark-images"]) == 0
    meta = json.loads((tmp_path / "allowed/dataset.json").read_text())
    assert meta["num_samples"] == len(names) and meta["skipped"] == {}
    assert meta["benchmark_images"]["kept_images"]["xtd10"] == benchmark + [coco_2017]


def test_benchmarks_whose_files_are_missing_are_named_not_fatal(tmp_path, capsys):
    images = tmp_path / "images"
    placeholder_images(images, ["COCO_train2014_000000061844.jpg"])
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"image": "COCO_train2014_000000061844.jpg", "captions": {"en": "a photo"}}) + "\n")
    (tmp_path / "benchmarks/xtd10").mkdir(parents=True)  # a user holding no benchmark files yet
    assert from_captions(["--jsonl", str(jsonl), "--images", str(images), "--out", str(tmp_path / "out"),
                          "--benchmark-data", str(tmp_path / "benchmarks")]) == 0
    err = capsys.readouterr().err
    assert "cannot recognise the test images of xtd10 (no test_image_names.txt under" in err
    meta = json.loads((tmp_path / "out/dataset.json").read_text())
    assert meta["num_samples"] == 1 and meta["benchmark_images"]["checked"] == {}
    assert set(meta["benchmark_images"]["not_checked"]) == {"xtd10", "xflickrco", "multi30k-test2016"}
