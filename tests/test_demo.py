"""demo.py's command line refuses bad values before any stage runs; the sweep asks its stages for every run."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data_recipes.synth_scenes import generate
from mclip_hbt.paths import REPO_ROOT


@pytest.fixture(scope="module")
def demo_module():
    """demo.py, loaded from the repository root (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_main(demo_module):
    return demo_module.main


@pytest.fixture(scope="module")
def demo_synth_data(tmp_path_factory) -> Path:
    """synth_scenes data with the demo's settings but 20 training images (copied by the tests that use it)."""
    out = tmp_path_factory.mktemp("demo_data") / "synth"
    generate(out, train_samples=20, test_samples=1000, image_size=64, seed=0, progress=False)
    return out


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
    (["run", "--world", "synth", "--setting", "text"], "--setting text"),
    (["sweep", "--train-args", "--bogus 1"], "--train-args: not train.py options: --bogus 1"),
    (["sweep", "--train-args", "--text-lora-rank x"], "--train-args: train.py refuses"),
])
def test_bad_values_are_refused(demo_main, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        demo_main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_data_made_with_other_settings_is_refused_naming_the_setting(demo_main, demo_synth_data, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what demo.main sets, undone after the test
    shutil.copytree(demo_synth_data, tmp_path / "data" / "synth")
    before = files_under(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["run", "--world", "synth", "--train-samples", "30", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "--train-samples" in err and "train_samples: 20 there, 30 asked" in err
    assert files_under(tmp_path) == before


def test_a_sweep_with_parallel_jobs_trains_then_evaluates_every_run(demo_module, demo_synth_data, tmp_path, capsys,
                                                                    monkeypatch):
    # train.py, eval.xtd and eval.report are tested on their own; a recorder stands in for their processes
    # here, to check what the sweep asks of them: every alpha x seed trained, then evaluated with the pooled
    # languages, each run's output in its own log, the cores split, and a failed run reported without
    # stopping the others.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "unset by the test")  # restored after the test
    calls, lock = [], threading.Lock()
    # The first two trainings wait for each other: they must run at once (--jobs 2), and neither worker can
    # finish its run and take a third before the other has taken the second.
    both_training = threading.Barrier(2, timeout=60)

    def recorded_stage(cmd, log=None):
        with lock:
            calls.append((cmd, log))
            trainings = sum(c[1].endswith("train.py") for c, _ in calls)
        if cmd[1].endswith("train.py") and trainings <= 2:
            both_training.wait()
        if cmd[1].endswith("train.py"):
            run_dir = Path(cmd[cmd.index("--output-dir") + 1])
            if run_dir.name == "alpha1_seed1":
                raise subprocess.CalledProcessError(1, cmd)
            (run_dir / "model").mkdir(parents=True)
            (run_dir / "model" / "config.json").write_text("{}")
        elif cmd[2] == "eval.xtd":
            out = Path(cmd[cmd.index("--out") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            langs, pool = (cmd[cmd.index(flag) + 1].split(",") for flag in ("--lang", "--pool-lang"))
            out.write_text(json.dumps({"meta": {"languages": langs, "pool_languages": pool}}))

    monkeypatch.setattr(demo_module, "run", recorded_stage)
    shutil.copytree(demo_synth_data, tmp_path / "data" / "synth")
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        demo_module.main(["sweep", "--world", "synth", "--train-samples", "20", "--alphas", "0,1", "--seeds", "0,1",
                          "--jobs", "2", "--out", str(out)])
    assert "alpha 1 seed 1 (" in str(exit_info.value.code) and "alpha 0 seed" not in str(exit_info.value.code)
    assert capsys.readouterr().out.count("[sweep] ") == 4
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))

    trainings = [cmd for cmd, _ in calls if cmd[1].endswith("train.py")]
    assert all(cmd[cmd.index("--keep-checkpoints") + 1] == "1" for cmd in trainings)  # one checkpoint per sweep run
    trained = [Path(cmd[cmd.index("--output-dir") + 1]).name for cmd in trainings]
    assert sorted(trained) == ["alpha0_seed0", "alpha0_seed1", "alpha1_seed0", "alpha1_seed1"]
    assert set(trained[:2]) == {"alpha0_seed0", "alpha1_seed0"}  # seed-major: whole alpha curves first
    for name in ("alpha0_seed0", "alpha0_seed1", "alpha1_seed0"):
        run_calls = [(cmd, log) for cmd, log in calls if str(out / name) in " ".join(cmd)]
        trains = [cmd[1].endswith("train.py") for cmd, _ in run_calls]
        assert trains[0] and len(trains) > 1 and not any(trains[1:])  # trained, then evaluated
        assert {log for _, log in run_calls} == {out / name / "sweep.log"}
        evaluation = run_calls[1][0]
        assert evaluation[evaluation.index("--pool-lang") + 1] == evaluation[evaluation.index("--lang") + 1]
    assert not any(str(out / "alpha1_seed1" / "eval") in " ".join(cmd) for cmd, _ in calls)


def test_a_run_folder_made_with_other_settings_is_refused_not_reported_as_new(demo_module, demo_synth_data, tmp_path,
                                                                              capsys, monkeypatch):
    # A second `demo.py run` with another --alpha once said "training skipped" and printed the old model's table.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trained = []

    def fake_training(cmd, log=None):
        if cmd[1].endswith("train.py"):
            trained.append(cmd)
            model = Path(cmd[cmd.index("--output-dir") + 1]) / "model"
            model.mkdir(parents=True)
            (model / "config.json").write_text("{}")
        else:
            raise RuntimeError("evaluation reached")  # stop here: this test is about the training stage

    monkeypatch.setattr(demo_module, "run", fake_training)
    shutil.copytree(demo_synth_data, tmp_path / "data" / "synth")
    common = ["run", "--world", "synth", "--train-samples", "20", "--out", str(tmp_path / "demo")]
    with pytest.raises(RuntimeError, match="evaluation reached"):
        demo_module.main([*common, "--alpha", "0.5"])
    monkeypatch.chdir(tmp_path)  # the same settings, the same folders spelled relatively: kept, not trained again
    with pytest.raises(RuntimeError, match="evaluation reached"):
        demo_module.main(["run", "--world", "synth", "--train-samples", "20", "--out", "demo", "--alpha", "0.5"])
    assert len(trained) == 1 and "training skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        demo_module.main([*common, "--alpha", "0"])
    assert "holds a run made with other settings" in str(exit_info.value.code) and len(trained) == 1


def test_options_train_py_refused_do_not_bind_the_run_folder(demo_module, demo_synth_data, tmp_path, monkeypatch):
    # A mistyped --train-args value that the real train.py refuses trained nothing: the corrected re-run trains there
    # instead of being refused as "a run made with other settings".
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(demo_synth_data, tmp_path / "data" / "synth")
    common = ["run", "--world", "synth", "--train-samples", "20", "--out", str(tmp_path / "demo")]
    with pytest.raises(subprocess.CalledProcessError):
        demo_module.main([*common, "--train-args", "--keep-checkpoints 0"])
    assert not (tmp_path / "demo" / "train_config.json").exists()
    trained = []

    def fake_training(cmd, log=None):
        if not cmd[1].endswith("train.py"):
            raise RuntimeError("evaluation reached")  # stop here: this test is about the training stage
        trained.append(cmd)
        (Path(cmd[cmd.index("--output-dir") + 1]) / "model").mkdir()

    monkeypatch.setattr(demo_module, "run", fake_training)
    with pytest.raises(RuntimeError, match="evaluation reached"):
        demo_module.main(common)
    assert len(trained) == 1 and json.loads((tmp_path / "demo" / "demo_settings.json").read_text())["train_args"] == []
    # Once train.py has begun there, other settings are refused as before.
    with pytest.raises(SystemExit) as exit_info:
        demo_module.main([*common, "--alpha", "0"])
    assert "holds a run made with other settings" in str(exit_info.value.code) and len(trained) == 1


def test_sigterm_to_demo_is_passed_on_to_its_training_stage_and_waited_for(demo_synth_data, tmp_path):
    # kill -TERM to demo.py once left its train.py child (and that child's loader worker) running, orphaned.
    shutil.copytree(demo_synth_data, tmp_path / "data" / "synth")
    out = tmp_path / "demo"
    with open(tmp_path / "demo.log", "w") as log:
        demo = subprocess.Popen([sys.executable, str(REPO_ROOT / "demo.py"), "run", "--world", "synth",
                                 "--train-samples", "20", "--steps", "500", "--out", str(out)], cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    try:
        lock, waited = out / "train.lock", 0.0
        while not (lock.is_file() and lock.read_text().startswith("pid ")):  # train.py has claimed its folder
            assert demo.poll() is None and waited < 240, (tmp_path / "demo.log").read_text()[-3000:]
            time.sleep(0.5)
            waited += 0.5
        trainer = int(lock.read_text().split()[1])
        demo.send_signal(signal.SIGTERM)  # to demo.py alone, not to its process group
        assert demo.wait(timeout=180) == 143
        with pytest.raises(ProcessLookupError):  # the stage stopped before demo.py exited
            os.kill(trainer, 0)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
