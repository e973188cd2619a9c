"""Evaluation under faults (issue 11, items 6, 7, 8, 11): broken models score no better than chance or
are refused, unwritable outputs are refused before any work, a full disk at the end is one line,
unreadable images and damaged model files are counted or named, saved models are readable by others."""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from eval import report, retrieval_settings, xtd
from eval.metrics import (
    NonFiniteEmbeddingsError,
    mean_average_precision,
    recall_at_k,
    relevant_ranks,
    retrieval_recalls,
)
from mclip_hbt.model.clip import CONFIG_NAME, WEIGHTS_NAME, MultilingualCLIP, create_model
from mclip_hbt.offline.hub import ModelUnavailableError

N_IMAGES = 12
LANGS = ("en", "de", "fr")
CAPTION = {"en": "a photo number {}", "de": "ein Foto Nummer {}", "fr": "une photo numéro {}"}


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """A 12-image XTD-layout split (en, de, fr), real PNG files under images/."""
    root = tmp_path_factory.mktemp("split")
    names = [f"img{i:02d}.png" for i in range(N_IMAGES)]
    (root / "images").mkdir()
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (i * 20, 255 - i * 20, (i * 77) % 256)).save(root / "images" / name)
    (root / "test_image_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    for lang in LANGS:
        lines = [CAPTION[lang].format(i) for i in range(N_IMAGES)]
        (root / f"test_1kcaptions_{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def xtd_args(split: Path, model: str | Path, *extra) -> list[str]:
    return ["--lang", ",".join(LANGS), "--model", str(model), "--images", str(split), "--captions", str(split),
            "--num-workers", "0", "--no-progress", *map(str, extra)]


def broken_model(folder: Path, kind: str) -> Path:
    """A saved tiny model whose every text and image embedding is the same unit vector ("collapsed"),
    zero ("zero") or NaN ("nan"), exactly."""
    model = create_model("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan") if kind == "nan" else 0.0)
        if kind == "collapsed":
            # Every LayerNorm then outputs its bias whatever the input, and each projection maps it
            # onto the first axis: every embedding is (1, 0, ..., 0), bit for bit.
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.bias.fill_(0.25)
            model.text_projection.weight[0] = 0.25
            model.visual.proj[:, 0] = 0.25
    return model.save_pretrained(folder)


# --- item 6: metrics never reward a broken model ---------------------------------------------------

@pytest.mark.parametrize("embedding", ["collapsed", "zero"])
def test_constant_embeddings_score_no_hit_and_the_widest_rank_distance(embedding):
    n, dim = 20, 8
    emb = torch.zeros(n, dim)
    if embedding == "collapsed":
        emb[:, 0] = 1.0
    recalls = retrieval_recalls(emb, emb.clone(), torch.arange(n), ks=(1, 5, 10))
    assert recalls == {key: 0.0 for key in recalls}  # was 1.0 for every key (ties counted as hits)
    aligned = {lang: emb.clone() for lang in LANGS}
    # Caption pool: 59 other captions, 2 relevant; tied, both rank after the 57 irrelevant ones.
    pool = retrieval_settings.multilingual_text(aligned)
    assert pool["map"] == pytest.approx((1 / 58 + 2 / 59) / 2)
    assert pool["rank_distance"] == 57.0  # was 0.0: no language bias at all
    image_pool = retrieval_settings.multilingual_image(emb, aligned)
    assert image_pool["r@10"] == 0.0 and image_pool["rank_distance"] == 57.0
    assert retrieval_settings.crosslingual(aligned)["r@1"]["de"]["en"] == 0.0


def test_a_partly_collapsed_model_gains_nothing_from_its_ties():
    # Queries 0-4 are informative, 5-9 collapsed onto one vector: only the informative ones hit.
    emb = torch.eye(10)
    emb[5:] = torch.nn.functional.normalize(torch.ones(5, 10), dim=-1)
    r = relevant_ranks(emb, emb, torch.arange(10), torch.arange(10))
    assert recall_at_k(r, 1) == 0.5
    assert r.ranks[5:, 0].tolist() == [5] * 5  # after the four other collapsed items they tie with
    assert mean_average_precision(r) == pytest.approx((5 + 5 / 5) / 10)


def test_nan_and_infinite_embeddings_are_refused_naming_the_side_and_rows():
    text, images = torch.eye(6), torch.eye(6)
    text[[1, 4]] = float("nan")
    with pytest.raises(NonFiniteEmbeddingsError, match="2 of 6 text embeddings hold NaN or infinite"):
        retrieval_recalls(text, images, torch.arange(6))
    images[0, 3] = float("inf")
    with pytest.raises(NonFiniteEmbeddingsError, match="1 of 6 image embeddings"):
        retrieval_recalls(torch.eye(6), images, torch.arange(6))
    with pytest.raises(NonFiniteEmbeddingsError, match="1 of 6 item embeddings"):
        relevant_ranks(torch.eye(6), images, torch.arange(6), torch.arange(6))
    with pytest.raises(NonFiniteEmbeddingsError, match="2 of 6 query embeddings"):
        relevant_ranks(text, torch.eye(6), torch.arange(6), torch.arange(6))


@pytest.mark.parametrize("kind", ["collapsed", "zero"])
def test_eval_xtd_scores_a_collapsed_or_zero_model_at_no_better_than_chance(split, tmp_path, kind):
    model = broken_model(tmp_path / kind, kind)
    out = tmp_path / "xtd.json"
    assert xtd.main(xtd_args(split, model, "--out", out)) == 0
    summary = json.loads(out.read_text())["summary"]
    for lang in LANGS:
        assert summary["monolingual"][lang] == {key: 0.0 for key in summary["monolingual"][lang]}, lang
    assert {summary["multilingual_image"][f"r@{k}"] for k in (1, 5, 10)} == {0.0}
    assert {r for row in summary["crosslingual"]["r@1"].values() for r in row.values()} == {0.0}
    # 35 other captions, 2 relevant: the 33 irrelevant ones tie in between.
    assert summary["multilingual_text"]["rank_distance"] == 33.0


def test_eval_xtd_refuses_a_nan_model_with_one_line(split, tmp_path, capsys):
    model = broken_model(tmp_path / "nan", "nan")
    out = tmp_path / "xtd.json"
    # In this process: exit status 1 and the one line (any other exception would fail the test).
    with pytest.raises(SystemExit) as exc:
        xtd.main(xtd_args(split, model, "--out", out))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"--model {model}: 36 of 36 text embeddings hold NaN or infinite values" in err
    assert "re-export or re-train" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# --- item 7: unwritable outputs ----------------------------------------------------------------------

def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system has no space left."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == 28  # ENOSPC
    finally:
        os.close(fd)


def test_eval_xtd_on_a_full_disk_prints_the_scores_and_one_line(split, small_fs, capsys):
    disk = small_fs.mount(size="1m")
    fill(disk)
    assert xtd.main(xtd_args(split, "tiny", "--out", disk / "xtd.json", "--plot", disk / "xtd.png")) == 1
    captured = capsys.readouterr()
    assert "multilingual caption pool" in captured.out  # the evaluation ran and its scores were shown
    assert f"results not written to {disk / 'xtd.json'}: No space left on device" in captured.err
    assert f"plot not written to {disk / 'xtd.png'}: No space left on device" in captured.err
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no .tmp left behind


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_eval_xtd_refuses_a_read_only_output_before_any_work(split, small_fs, capsys, option):
    readonly = small_fs.mount(readonly=True)
    target = readonly / ("xtd.json" if option == "--out" else "xtd.png")
    with pytest.raises(SystemExit) as exc:
        xtd.main(xtd_args(split, "tiny", option, target))
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert f"{option}: cannot write to {readonly}" in captured.err
    assert captured.out == ""  # refused before the evaluation


def result_doc(**overrides) -> dict:
    doc = {"results": [], "meta": {"benchmark": "xtd10", "train": {"alpha": 0.5, "seed": 0}},
           "summary": {"monolingual": {"en": {"t2i_r@10": 0.5}}, "crosslingual": None, "multilingual_image": None,
                       "multilingual_text": {"map": 0.2, "rank_distance": 10.0, "per_language": {}}}}
    doc.update(overrides)
    return doc


def test_eval_report_refuses_a_read_only_out_folder(tmp_path, small_fs, capsys):
    result = tmp_path / "a.json"
    result.write_text(json.dumps(result_doc()))
    readonly = small_fs.mount(readonly=True)
    with pytest.raises(SystemExit) as exc:
        report.main([str(result), "--out", str(readonly / "report")])
    assert exc.value.code == 2
    assert f"--out: cannot write to {readonly / 'report'}" in capsys.readouterr().err


def test_eval_report_on_a_full_disk_names_what_was_not_written(tmp_path, small_fs, capsys):
    result = tmp_path / "a.json"
    result.write_text(json.dumps(result_doc()))
    disk = small_fs.mount(size="1m")
    (disk / "report").mkdir()
    fill(disk)
    assert report.main([str(result), "--out", str(disk / "report")]) == 1
    err = capsys.readouterr().err
    for name in ("report.md", "report.json"):
        assert f"not written to {disk / 'report' / name}: No space left on device" in err
    assert list((disk / "report").iterdir()) == []


# --- item 8: damaged inputs ------------------------------------------------------------------------

def huge_png(path: Path, side: int = 20000) -> None:
    """A real, valid PNG of side × side black pixels (1 bit each) in a few tens of kilobytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def test_a_decompression_bomb_image_is_counted_not_a_traceback(split, tmp_path, capsys):
    bombed = shutil.copytree(split, tmp_path / "split")
    bomb = bombed / "images" / "img03.png"
    huge_png(bomb)
    with pytest.MonkeyPatch.context() as patch:  # a genuine, valid 20000×20000 PNG, as PIL reads it
        patch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(bomb) as probe:
            assert probe.size == (20000, 20000)
            probe.verify()
    out = tmp_path / "xtd.json"
    assert xtd.main(xtd_args(bombed, "tiny", "--out", out)) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["n_unreadable_images"] == 1 and meta["unreadable_images"] == [str(bomb)]
    assert f"1 of {N_IMAGES} image(s) could not be decoded and are scored as misses" in capsys.readouterr().err


def test_an_unreadable_image_never_scores_as_a_hit():
    # A perfect model (each caption equals its image) with image 3 unreadable.
    emb = torch.eye(N_IMAGES)
    unreadable = torch.zeros(N_IMAGES, dtype=torch.bool)
    unreadable[3] = True
    recalls = retrieval_recalls(emb, emb.clone(), torch.arange(N_IMAGES), unreadable_images=unreadable)
    assert recalls == {key: pytest.approx((N_IMAGES - 1) / N_IMAGES) for key in recalls}
    aligned = {lang: emb.clone() for lang in LANGS}
    assert retrieval_settings.multilingual_image(emb, aligned, unreadable_images=unreadable)["r@10"] == \
        pytest.approx((N_IMAGES - 1) / N_IMAGES)


def damage(folder: Path, how: str) -> Path:
    """Damage one file of a saved model as a crash, a full disk or a bad copy would; return it."""
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return weights
    if how == "empty weights":
        weights.write_bytes(b"")
        return weights
    if how == "corrupt weights":
        weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])
        return weights
    if how == "malformed config":
        config.write_text(config.read_text()[:100])
        return config
    saved = json.loads(config.read_text())  # "config of the wrong shape"
    saved["architecture"] = ["not", "a", "mapping"]
    config.write_text(json.dumps(saved))
    return config


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    """A saved tiny model, written under the usual umask 022."""
    previous = os.umask(0o022)
    try:
        return create_model("tiny").save_pretrained(tmp_path_factory.mktemp("saved") / "tiny")
    finally:
        os.umask(previous)


def copy_model(saved: Path, dest: Path) -> Path:
    for file in saved.rglob("*"):
        target = dest / file.relative_to(saved)
        if file.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    return dest


@pytest.mark.parametrize("how", ["truncated weights", "empty weights", "corrupt weights", "malformed config",
                                 "config of the wrong shape"])
def test_a_damaged_saved_model_names_the_file(saved_tiny, tmp_path, how):
    model = copy_model(saved_tiny, tmp_path / "model")
    damaged = damage(model, how)
    with pytest.raises(ModelUnavailableError) as exc:
        MultilingualCLIP.from_pretrained(model)
    message = str(exc.value)
    assert message.startswith(f"{damaged} is damaged or incomplete (") and "re-train" in message
    assert "\n" not in message


def test_eval_xtd_with_truncated_weights_is_one_message(saved_tiny, split, tmp_path, capsys):
    model = copy_model(saved_tiny, tmp_path / "model")
    damage(model, "truncated weights")
    with pytest.raises(SystemExit) as exc:  # was a SafetensorError traceback
        xtd.main(xtd_args(split, model))
    assert exc.value.code == 2
    assert f"--model: {model / WEIGHTS_NAME} is damaged or incomplete" in capsys.readouterr().err


@pytest.mark.parametrize("doc, where", [
    (result_doc(summary={"xtd10": 5}), "summary.xtd10 is not a summary"),
    (result_doc(summary={"monolingual": {"en": 0.5}}), "summary.monolingual.en is 0.5, not an object"),
    (result_doc(summary={"monolingual": {"en": {"t2i_r@10": "high"}}}), "summary.monolingual.en.t2i_r@10 is 'high'"),
    (result_doc(summary=[1, 2]), "summary is [1, 2]"),
    (result_doc(meta="xtd10"), "meta is 'xtd10', not an object"),
    (result_doc(meta={"train": {"alpha": "half"}}), "meta.train.alpha is 'half', not a number"),
])
def test_eval_report_names_the_file_of_a_result_of_the_wrong_shape(tmp_path, capsys, doc, where):
    result = tmp_path / "a.json"
    result.write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exc:
        report.main([str(result), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert f"{result}: {where}" in capsys.readouterr().err


def test_eval_report_names_the_label_with_a_non_numeric_alpha(tmp_path, capsys):
    result = tmp_path / "a.json"
    result.write_text(json.dumps(result_doc(meta={})))
    with pytest.raises(SystemExit) as exc:
        report.main([str(result), "--out", str(tmp_path / "r"), "--label", str(result), "alpha=abc"])
    assert exc.value.code == 2
    assert f"--label {result}: alpha in label 'alpha=abc' is 'abc', not a number" in capsys.readouterr().err


# --- item 11: saved models are readable by others -------------------------------------------------

def test_a_saved_model_folder_is_readable_by_others(saved_tiny):
    folder = saved_tiny
    modes = {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*")}
    assert folder.stat().st_mode & 0o777 == 0o755  # was 0o700 (mkdtemp)
    assert {name: mode for name, mode in modes.items() if (folder / name).is_dir()} == {"tokenizer": 0o755}
    assert all(mode == 0o644 for name, mode in modes.items() if (folder / name).is_file()), modes
    assert {WEIGHTS_NAME, CONFIG_NAME} <= modes.keys()
