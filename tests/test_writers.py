"""Every writer leaves a folder holding files it did not write as it was, unless told to (--overwrite).

Once, ``synth_scenes --out DIR`` deleted the user's own ``DIR/train`` and ``DIR/test``, an export replaced a
non-empty folder whole (or the model it was reading), ``--output-dir ''`` trained into the working directory,
and ``demo.py run --out FILE`` wrote its data beside FILE.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from test_train import _train_in_process
from test_train import shards as synth_shards  # noqa: F401  (a fixture)

from data_recipes import emoji_world, from_captions, synth_scenes, translate
from eval import xtd
from mclip_hbt import export
from mclip_hbt.model.clip import create_model
from mclip_hbt.paths import REPO_ROOT


def users_folder(path: Path) -> dict[str, bytes]:
    """A folder of the user's own files; returns what they hold, to compare afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("mine, not a dataset")
    return snapshot(path)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_synth_scenes_leaves_the_users_train_and_test_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "world"
    mine = {part: users_folder(out / part) for part in ("train", "test")}
    argv = ["--out", str(out), "--train-samples", "4", "--test-samples", "2", "--image-size", "16", "--no-progress"]
    err = refused(synth_scenes.main, argv, capsys)
    assert "holds files this command did not write (notes.txt)" in err and "--overwrite" in err
    assert {part: snapshot(out / part) for part in mine} == mine
    synth_scenes.main(argv + ["--overwrite"])
    assert not (out / "train" / "notes.txt").exists() and (out / "train" / "sizes.json").is_file()
    synth_scenes.main(argv)  # its own finished dataset: a re-run is a no-op, not a refusal


def test_emoji_world_leaves_the_users_test_split(tmp_path, shared_data):
    out = tmp_path / "emoji"
    mine = users_folder(out / "test_seen")
    with pytest.raises(ValueError, match="holds files this command did not write"):
        emoji_world.generate(out, cldr=shared_data / "cldr-annotations" / "annotations",
                             font=shared_data / "emoji-font" / "NotoColorEmoji.ttf",
                             train_samples=4, test_samples=2, progress=False)
    assert snapshot(out / "test_seen") == mine and not (out / "train").exists()


def test_from_captions_leaves_a_folder_that_is_not_a_shard_set(tmp_path, capsys):
    from PIL import Image
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "names.txt").write_text("a.png\n")
    (tmp_path / "en.txt").write_text("a black square\n")
    out = tmp_path / "out"
    mine = users_folder(out)
    argv = ["--image-list", str(tmp_path / "names.txt"), "--captions", f"en={tmp_path / 'en.txt'}",
            "--images", str(tmp_path / "images"), "--out", str(out)]
    assert "did not write (notes.txt)" in refused(from_captions.main, argv, capsys)
    assert snapshot(out) == mine
    assert from_captions.main(argv + ["--overwrite"]) == 0 and (out / "sizes.json").is_file()
    assert from_captions.main(argv) == 0  # a shard set it wrote: written again


def test_translate_refuses_before_loading_a_model(synth_shards, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "mt"
    mine = users_folder(out)
    err = refused(translate.main, ["--shards", str(synth_shards), "--model", str(tmp_path / "no-model-needed"),
                                   "--target-langs", "de", "--out", str(out)], capsys)
    assert "did not write (notes.txt)" in err and snapshot(out) == mine


@pytest.mark.parametrize("layout", ["open_clip", "transformers"])
def test_export_refuses_a_foreign_folder_the_working_directory_and_the_model_itself(layout, tmp_path, capsys,
                                                                                    monkeypatch):
    model = tmp_path / "run" / "model"
    create_model("tiny").save_pretrained(model)
    out = tmp_path / "exports" / "mine"
    mine = users_folder(out)
    assert "did not write (notes.txt)" in refused(export.main, [layout, str(model), str(out)], capsys)
    assert snapshot(out) == mine
    before = snapshot(model)
    assert "model folder being exported" in refused(export.main, [layout, str(model), str(model)], capsys)
    assert snapshot(model) == before
    monkeypatch.chdir(tmp_path / "exports")
    assert "working directory" in refused(export.main, [layout, str(model), "."], capsys)
    assert export.main([layout, str(model), str(out), "--overwrite"]) == 0 and not (out / "notes.txt").exists()
    assert export.main([layout, str(model), str(out)]) == 0  # an earlier export of its own is replaced


def test_train_refuses_an_empty_output_dir_and_a_model_folder_it_did_not_write(synth_shards, tmp_path):  # noqa: F811
    result = _train_in_process(["--train-data", str(synth_shards), "--output-dir", ""])
    assert result.returncode == 2 and "--output-dir: is empty" in result.stderr
    run = tmp_path / "run"
    create_model("tiny").save_pretrained(run / "model")  # a model saved by hand, no train_meta.json
    mine = snapshot(run / "model")
    result = _train_in_process(["--train-data", str(synth_shards), "--output-dir", str(run), "--max-steps", "1"])
    assert result.returncode == 2 and "holds files this command did not write" in result.stderr
    assert snapshot(run / "model") == mine


def test_demo_refuses_a_file_as_its_out(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = demo
    spec.loader.exec_module(demo)
    target = tmp_path / "hostname"
    target.write_text("a file")
    assert "is a file" in refused(demo.main, ["run", "--out", str(target)], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostname"]  # no data/ beside it


def test_an_evaluator_leaves_a_records_folder_holding_other_files(tmp_path, capsys):
    out = tmp_path / "result.json"
    mine = users_folder(tmp_path / "result_clip_benchmark")
    err = refused(xtd.main, ["--model", "tiny", "--text-only", "--lang", "en,de", "--out", str(out)], capsys)
    assert "result_clip_benchmark holds files this command did not write" in err
    assert snapshot(tmp_path / "result_clip_benchmark") == mine and not out.exists()
