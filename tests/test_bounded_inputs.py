"""Inputs that once hung a command or took gigabytes: a FIFO named like an image, a 1×20000 strip, a brace pattern
of ten million shards, ``--config /dev/zero``. Each is now refused or skipped and counted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mclip_hbt.data.images import ImageError, open_image
from mclip_hbt.data.shard_plan import brace_count, expand_shards
from mclip_hbt.options import OptionError
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.train.config import parse_config


def xtd_split(root: Path, names: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "test_image_names.txt").write_text("\n".join(names) + "\n")
    for lang in ("en", "de"):
        (root / f"test_1kcaptions_{lang}.txt").write_text("\n".join(f"{lang} {n}" for n in names) + "\n")
    return root


def test_a_fifo_named_like_an_image_is_unreadable_not_a_hang(tmp_path):
    split = xtd_split(tmp_path / "split", ["a.png", "b.png", "c.png"])
    for name in ("a.png", "c.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(split / "images" / name)
    os.mkfifo(split / "images" / "b.png")  # nothing ever writes to it: opening it for reading would wait forever
    with pytest.raises(ImageError, match="not a regular file"):
        open_image(split / "images" / "b.png")
    out = tmp_path / "xtd.json"
    proc = subprocess.run([sys.executable, "-m", "eval.xtd", "--model", "tiny", "--captions", str(split), "--images",
                           str(split / "images"), "--out", str(out), "--num-workers", "1", "--no-progress"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(out.read_text())["meta"]
    assert meta["n_unreadable_images"] == 1 and meta["unreadable_images"][0].endswith("b.png")

    (tmp_path / "names.txt").write_text("a.png\nb.png\n")
    (tmp_path / "en.txt").write_text("red\nnever read\n")
    proc = subprocess.run([sys.executable, "-m", "data_recipes.from_captions", "--image-list",
                           str(tmp_path / "names.txt"), "--captions", f"en={tmp_path / 'en.txt'}", "--images",
                           str(split / "images"), "--out", str(tmp_path / "shards"), "--workers", "1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = [json.loads(line) for line in (tmp_path / "shards" / "skipped.jsonl").read_text().splitlines()]
    assert [s["image"] for s in skipped] == ["b.png"] and "not a regular file" in skipped[0]["detail"]


def test_an_extreme_strip_is_refused_before_it_is_decoded(tmp_path):
    Image.new("RGB", (1, 20000)).save(tmp_path / "strip.png")
    Image.new("RGB", (40, 800)).save(tmp_path / "tall.png")  # 20:1, a real (if odd) picture
    with pytest.raises(ImageError, match="more than 50 times the other"):
        open_image(tmp_path / "strip.png")
    assert open_image(tmp_path / "tall.png").size == (40, 800)


def test_a_brace_pattern_of_millions_of_shards_is_refused_without_expanding():
    assert brace_count("s-{000..099}-{a,b}.tar") == 200 and brace_count("s.tar") == 1
    with pytest.raises(OptionError, match="names 10,000,001 shards"):  # the list alone was minutes and gigabytes
        expand_shards("x-{0..10000000}.tar")


@pytest.mark.parametrize("config", ["/dev/zero", "fifo", "big"])
def test_a_config_that_is_not_a_small_yaml_file_is_refused_before_it_is_read(config, tmp_path, capsys):
    if config == "fifo":
        config = tmp_path / "config.yaml"
        os.mkfifo(config)
    elif config == "big":
        config = tmp_path / "config.yaml"
        config.write_text("# padding\n" * 200_000)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", str(config)])
    assert exit_info.value.code == 2 and "is not a YAML file of at most 1024 KiB" in capsys.readouterr().err
