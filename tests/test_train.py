"""The trainer end to end: argument checks, exact distributed steps, resumption, faults, saved model."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_recipes.synth_scenes import generate
from mclip_hbt.model import MultilingualCLIP
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.trainer import cli_main

TRAIN_PY = str(REPO_ROOT / "train.py")
TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
# accelerate 1.15 runs `launch --cpu --num_processes 2` as ONE process (its multi-CPU path needs MPI);
# torchrun through --multi_gpu with ACCELERATE_USE_CPU gives two real gloo processes on a CPU machine.
ACCELERATE_2CPU = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, train_samples=480, test_samples=10, image_size=32, shard_size=60, progress=False)
    return out / "train"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO_ROOT)}


def _train(args: list[str], launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [TRAIN_PY, "--config", TINY, "--report-to", "none", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


@pytest.mark.parametrize("args, option", [
    (["--alpha", "1.5"], "--alpha"),
    (["--languages", "en,xx"], "--languages"),
    (["--lr", "-1"], "--lr"),
])
def test_bad_values_are_refused_before_any_work(shards, tmp_path, capsys, args, option):
    # In this process (a real process's refusal is shown by the next test): exit 2, the option named.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", TINY, "--report-to", "none", "--train-data", str(shards),
                  "--output-dir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_shards_and_indivisible_batch_are_refused(tmp_path, shards):
    result = _train(["--train-data", str(tmp_path / "nothing-{000..003}.tar")], timeout=60)
    assert result.returncode == 2 and "--train-data" in result.stderr and "missing" in result.stderr
    env = {**_env(), "WORLD_SIZE": "2"}
    result = subprocess.run([sys.executable, TRAIN_PY, "--config", TINY, "--train-data", str(shards),
                             "--batch-size", "5"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--batch-size" in result.stderr


@pytest.mark.slow
def test_two_process_step_equals_one_process_step(tmp_path):
    script = str(REPO_ROOT / "tests" / "scripts" / "one_train_step.py")
    single = subprocess.run([sys.executable, script, str(tmp_path / "one.pt")], env=_env(),
                            capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(ACCELERATE_2CPU + [script, str(tmp_path / "two.pt")], env=_env(),
                            capture_output=True, text=True, timeout=240)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    one, two = one["params"], two["params"]
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=0, msg=name)
    # the step really moved the weights (the comparison is not between two untouched models)
    fresh = subprocess.run([sys.executable, "-c", "import torch\nfrom mclip_hbt.model import create_model\n"
                            "torch.manual_seed(0)\nprint(float(create_model('tiny').logit_scale))"],
                           env=_env(), capture_output=True, text=True, timeout=120)
    assert abs(float(fresh.stdout) - float(one["logit_scale"])) > 1e-4


def _steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_and_resume_auto_matches_a_straight_run(shards, tmp_path):
    common = ["--train-data", str(shards), "--max-steps", "20", "--checkpoint-every", "10", "--workers", "1",
              "--log-every", "5"]
    straight = _train(common + ["--output-dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "killed"
    cmd = [sys.executable, TRAIN_PY, "--config", TINY, "--report-to", "none", *common, "--output-dir", str(run)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    checkpoint = run / "checkpoints" / "step_00000010"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_dir() and not (run / "model").exists()

    resumed = _train(common + ["--output-dir", str(run), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _steps(tmp_path / "straight") == _steps(run)
    assert len(_steps(run)) == 20


def _inject_faults(src: Path, dst: Path) -> None:
    """Copy the shards and add a shard holding a corrupt JPEG, a bad JSON and a truncated tail."""
    shutil.copytree(src, dst)
    caption = json.dumps({"captions": {"en": ["a red circle"]}}).encode()
    members = [("bad-image.jpg", b"not a jpeg"), ("bad-image.json", caption),
               ("bad-json.jpg", (src / "../test/images").resolve().joinpath(
                   sorted(os.listdir(src / "../test/images"))[0]).read_bytes()), ("bad-json.json", b"{broken"),
               ("cut.jpg", b"\xff" * 4000), ("cut.json", caption)]
    bad = dst / "shard-999999.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(bad) as tar:
        cut_at = tar.getmember("cut.jpg").offset_data + 100
    bad.write_bytes(bad.read_bytes()[:cut_at])  # the last sample is cut mid-file
    sizes = json.loads((dst / "sizes.json").read_text())
    sizes[bad.name] = 3
    (dst / "sizes.json").write_text(json.dumps(sizes))


@pytest.mark.slow
def test_two_processes_end_to_end_with_faulty_shards(shards, tmp_path):
    data = tmp_path / "faulty"
    _inject_faults(shards, data)
    out = tmp_path / "run"
    result = _train(["--train-data", str(data), "--output-dir", str(out), "--max-steps", "16",
                     "--checkpoint-every", "8"], launcher=ACCELERATE_2CPU, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    model = MultilingualCLIP.from_pretrained(out / "model")
    meta = json.loads((out / "model" / "train_meta.json").read_text())
    assert meta["steps"] == 16 and meta["alpha"] == 0.5
    # the faults of both ranks are summed into the saved meta, and the log names them
    assert {"bad_image", "bad_json", "bad_tar"} <= set(meta["data_faults"])
    assert "data fault bad_image" in result.stderr
    records = _steps(out)
    assert len(records) == 16
    modes = {r["mode"] for r in records}
    assert modes == {"mono", "cross"}
    for r in records:
        if r["mode"] == "mono" and r["fallback"] is None:
            assert list(r["lang_counts"]) == [r["lang"]]
    with torch.no_grad():
        f = model.encode_text(model.tokenize(["ein roter Kreis"]))
    assert f.shape == (1, 32)
