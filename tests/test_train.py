"""The trainer end to end: argument checks, exact distributed steps, resumption, faults, saved model."""
from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import random
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import free_port, one_thread
from PIL import Image
from safetensors.torch import load_file

from data_recipes.from_captions import main as from_captions
from data_recipes.synth_scenes import generate
from eval.xtd import main as eval_xtd
from mclip_hbt.model.clip import MultilingualCLIP, create_model
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.train.loop import cli_main

TRAIN_PY = str(REPO_ROOT / "train.py")
TINY = str(REPO_ROOT / "configs" / "tiny.yaml")


def accelerate_2cpu() -> list[str]:
    """accelerate 1.15 runs ``launch --cpu --num_processes 2`` as ONE process (its multi-CPU path needs MPI);
    torchrun through --multi_gpu with ACCELERATE_USE_CPU gives two real gloo processes on a CPU machine, each
    launch on a port of its own."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


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


@contextmanager
def _argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


@contextmanager
def _own_accelerate_state():
    """A run in this process gets accelerate's process state of its own, as a new process would: the
    state is shared by every Accelerator of a process and fixed by the first (a CUDA state left by an
    earlier test would refuse a CPU run), so it is reset before and after (accelerate's own tests do so)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


class RunTimedOut(Exception):
    """An in-process run went past its time limit (what ``subprocess.run(timeout=...)`` is to ``_train``)."""


# What train.py's logging.basicConfig prints (under pytest the root logger already has handlers, so the
# trainer's own basicConfig call adds none).
_TRAIN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _train_in_process(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """``_train`` without the new process (its ~10 s of imports): train.py's ``cli_main`` in this process.

    For runs whose behaviour is not about the process boundary (signals, SIGKILL, several processes
    stay real processes). Returns what ``_train`` returns: the exit status the process would end with
    (``sys.exit``'s code; any other exception propagates and fails the test, as a traceback would) and
    its stderr: the error line, the progress bar and the log records at INFO in train.py's format,
    from this process and its DataLoader workers (a file, so forked workers write into it too). A run
    still going after ``timeout`` seconds raises ``RunTimedOut``. The environment of ``_env()`` (one
    thread, CPU, hub offline) holds during the run; the global RNGs and logging are restored after it.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "ACCELERATE_USE_CPU")}

    def expire(signum, frame):
        raise RunTimedOut(f"train.py {' '.join(args)} still running after {timeout} s")

    with tempfile.TemporaryDirectory() as where:
        # Appending and line-buffered: this process and the forked workers add whole lines at the end.
        err = open(Path(where) / "stderr.txt", "a", buffering=1, encoding="utf-8", errors="replace")
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter(_TRAIN_LOG_FORMAT))
        previous_alarm = signal.signal(signal.SIGALRM, expire)
        code = 0
        try:
            os.environ.update(HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true")
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            signal.setitimer(signal.ITIMER_REAL, timeout)  # not inherited by forked workers
            with redirect_stderr(err), one_thread(), _own_accelerate_state():
                try:
                    cli_main(["--config", TINY, "--report-to", "none", *args])
                except SystemExit as exit_info:
                    code = exit_info.code if isinstance(exit_info.code, int) else (exit_info.code is not None)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
            for extra in set(root.handlers) - set(handlers):
                root.removeHandler(extra)
            root.setLevel(level)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            random.setstate(rng[0])
            np.random.set_state(rng[1])
            torch.set_rng_state(rng[2])
            err.close()
        stderr = (Path(where) / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    return subprocess.CompletedProcess(args, int(code), "", stderr)


def test_a_finished_run_stops_its_loader_workers(shards, tmp_path):
    # A library caller (a notebook, a sweep in one process) must not keep idle workers until the garbage
    # collector happens to free the loader.
    before = set(multiprocessing.active_children())
    result = _train_in_process(["--train-data", str(shards), "--output-dir", str(tmp_path / "run"),
                                "--max-steps", "2", "--workers", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(multiprocessing.active_children()) - before == set()


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


def test_missing_shards_and_indivisible_batch_are_refused(tmp_path, shards, monkeypatch):
    result = _train(["--train-data", str(tmp_path / "nothing-{000..003}.tar")], timeout=60)
    assert result.returncode == 2 and "--train-data" in result.stderr and "missing" in result.stderr
    # The second refusal in this process: WORLD_SIZE is what cli_main reads to count the processes.
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = _train_in_process(["--train-data", str(shards), "--batch-size", "5",
                                "--output-dir", str(tmp_path / "run")], timeout=60)
    assert result.returncode == 2 and "--batch-size" in result.stderr
    assert "parameters:" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_process_step_equals_one_process_step(tmp_path):
    script = str(REPO_ROOT / "tests" / "scripts" / "one_train_step.py")
    # The one-process side needs no process of its own: the script run in this process (one thread, as
    # under _env()); the two-process side is two real gloo processes.
    with torch.random.fork_rng(), _argv([script, str(tmp_path / "one.pt")]), one_thread(), _own_accelerate_state():
        runpy.run_path(script, run_name="__main__")
    double = subprocess.run(accelerate_2cpu() + [script, str(tmp_path / "two.pt")], env=_env(),
                            capture_output=True, text=True, timeout=240)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    one, two = one["params"], two["params"]
    # Two processes sum the loss and gradients in another order (gathered features, an all-reduce): fp32
    # rounding of up to 1.5e-5 on the largest element after this one AdamW step at lr 1e-2 (measured, over
    # 1e-5 since the projection head starts from other random weights); a wrong gradient moves weights on the
    # scale of the lr.
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=5e-5, rtol=0, msg=name)
    # the step really moved the weights (the comparison is not between two untouched models)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fresh = create_model("tiny").logit_scale.item()
    assert abs(fresh - float(one["logit_scale"])) > 1e-4


#: Step-log fields that differ between any two runs of the same steps.
STEP_TIMING = ("data_s", "time_s")


def _steps(run: Path) -> list[dict]:
    """The step log without its timings."""
    records = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in STEP_TIMING} for record in records]


@pytest.mark.slow
def test_sigkill_and_resume_auto_matches_a_straight_run(shards, tmp_path):
    # Channels-last weights (not contiguous) go through the checkpoint and the saved model too.
    common = ["--train-data", str(shards), "--max-steps", "20", "--checkpoint-every", "10", "--workers", "1",
              "--log-every", "5", "--channels-last"]
    # Only the killed run needs a process of its own (SIGKILL); the straight run and the resumption are
    # the same cli_main in this process, one thread as in the killed process.
    straight = _train_in_process(common + ["--output-dir", str(tmp_path / "straight")])
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

    resumed = _train_in_process(common + ["--output-dir", str(run), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _steps(tmp_path / "straight") == _steps(run)
    assert len(_steps(run)) == 20
    # the batch summary covers the steps before the kill too
    batches = json.loads((run / "model" / "train_meta.json").read_text())["batches"]
    assert batches == json.loads((tmp_path / "straight" / "model" / "train_meta.json").read_text())["batches"]
    assert batches["steps"] == 20


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
                     "--checkpoint-every", "8"], launcher=accelerate_2cpu(), timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    model = MultilingualCLIP.from_pretrained(out / "model")
    meta = json.loads((out / "model" / "train_meta.json").read_text())
    assert meta["steps"] == 16 and meta["alpha"] == 0.5
    # the faults of both ranks are summed into the saved meta, and the log names them
    assert {"bad_image", "bad_json", "bad_tar"} <= set(meta["data_faults"])
    assert "data fault bad_image" in result.stderr
    records = _steps(out)
    assert len(records) == 16
    # each step says when it ended and how long it waited for data, in a run's own clock
    timed = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    ends = [r["time_s"] for r in timed]
    assert ends == sorted(ends) and ends[0] > 0
    assert all(0 <= r["data_s"] <= r["time_s"] for r in timed)
    modes = {r["mode"] for r in records}
    assert modes == {"mono", "cross"}
    assert meta["batches"]["monolingual_steps"] == sum(r["mode"] == "mono" for r in records)
    for r in records:
        if r["mode"] == "mono" and r["fallback"] is None:
            assert list(r["lang_counts"]) == [r["lang"]]
    with torch.no_grad():
        f = model.encode_text(model.tokenize(["ein roter Kreis"]))
    assert f.shape == (1, 32)


def test_a_model_trained_on_xtd10_images_is_flagged_by_eval_xtd(shared_data, tmp_path, capsys):
    """from_captions --allow-benchmark-images → training records the XTD10 images it drew → eval.xtd warns
    and writes the count; one of them spelled as COCO 2017 names it, so images are matched by COCO id."""
    xtd = (shared_data / "xtd10/XTD10/test_image_names.txt").read_text().split()
    trained_xtd = xtd[:20] + xtd[-9:] + [xtd[500].split("_")[-1]]  # 30 test images, train2014 and val2014
    names = trained_xtd + [f"holiday_{i:04d}.jpg" for i in range(20)]
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (i * 5 % 256, 90, 200)).save(images / name)
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"image": n, "captions": {"en": f"photo {i}", "de": f"Foto {i}"}}) + "\n"
                             for i, n in enumerate(names)))
    assert from_captions(["--jsonl", str(jsonl), "--images", str(images), "--out", str(tmp_path / "shards"),
                          "--workers", "1", "--allow-benchmark-images", "--benchmark-data", str(shared_data)]) == 0

    # alpha 0: every batch takes the oldest waiting samples, so 10 steps of 10 draw each of the 50 samples twice.
    result = _train_in_process(["--train-data", str(tmp_path / "shards"), "--output-dir", str(tmp_path / "run"),
                                "--max-steps", "10", "--batch-size", "10", "--alpha", "0", "--workers", "1",
                                "--benchmark-data", str(shared_data)])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run/model/train_meta.json").read_text())["benchmark_images"]
    assert record["checked"] == {"xtd10": 1000, "xflickrco": 2000, "multi30k-test2016": 1000}
    assert record["trained_on"]["xtd10"] == sorted(xtd[:20] + xtd[-9:] + [xtd[500]])

    capsys.readouterr()
    assert eval_xtd(["--text-only", "--lang", "en,de", "--model", str(tmp_path / "run/model"), "--device", "cpu",
                     "--captions", str(shared_data / "xtd10"), "--no-progress",
                     "--out", str(tmp_path / "xtd.json")]) == 0
    assert "the model trained on 30 of the 1000 test images of xtd10" in capsys.readouterr().err
    found = json.loads((tmp_path / "xtd.json").read_text())["meta"]["contamination"]["xtd10"]
    assert found["known"] and found["trained_on"] == 30 and found["test_images"] == 1000


@pytest.mark.parametrize("ours, expected", [([], "bf16"), (["--mixed-precision", "no"], "no")])
def test_precision_comes_from_the_launcher_unless_given_here(shards, tmp_path, monkeypatch, ours, expected):
    # `accelerate launch --mixed_precision bf16` (or its config file) reaches the trainer as this variable.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    result = _train_in_process(["--train-data", str(shards), "--output-dir", str(tmp_path / "run"),
                                "--max-steps", "1", *ours])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run/model/train_meta.json").read_text())["mixed_precision"] == expected
    # and train_config.json says so too: a run started again from it (--config) trains in the same precision
    assert json.loads((tmp_path / "run/train_config.json").read_text())["mixed_precision"] == expected
