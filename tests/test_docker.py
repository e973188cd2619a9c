"""The evaluation image without a Docker engine: the entrypoint run as `docker run` would, and the Dockerfile's
paths."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_first_lines
from PIL import Image

from mclip_hbt.model.clip import create_model
from mclip_hbt.paths import REPO_ROOT

ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
#: Images of the XTD10 split that the documented eval.xtd command is run on.
N_XTD_IMAGES = 100


def _entrypoint(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def test_bare_call_prints_usage():
    result = _entrypoint()
    assert result.returncode == 0
    assert "usage: docker run" in result.stdout and "eval.xtd" in result.stdout


def test_unknown_command_is_refused_with_usage():
    result = _entrypoint("evaluate")
    assert result.returncode == 2 and "unknown command 'evaluate'" in result.stderr


@pytest.mark.parametrize("command", ["eval.m3c", "eval.report", "train", "data_recipes.synth_scenes"])
def test_commands_dispatch_to_the_python_modules(command):
    result = _entrypoint(command, "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


@pytest.mark.slow
def test_eval_xtd_runs_with_the_documented_arguments(shared_data, tmp_path):
    """`docker run -v /data:/data mclip-hbt eval.xtd --lang all --model /data/model --images /data/coco`."""
    # The real XTD10 caption files cut to their first N_XTD_IMAGES lines, found where the command looks
    # for them by default ($MCLIP_HBT_DATA/xtd10): the dispatch and the command's path through the
    # evaluation are the same for 100 images as for 1,000, the encoding time is not.
    shared = tmp_path / "shared"
    assert copy_first_lines(shared_data / "xtd10", shared / "xtd10", "test_*.txt", N_XTD_IMAGES)
    data = tmp_path / "data"
    create_model("tiny").save_pretrained(data / "model")
    names = (shared / "xtd10" / "XTD10" / "test_image_names.txt").read_text().split()
    assert len(names) == N_XTD_IMAGES
    for name in names:  # placeholder COCO images, in COCO's own subfolders
        folder = data / "coco" / ("train2014" if "_train2014_" in name else "val2014")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(name) * 7 % 256, 90, 160)).save(folder / name)
    out = tmp_path / "xtd.json"
    result = _entrypoint("eval.xtd", "--lang", "all", "--model", str(data / "model"), "--images",
                         str(data / "coco"), "--out", str(out), "--no-progress", timeout=600,
                         env={"MCLIP_HBT_DATA": str(shared)})
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert len(doc["summary"]["monolingual"]) == 11 and doc["meta"]["n_images"] == N_XTD_IMAGES


def _dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def test_every_path_the_dockerfile_copies_exists():
    copies = re.findall(r"^COPY\s+(.+)$", _dockerfile(), flags=re.M)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_dockerfile_installs_the_extra_the_readme_documents():
    installed = set(re.findall(r"pip install [^\n]*'\.\[([a-z,]+)\]'", _dockerfile()))
    documented = set(re.findall(r"pip install -e '\.\[([a-z,]+)\]'", (REPO_ROOT / "README.md").read_text()))
    assert installed and installed == documented
    assert re.search(r"ENTRYPOINT \[\"mclip-hbt-entrypoint\"\]", _dockerfile())
