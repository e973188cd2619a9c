"""User errors that once ended in a traceback: each is now one line naming what was wrong (exit 2 or 1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import _train_in_process
from test_train import shards as synth_shards  # noqa: F401  (a fixture)

from eval import report, xtd
from mclip_hbt import export
from mclip_hbt.model.clip import create_model
from mclip_hbt.paths import REPO_ROOT


def one_line_refusal(main, argv: list[str], capsys, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_a_train_state_of_the_wrong_shape_is_refused_naming_resume(synth_shards, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    common = ["--train-data", str(synth_shards), "--output-dir", str(run), "--batch-size", "16", "--warmup-steps", "1"]
    assert _train_in_process(common + ["--max-steps", "1", "--checkpoint-every", "1"]).returncode == 0
    checkpoint = run / "checkpoints" / "step_00000001"
    torch.save({"optimizer": "not a state", "scheduler": {}, "scaler": None, "training": {}},
               checkpoint / "train_state.pt")
    manifest = json.loads((checkpoint / "manifest.json").read_text())  # consistent, so the content is judged
    from mclip_hbt.train.checkpoints import sha256_of
    manifest["files"]["train_state.pt"] = {"bytes": (checkpoint / "train_state.pt").stat().st_size,
                                           "sha256": sha256_of(checkpoint / "train_state.pt")}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    result = _train_in_process(common + ["--max-steps", "2", "--resume", "auto"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--resume:" in result.stderr and "train_state.pt cannot be restored" in result.stderr


def test_relink_of_a_config_that_is_not_an_export_or_cannot_be_written(tmp_path, capsys, small_fs):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"text_cfg": [1, 2]}}))
    assert "is not an open_clip export's config" in one_line_refusal(export.main, ["relink", str(folder)], capsys)
    readonly = small_fs.mount(size="64m")
    assert export.main(["open_clip", "tiny", str(readonly / "export")]) == 0
    small_fs.make_readonly(readonly)
    line = one_line_refusal(export.main, ["relink", str(readonly / "export")], capsys)
    assert "cannot rewrite" in line and "make the folder writable" in line


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(created_from="x"), None),  # only names the run in result records: not a reason to stop
    (lambda c: c["architecture"].update(max_length=100_000), "beyond the 80 positions of the text encoder"),
])
def test_an_odd_saved_config_is_read_or_refused_in_one_line(change, message, tmp_path, capsys):
    create_model("tiny").save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    change(config)
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    argv = ["--model", str(tmp_path / "model"), "--text-only", "--lang", "en,de", "--no-progress"]
    if message is None:
        assert xtd.main(argv) == 0
    else:
        assert message in one_line_refusal(xtd.main, argv, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--lang", ""], "--lang: no language given"),
    (["--lang", "en,de", "--device", "meta"], "--device meta: evaluate on cpu, cuda or mps"),
])
def test_evaluator_options_that_name_nothing_or_no_real_device(argv, message, capsys):
    assert message in one_line_refusal(xtd.main, ["--model", "tiny", "--text-only", *argv], capsys)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["summary"]["monolingual"]["en"].update({"t2i_r@10": "0.5"}), "t2i_r@10 is '0.5', not a number"),
    (lambda d: d["meta"]["train"].update(batches={"steps": 10}), "not the trainer's batch summary"),
])
def test_report_on_a_damaged_result_names_the_field(damage, message, tmp_path, capsys):
    doc = {"results": [], "meta": {"benchmark": "xtd10", "train": {"alpha": 0.5, "seed": 0}},
           "summary": {"monolingual": {"en": {"t2i_r@10": 0.5}}, "multilingual_image": None,
                       "multilingual_text": None}}
    damage(doc)
    (tmp_path / "r.json").write_text(json.dumps(doc))
    assert message in one_line_refusal(report.main, [str(tmp_path / "r.json"), "--out", str(tmp_path / "out")], capsys)


def test_a_yaml_list_of_numbers_as_languages(synth_shards, tmp_path):  # noqa: F811
    config = tmp_path / "c.yaml"
    config.write_text("languages: [1, 2]\n")
    result = _train_in_process(["--config", str(config), "--train-data", str(synth_shards), "--output-dir",
                                str(tmp_path / "run")])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--languages: language codes are text" in result.stderr


def test_a_read_only_home_without_a_cache_says_where_to_point_it(small_fs, tmp_path):
    home = small_fs.mount(size="1m", readonly=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MCLIP_HBT_CACHE", "XDG_CACHE_HOME")}
    proc = subprocess.run([sys.executable, "-m", "eval.xtd", "--model", "e5-small-vit-b32", "--text-only", "--lang",
                           "en,de"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**env, "HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"cannot write the cache folder {Path(home) / '.cache' / 'mclip_hbt'}" in proc.stderr
    assert "set MCLIP_HBT_CACHE to a folder you can write to" in proc.stderr
