"""demo.py's command line refuses bad values before any stage runs."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from data_recipes.synth_scenes import generate
from mclip_hbt.paths import REPO_ROOT


@pytest.fixture(scope="module")
def demo_main():
    """``demo.main``, loaded from the repository root (demo.py is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module.main


def files_under(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["sweep", "--alphas", "0,2"], "--alphas"),
    (["sweep", "--seeds", "0,x"], "--seeds"),
    (["run", "--alpha", "1.5"], "--alpha"),
    (["sweep", "--seeds", ","], "--seeds"),
    (["sweep", "--jobs", "0"], "--jobs"),
    (["run", "--train-samples", "-5"], "--train-samples"),
    (["run", "--steps", "-1"], "--steps"),
    (["run", "--steps", "0"], "--steps"),  # refused, not silently replaced by the config's step count
    (["run", "--world", "flat"], "--world"),
    (["run", "--eval-languages", "sw,xx"], "--eval-languages"),
])
def test_bad_values_are_refused(demo_main, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        demo_main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_data_made_with_other_settings_is_refused_naming_the_setting(demo_main, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what demo.main sets, undone after the test
    generate(tmp_path / "data" / "synth", train_samples=20, test_samples=1000, image_size=64, seed=0,
             progress=False)  # the demo's data settings, but 20 training images
    before = files_under(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["run", "--world", "synth", "--train-samples", "30", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "--train-samples" in err and "train_samples: 20 there, 30 asked" in err
    assert files_under(tmp_path) == before
