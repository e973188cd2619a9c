"""Training under bad data, bad arguments, planted checkpoints, a shared output folder and a full disk.

Real shards, real `train.py` processes and signals, real small file systems (issue 11, training part).
Runs whose behaviour is not about the process (a message, an exit status, what is left on disk) call
train.py's entry function in this process (``_train_in_process``); signals, a second process holding the
output folder and multi-process runs stay real processes.
"""
from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from test_train import TINY, TRAIN_PY, _env, _train, _train_in_process, accelerate_2cpu

from data_recipes.synth_scenes import generate
from mclip_hbt.data.loader import LoaderConfig, build_loader
from mclip_hbt.data.shards import CaptionShardWriter
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.train import loop as trainer
from mclip_hbt.train.checkpoints import sha256_of
from mclip_hbt.train.step_log import StepLog

# A small local batch keeps every run short: one 16-sample chunk fills two steps.
SMALL = ["--batch-size", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, train_samples=96, test_samples=4, image_size=32, shard_size=24, progress=False)
    return out / "train"


@pytest.fixture(scope="module")
def trained_run(synth, tmp_path_factory) -> Path:
    """A finished 2-step run with complete checkpoints at steps 1 and 2 (copied by the tests that change it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = _train_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "2",
                                "--checkpoint-every", "1", *SMALL])
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _copy_run(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def _garbage_shards(where: Path, sizes: dict[str, int]) -> Path:
    """Tar names listed in sizes.json whose bytes are not a tar at all."""
    where.mkdir(parents=True)
    for i, name in enumerate(sizes):
        (where / name).write_bytes(bytes(range(256)) * (40 + i))
    (where / "sizes.json").write_text(json.dumps(sizes))
    return where


def _empty_shards(where: Path, sizes: dict[str, int]) -> Path:
    """Valid tar files without a member."""
    where.mkdir(parents=True)
    for name in sizes:
        tarfile.open(where / name, "w").close()
    (where / "sizes.json").write_text(json.dumps(sizes))
    return where


def _no_dataset_json(synth: Path, where: Path) -> Path:
    shutil.copytree(synth, where)
    (where / "dataset.json").unlink()
    return where


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 20 % 256, 90, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _error_lines(stderr: str) -> list[str]:
    """The CLI's one-line errors (a progress bar may share the line, ahead of a carriage return)."""
    return [line.split("train.py: error:", 1)[1] for line in stderr.splitlines() if "train.py: error:" in line]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, limit: float = 240) -> None:
    """Until ``text`` shows up in the file ``path`` (a process's stderr); fails if the process ends first."""
    deadline = time.time() + limit
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"the run ended before {text!r}:\n{path.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {text!r} in {limit} s"
        time.sleep(0.1)


def _popen(args: list[str], stderr: Path, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, TRAIN_PY, "--config", TINY, "--report-to", "none", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr.open("w"), cwd=REPO_ROOT,
                            **kwargs)


def _stop_when(proc: subprocess.Popen, stderr: Path, ready: str, send_stop, timeout: float = 120) -> None:
    """Once ``ready`` is in the run's stderr, ``send_stop()``; then wait for the run to end (killed, with its
    process group, if it has not ended after ``timeout`` seconds or the wait fails)."""
    try:
        _wait_for(stderr, ready, proc)
        send_stop()
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class ModelBuilt(Exception):
    """Raised by the tripwire that replaces build_model: the run got past its checks."""


def _refused_in_process(argv: list[str], monkeypatch, capsys) -> str:
    """Run the CLI in this process with build_model as a tripwire; return stderr after the exit-2 refusal."""
    def tripwire(config):
        raise ModelBuilt(f"a model was built for {argv}")
    monkeypatch.setattr(trainer, "build_model", tripwire)
    with pytest.raises(SystemExit) as exit_info:
        trainer.cli_main(["--config", TINY, "--report-to", "none", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------ 1. no usable data never hangs

@pytest.mark.parametrize("make_data, extra, faults", [
    (lambda synth, where: _garbage_shards(where, {"a-000000.tar": 10, "a-000001.tar": 10}), [], "bad_tar=2"),
    (lambda synth, where: _empty_shards(where, {"e-000000.tar": 12, "e-000001.tar": 12}), [], "bad_tar=2"),
    (_no_dataset_json, ["--languages", "ja"], "no_training_language=96"),
], ids=["corrupt", "empty-but-counted", "no-japanese"])
def test_a_run_without_usable_data_ends_with_one_message(synth, tmp_path, make_data, extra, faults):
    data = make_data(synth, tmp_path / "data")
    result = _train_in_process(["--train-data", str(data), "--output-dir", str(tmp_path / "run"), *SMALL, *extra],
                               timeout=240)  # a hang fails the test (RunTimedOut)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("no usable training data") == 1 and "Traceback" not in result.stderr
    message = next(line for line in result.stderr.splitlines() if "no usable training data" in line)
    assert str(data) in message and "a whole epoch" in message and faults in message
    assert "epoch 1 data" not in result.stderr  # it gave up after the first epoch, not 148,264 later


def test_a_fault_once_the_steps_run_keeps_its_traceback(synth, tmp_path):
    # A ValueError raised while training is the program's fault, not a bad option: the traceback and exit
    # status 1 of any uncaught exception, never "train.py: error: ..." with the exit status 2 of a bad flag.
    inject = ("import sys\nfrom mclip_hbt.train import loop as trainer\nreal_step = trainer.train_step\n"
              "def failing_step(*args):\n"
              "    if args[7].step == 3:  # the TrainingState\n"
              "        raise ValueError('injected fault at step 3')\n"
              "    return real_step(*args)\n"
              "trainer.train_step = failing_step\ntrainer.cli_main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", inject, "--config", TINY, "--report-to", "none", "--train-data",
                           str(synth), "--output-dir", str(tmp_path / "run"), "--max-steps", "6", *SMALL],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr and "ValueError: injected fault at step 3" in proc.stderr
    assert "train.py: error" not in proc.stderr


def test_a_fault_while_building_the_model_keeps_its_traceback_and_a_bad_option_does_not(synth, tmp_path, monkeypatch,
                                                                                       capsys):
    # Set-up once wrapped every ValueError (from building the model, accelerate's prepare, torch.compile) into a
    # one-line usage error: a library bug looked like a bad flag and lost its traceback.
    inject = ("import sys\nfrom mclip_hbt.train import loop as trainer\n"
              "def broken_create_model(*args, **kwargs):\n"
              "    raise ValueError('injected fault in model building')\n"
              "trainer.create_model = broken_create_model\ntrainer.cli_main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", inject, "--config", TINY, "--report-to", "none", "--train-data",
                           str(synth), "--output-dir", str(tmp_path / "run"), *SMALL],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr and "ValueError: injected fault in model building" in proc.stderr
    assert "train.py: error" not in proc.stderr

    err = _refused_in_process(["--train-data", str(synth), "--output-dir", str(tmp_path / "run2"),
                               "--model-overrides", "{projection: spiral}"], monkeypatch, capsys)
    assert err.strip().splitlines()[-1].startswith("train.py: error: --model-overrides: unknown projection 'spiral'")
    assert "Traceback" not in err


def test_shards_that_hold_no_samples_are_refused_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    data = _empty_shards(tmp_path / "data", {"e-000000.tar": 0, "e-000001.tar": 0})
    err = _refused_in_process(["--train-data", str(data), "--output-dir", str(tmp_path / "run")], monkeypatch, capsys)
    assert "--train-data" in err and "hold no samples" in err


def test_a_chunk_of_faulty_samples_is_handed_on_once_the_stream_has_passed_it(tmp_path):
    """So a run waiting on broken data sees chunks arrive (and can stop or give up), not silence."""
    writer = CaptionShardWriter(tmp_path, "bad", max_count=100)
    for i in range(12):  # eight undecodable images, then four good ones
        image = b"not an image" if i < 8 else _png(i)
        writer.write(f"s{i:02d}", image, "png", captions={"en": [f"sample {i}"]})
    writer.close()
    write_json_atomic(tmp_path / "sizes.json", writer.sizes)
    loader = build_loader(LoaderConfig(train_data=str(tmp_path), chunk_size=4, workers=0, shuffle_buffer=0),
                                       T.ToTensor())
    chunks = list(loader)
    assert [len(c["keys"]) for c in chunks] == [0, 0, 4]
    assert [c["faults"].get("bad_image", 0) for c in chunks] == [4, 4, 0]  # each chunk its own samples' faults


@pytest.mark.parametrize("sig, whole_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "Ctrl-C-to-the-process-group"])
def test_a_stop_while_waiting_for_data_exits_at_once(tmp_path, sig, whole_group):
    data = _garbage_shards(tmp_path / "data", {"a-000000.tar": 10, "a-000001.tar": 10})
    stderr = tmp_path / "stderr.txt"
    # resampled over broken shards: an epoch of ten million samples' worth of empty chunks, a long data wait
    proc = _popen(["--train-data", str(data), "--output-dir", str(tmp_path / "run"), "--resampled",
                   "--samples-per-epoch", "10000000", *SMALL], stderr, start_new_session=True)
    # whole_group: what a terminal's Ctrl-C does, the DataLoader workers get it too
    _stop_when(proc, stderr, "data fault bad_tar",
               (lambda: os.killpg(proc.pid, sig)) if whole_group else (lambda: proc.send_signal(sig)), timeout=60)
    log = stderr.read_text()
    assert proc.returncode == 143, log[-3000:]
    assert "stop requested while waiting for data" in log and "Traceback" not in log


def test_a_stop_sent_to_the_whole_process_group_mid_training_checkpoints(synth, tmp_path):
    # A scheduler, `docker stop` on a shell or `kill -- -PGID` signals every process of the group, the
    # DataLoader workers too: the run must still end as a stop (its checkpoint, exit 143), not die of a
    # missing worker and lose the steps since the last periodic checkpoint.
    run, stderr = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _popen(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "1000",
                   "--checkpoint-every", "0", "--log-every", "1", *SMALL], stderr, start_new_session=True)
    _stop_when(proc, stderr, "loss=", lambda: os.killpg(proc.pid, signal.SIGTERM))  # once a few steps are trained
    log = stderr.read_text()
    assert proc.returncode == 143, log[-3000:]
    assert "Traceback" not in log and "stop requested" in log
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert saved and int(saved[-1].name.split("_")[1]) >= 1, log[-3000:]


@pytest.mark.slow
def test_one_process_without_usable_data_stops_every_process(synth, tmp_path):
    """Rank 0 gets the good shard, rank 1 only the broken one (largest-first placement): rank 1 must not
    leave rank 0 waiting in the step's collectives forever."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(synth / "synth-000000.tar", data)
    shutil.copy(synth / "dataset.json", data)
    _garbage_shards(tmp_path / "broken", {"broken-000001.tar": 20})
    shutil.copy(tmp_path / "broken" / "broken-000001.tar", data)
    (data / "sizes.json").write_text(json.dumps({"synth-000000.tar": 24, "broken-000001.tar": 20}))
    result = _train(["--train-data", str(data), "--output-dir", str(tmp_path / "run"), *SMALL],
                    launcher=accelerate_2cpu(), timeout=300)
    assert result.returncode != 0
    assert "no usable training data: process 1: a whole epoch" in result.stderr
    assert not (tmp_path / "run" / "model").exists()


# ------------------------------------------------------------------ 2. checkpoints never run code

class Payload:
    """Unpickling this creates the marker file: what a planted checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(file: Path, marker: Path) -> None:
    """Replace ``file`` with a real torch/pickle file whose loading creates ``marker``; keep a manifest
    (if the checkpoint has one) consistent, so the file's content is what is judged."""
    torch.save({"state": Payload(marker)}, file)
    manifest_file = file.parent / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        manifest["files"][file.name] = {"bytes": file.stat().st_size, "sha256": sha256_of(file)}
        manifest_file.write_text(json.dumps(manifest))


def _planted_targets(checkpoint: Path) -> list[str]:
    """Every file of a checkpoint that is not model weights (safetensors) or JSON."""
    return sorted(f.name for f in checkpoint.iterdir() if f.suffix not in (".safetensors", ".json"))


@pytest.mark.slow
def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(trained_run, synth, tmp_path):
    targets = _planted_targets(trained_run / "checkpoints" / "step_00000002")
    assert targets
    for name in targets:
        run = _copy_run(trained_run, tmp_path / name / "run")
        checkpoint = run / "checkpoints" / "step_00000002"
        marker = tmp_path / name / "payload-ran"
        _plant(checkpoint / name, marker)
        result = _train_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "3",
                                    "--resume", str(checkpoint), *SMALL], timeout=240)
        assert not marker.exists(), f"loading {name} ran the planted code"
        assert result.returncode == 2 and "--resume" in result.stderr and name in result.stderr, result.stderr[-3000:]
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_auto_ignores_a_planted_checkpoint_without_a_manifest(trained_run, synth, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    planted = run / "checkpoints" / "step_00000099"
    shutil.copytree(run / "checkpoints" / "step_00000002", planted)
    (planted / "manifest.json").unlink(missing_ok=True)
    marker = tmp_path / "payload-ran"
    for name in _planted_targets(planted):
        _plant(planted / name, marker)
    result = _train_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "3",
                                "--resume", "auto", *SMALL], timeout=240)
    assert not marker.exists()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ignoring" in result.stderr and "step_00000099" in result.stderr
    assert "resumed from" in result.stderr and "step_00000002 at step 2" in result.stderr
    assert json.loads((run / "model" / "train_meta.json").read_text())["steps"] == 3


def test_a_checkpoint_file_swapped_for_another_of_the_same_size_is_refused(trained_run, synth, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    weights = run / "checkpoints" / "step_00000002" / "model.safetensors"
    other = run / "checkpoints" / "step_00000001" / "model.safetensors"
    assert weights.stat().st_size == other.stat().st_size and weights.read_bytes() != other.read_bytes()
    shutil.copyfile(other, weights)  # the manifest records sizes and checksums: the size alone would pass
    result = _train_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "3",
                                "--resume", "auto", *SMALL], timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "model.safetensors does not have the SHA-256 its manifest records" in result.stderr
    assert not (run / "checkpoints" / "step_00000003").exists()


def test_a_resume_with_options_that_change_what_is_trained_is_refused_naming_each(trained_run, synth, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    trained = json.loads((run / "train_config.json").read_text())
    args = ["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "3", "--resume", "auto", *SMALL]
    changed = ["--batch-size", str(trained["batch_size"] * 2), "--alpha", "1.0"]
    result = _train_in_process(args + changed, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    message = _error_lines(result.stderr)[-1]
    assert f"--batch-size {trained['batch_size']} there, {trained['batch_size'] * 2} now" in message
    assert f"--alpha {trained['alpha']} there, 1.0 now" in message and "--allow-changed-options" in message
    assert "--max-steps" not in message  # training longer is what a resume is for
    result = _train_in_process(args + changed + ["--allow-changed-options"], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((run / "model" / "train_meta.json").read_text())
    assert meta["samples_seen"] == 2 * trained["batch_size"] + 1 * trained["batch_size"] * 2
    assert [s["from_step"] for s in meta["segments"]] == [0, 2]
    assert [s["options"]["alpha"] for s in meta["segments"]] == [trained["alpha"], 1.0]


# ------------------------------------------------------------- 3. a leftover .tmp blocks nothing

@pytest.mark.slow
def test_a_leftover_partial_checkpoint_is_ignored_and_removed(trained_run, synth, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    leftover = run / "checkpoints" / "step_00000010.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a file")
    result = _train_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "3",
                                "--checkpoint-every", "1", "--resume", "auto", *SMALL], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step_00000002 at step 2" in result.stderr
    assert not leftover.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]


# ------------------------------------------------------------------ 5. one run per output folder

@pytest.mark.slow
def test_a_second_run_on_a_busy_output_folder_is_refused(synth, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    first_log = tmp_path / "first.txt"
    first = _popen(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "100000",
                    "--checkpoint-every", "0", *SMALL], first_log)
    try:
        _wait_for(first_log, "parameters:", first)  # logged after the folder is claimed
        # The second run in this process (the lock is the other process's); the tripwire fails it if it
        # got as far as building a model.
        err = _refused_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "2",
                                   "--seed", "7", *SMALL], monkeypatch, capsys)
        assert "--output-dir" in err and "in use by another training run" in err
        assert f"pid {first.pid} " in err
        monkeypatch.undo()  # build_model back for the third run
    finally:
        first.kill()  # a crash: its lock must be free at once
        first.wait()
    third = _train_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "2",
                               "--seed", "7", *SMALL], timeout=240)
    assert third.returncode == 0, third.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
    assert json.loads((run / "train_config.json").read_text())["seed"] == 7
    assert json.loads((run / "model" / "train_meta.json").read_text())["seed"] == 7


# ------------------------------------------------------------------------- 7. full or read-only disk

def test_a_read_only_output_folder_is_refused_before_the_model_is_built(synth, small_fs, monkeypatch, capsys):
    readonly = small_fs.mount(readonly=True)
    err = _refused_in_process(["--train-data", str(synth), "--output-dir", str(readonly / "run")], monkeypatch, capsys)
    assert "--output-dir" in err and "cannot write" in err


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(trained_run, synth, small_fs, tmp_path):
    checkpoint_bytes = _tree_bytes(trained_run / "checkpoints" / "step_00000002")
    disk = small_fs.mount(size=str(checkpoint_bytes * 3 // 2))  # room for one checkpoint, not two
    run = disk / "run"
    result = _train_in_process(["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "3",
                                "--checkpoint-every", "1", *SMALL], timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1
    assert "checkpoint of step 2 could not be written" in errors[0] and "step_00000001, is kept" in errors[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001"]
    assert (run / "checkpoints" / "step_00000001" / "manifest.json").is_file()


@pytest.mark.slow
def test_a_full_disk_at_the_final_save_keeps_the_trained_steps(trained_run, synth, small_fs, tmp_path):
    checkpoint_bytes = _tree_bytes(trained_run / "checkpoints" / "step_00000002")
    model_bytes = _tree_bytes(trained_run / "model")
    disk = small_fs.mount(size=str(checkpoint_bytes + model_bytes // 2))  # a checkpoint fits, then not the model
    run = disk / "run"
    common = ["--train-data", str(synth), "--output-dir", str(run), "--max-steps", "2", *SMALL]
    result = _train_in_process(common + ["--checkpoint-every", "0"], timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = _error_lines(result.stderr)
    assert "final model could not be written" in error and "all 2 steps are kept" in error and "step_00000002" in error
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "steps.jsonl", "train.lock", "train_config.json"]

    subprocess.run(["mount", "-o", f"remount,size={3 * (checkpoint_bytes + model_bytes)}", str(disk)], check=True)
    resumed = _train_in_process(common + ["--resume", "auto"], timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "model" / "train_meta.json").read_text())["steps"] == 2


def test_a_truncated_last_step_record_does_not_block_resume(tmp_path):
    log = tmp_path / "steps.jsonl"
    log.write_text("".join(json.dumps({"step": s, "mode": "cross", "loss": 1.0}) + "\n" for s in range(3))
                   + '{"step": 3, "mode": "cr')  # the run was killed mid-line
    with StepLog(log, resumed_step=2, enabled=True) as step_log:
        step_log.write({"step": 2, "mode": "mono"}, torch.tensor(0.5), data_s=0.0)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]


# ---------------------------------------------------------- 10. every option checked before a model

@pytest.mark.parametrize("args, option", [
    (["--model-overrides", "{a: ["], "--model-overrides"),
    (["--model-overrides", "[1, 2]"], "--model-overrides"),
    (["--model-overrides", "{no_such_field: 1}"], "--model-overrides"),
    (["--train-data-weights", "x", "--resampled"], "--train-data-weights"),
    (["--output-dir", "FILE/sub"], "--output-dir"),
    (["--image-unlocked-groups", "-3"], "--image-unlocked-groups"),
    (["--grad-clip", "nan"], "--grad-clip"),
    (["--temperature", "nan"], "--temperature"),
    (["--lr", "nan"], "--lr"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--resume", "/missing"], "--resume"),
    (["--resume", "FOLDER"], "--resume"),
    (["--samples-per-epoch", "100"], "--samples-per-epoch"),
    (["--samples-per-epoch", "0", "--resampled"], "--samples-per-epoch"),
    (["--shuffle-buffer", "-1"], "--shuffle-buffer"),
    (["--beta1", "1.5"], "--beta1"),
    (["--eps", "-1"], "--eps"),
    (["--seed", "-1"], "--seed"),
    (["--max-buffered-samples", "4"], "--max-buffered-samples"),
    (["--languages", "ja"], "--languages"),
])
def test_bad_options_are_refused_before_the_model_is_built(synth, tmp_path, monkeypatch, capsys, args, option):
    a_file, a_folder = tmp_path / "a-file", tmp_path / "not-a-checkpoint"
    a_file.write_text("")
    a_folder.mkdir()
    args = [a.replace("FILE", str(a_file)).replace("FOLDER", str(a_folder)) for a in args]
    err = _refused_in_process(["--train-data", str(synth), "--output-dir", str(tmp_path / "run"), *SMALL, *args],
                              monkeypatch, capsys)
    assert f"error: {option}:" in err or f"argument {option}:" in err, err


# ------------------------------------------------- 9. a shard folder left by an interrupted write

@pytest.mark.parametrize("damage", ["no-sizes-json", "a-tar-not-listed"])
def test_a_shard_folder_that_does_not_match_its_sizes_json_is_refused(synth, tmp_path, monkeypatch, capsys, damage):
    data = shutil.copytree(synth, tmp_path / "data")
    if damage == "no-sizes-json":
        (data / "sizes.json").unlink()
    else:  # an interrupted re-run: a new shard beside the old ones, under the old counts
        shutil.copy(data / "synth-000000.tar", data / "synth-000004.tar")
    with pytest.raises(ValueError, match="interrupted write"):
        build_loader(LoaderConfig(train_data=str(data), workers=0), T.ToTensor())
    err = _refused_in_process(["--train-data", str(data), "--output-dir", str(tmp_path / "run")], monkeypatch, capsys)
    assert "--train-data" in err and "interrupted write" in err and "re-run the recipe" in err
    # the same shards named by a brace pattern are still readable in resampled mode (no folder is judged)
    loader = build_loader(LoaderConfig(train_data=f"{data}/synth-{{000000..000003}}.tar", workers=0, resampled=True,
                                       samples_per_epoch=4, chunk_size=4), T.ToTensor())
    assert sum(len(chunk["keys"]) for chunk in loader) == 4


# ------------------------------------------------- captions that are not text, and captions far too long

def test_a_caption_that_is_not_unicode_text_is_a_counted_bad_record_not_a_crash(tmp_path):
    # "\ud800" is valid JSON (an escaped lone surrogate) but no UTF-8 text: it once crashed training, and
    # --resume auto died again on the same record.
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "s-000000.tar", "w") as tar:  # by hand: no writer of ours would write such a record
        for i in range(24):
            german = "kaputt \\ud800" if i % 3 == 0 else f"Probe {i}"
            record = f'{{"captions": {{"en": ["sample {i}"], "de": ["{german}"]}}}}'.encode()
            for name, payload in ((f"s{i:02d}.png", _png(i)), (f"s{i:02d}.json", record)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (data / "sizes.json").write_text(json.dumps({"s-000000.tar": 24}))
    run = tmp_path / "run"
    result = _train_in_process(["--train-data", str(data), "--output-dir", str(run), "--max-steps", "3", *SMALL],
                               timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    faults = json.loads((run / "model" / "train_meta.json").read_text())["data_faults"]
    assert faults.get("bad_caption", 0) >= 8  # every third sample's German caption, in every epoch read


def test_a_megabyte_caption_is_cut_before_tokenising_to_the_same_tokens():
    from mclip_hbt.model.clip import create_model
    tower = create_model("tiny").text
    huge = "ein rotes Herz " * 400_000  # 6 MB: tokenised whole it took minutes and gigabytes
    cut = tower.tokenize([huge])
    assert cut["input_ids"].shape[1] == tower.max_length
    assert torch.equal(cut["input_ids"], tower.tokenize([huge[:20_000]])["input_ids"])


# ------------------------------------------------------------------ remote shards that stall never hang a run

class StallingShards(http.server.BaseHTTPRequestHandler):
    """Answers sizes.json, then sends a few bytes of each tar and nothing more until the server stops."""

    stop = threading.Event()
    tar_requests = 0

    def do_GET(self):
        if self.path.endswith("sizes.json"):
            body = json.dumps({"s-000000.tar": 8, "s-000001.tar": 8}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        type(self).tar_requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.wfile.write(b"\0" * 512)
        self.wfile.flush()
        self.stop.wait(120)  # stalled: bounded, so the test's server always ends

    def log_message(self, *args):
        pass


@pytest.fixture
def stalling_server():
    StallingShards.stop.clear()
    StallingShards.tar_requests = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StallingShards)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    StallingShards.stop.set()
    server.shutdown()
    server.server_close()


def test_shards_whose_server_stalls_end_the_run_with_one_message_not_a_hang(stalling_server, tmp_path):
    result = _train_in_process(["--train-data", f"{stalling_server}/s-{{000000..000001}}.tar", "--output-dir",
                                str(tmp_path / "run"), "--remote-timeout", "1", "--max-steps", "2", *SMALL],
                               timeout=150)  # a hang fails the test (RunTimedOut)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no usable training data" in result.stderr and "bad_tar=2" in result.stderr
    assert StallingShards.tar_requests >= 2


def test_sigterm_while_a_remote_shard_stalls_exits_143(stalling_server, tmp_path):
    stderr = tmp_path / "stderr.txt"
    proc = _popen(["--train-data", f"{stalling_server}/s-{{000000..000001}}.tar", "--output-dir",
                   str(tmp_path / "run"), "--remote-timeout", "1", "--max-steps", "2", *SMALL], stderr,
                  start_new_session=True)
    try:
        waited = 0.0
        while StallingShards.tar_requests == 0:  # a loader worker is now waiting on the stalled server
            assert proc.poll() is None and waited < 120, stderr.read_text()[-3000:]
            time.sleep(0.2)
            waited += 0.2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 143, stderr.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
