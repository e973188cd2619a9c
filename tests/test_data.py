"""The streaming loader on real tar shards: faults, exact epochs across ranks and workers, shuffles, resume."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torchvision.transforms as T
import webdataset as wds
from conftest import free_port
from PIL import Image

from mclip_hbt.data.loader import LoaderConfig, SampleStream, build_loader
from mclip_hbt.data.samples import SKIP_REASONS
from mclip_hbt.data.shards import CaptionShardWriter, iter_shard
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.paths import REPO_ROOT

TO_TENSOR = T.ToTensor()


def image_bytes(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 37 % 256, i * 11 % 256, 90)).save(buf, fmt)
    return buf.getvalue()


def write_shards(out_dir: Path, sizes: list[int], prefix: str = "shard", fmt: str = "PNG") -> list[str]:
    """Shards of the given sizes (one writer per shard so sizes can differ); returns all keys."""
    keys, all_sizes = [], {}
    for index, size in enumerate(sizes):
        writer = CaptionShardWriter(out_dir, prefix, max_count=size, start_index=index)
        for j in range(size):
            key = f"{prefix}{index:02d}_{j:03d}"
            writer.write(key, image_bytes(len(keys), fmt), fmt.lower().replace("jpeg", "jpg"),
                         captions={"en": [f"english {key}"], "de": [f"deutsch {key}"]}, mt=["de"])
            keys.append(key)
        writer.close()
        all_sizes.update(writer.sizes)
    write_json_atomic(out_dir / "sizes.json", all_sizes)
    return keys


def pattern(out_dir: Path, count: int, prefix: str = "shard") -> str:
    return f"{out_dir}/{prefix}-{{000000..{count - 1:06d}}}.tar"


def stream_keys(loader) -> list[list[str]]:
    return [chunk["keys"] for chunk in loader]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def faulty_sources(tmp_path):
    """Three sources: clean shards, a shard with one bad sample of each kind, and a truncated shard."""
    good = write_shards(tmp_path / "good", [6, 6, 4], prefix="good")

    mixed_dir = tmp_path / "mixed"
    mixed_dir.mkdir()
    caption = json.dumps({"captions": {"en": ["a photo"]}, "mt": []}).encode()
    jpeg = image_bytes(1, "JPEG")
    mixed_valid = ["m_ok1", "m_ok2", "m_oddlang"]
    with tarfile.open(mixed_dir / "mixed-000000.tar", "w") as tar:
        add_member(tar, "m_ok1.png", image_bytes(2))
        add_member(tar, "m_ok1.json", caption)
        add_member(tar, "m_badimg.jpg", jpeg[: len(jpeg) // 2])
        add_member(tar, "m_badimg.json", caption)
        add_member(tar, "m_badjson.png", image_bytes(3))
        add_member(tar, "m_badjson.json", b"{\"captions\": {")
        add_member(tar, "m_nocap.png", image_bytes(4))
        add_member(tar, "m_nocap.json", b'{"captions": {}, "mt": []}')
        add_member(tar, "m_oddlang.png", image_bytes(5))
        add_member(tar, "m_oddlang.json",
                   json.dumps({"captions": {"jp": ["ねこ"], "xx": ["?"]}, "mt": ["jp"]}).encode())
        add_member(tar, "m_ok2.png", image_bytes(6))
        add_member(tar, "m_ok2.json", caption)
    write_json_atomic(mixed_dir / "sizes.json", {"mixed-000000.tar": 6})

    trunc_dir = tmp_path / "trunc"
    trunc_keys = write_shards(trunc_dir, [5], prefix="trunc", fmt="JPEG")
    path = trunc_dir / "trunc-000000.tar"
    with tarfile.open(path) as tar:
        cut = next(m for m in tar.getmembers() if m.name == f"{trunc_keys[3]}.jpg").offset_data + 100
    os.truncate(path, cut)  # inside the 4th sample's image: the first three survive

    urls = f"{pattern(tmp_path / 'good', 3, 'good')}::{mixed_dir}/mixed-000000.tar::{path}"
    return urls, good + mixed_valid + trunc_keys[:3]


def test_faulty_shards_stream_every_valid_sample_once_and_count_skips(faulty_sources):
    urls, valid = faulty_sources
    loader = build_loader(LoaderConfig(train_data=urls, chunk_size=4, workers=2), TO_TENSOR)
    chunks = list(loader)
    keys = [k for c in chunks for k in c["keys"]]
    assert sorted(keys) == sorted(valid)
    assert len(chunks) == len(loader)
    skips = {r: n for r, n in loader.faults.items() if r in SKIP_REASONS}
    assert skips == {"bad_tar": 1, "bad_image": 1, "bad_json": 1, "no_captions": 1}
    assert loader.faults["unknown_language"] == 1
    assert "4 samples skipped" in loader.faults.summary()
    odd = next(c for c in chunks if "m_oddlang" in c["keys"])
    i = odd["keys"].index("m_oddlang")
    assert odd["captions"][i] == {"ja": ["ねこ"]} and odd["mt"][i] == ["ja"]
    assert all(c["images"].shape[1:] == (3, 16, 16) and len(c["images"]) == len(c["keys"]) for c in chunks)


@pytest.mark.parametrize("sizes", [[5, 9, 3, 12, 7, 1, 8], [10, 7, 4]], ids=["7-uneven-shards", "3-shards-for-4-slots"])
def test_ranks_and_workers_split_an_epoch_exactly(tmp_path, sizes):
    keys = write_shards(tmp_path, sizes)
    per_rank = []
    for rank in (0, 1):
        loader = build_loader(LoaderConfig(train_data=pattern(tmp_path, len(sizes)), chunk_size=4, workers=2),
                                           TO_TENSOR, rank=rank, world_size=2)
        loader.set_epoch(3)
        per_rank.append(stream_keys(loader))
    seen = [k for chunks in per_rank for c in chunks for k in c]
    assert sorted(seen) == sorted(keys)
    assert len(per_rank[0]) == len(per_rank[1])
    assert max(len(c) for chunks in per_rank for c in chunks) <= 4


@pytest.mark.slow
def test_accelerate_two_processes_two_workers_exact_epoch(tmp_path):
    keys = write_shards(tmp_path / "shards", [5, 9, 3, 12, 7, 1, 8])
    port = free_port()
    # accelerate 1.15 runs `--cpu --num_processes 2` as ONE process (multi-CPU needs MPI there); torchrun via
    # --multi_gpu plus ACCELERATE_USE_CPU gives two gloo processes on a CPU-only machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(REPO_ROOT / "tests/scripts/stream_keys.py"), "--shards", pattern(tmp_path / "shards", 7),
           "--out-dir", str(tmp_path), "--workers", "2", "--chunk-size", "4", "--samples-per-epoch", "10"]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    seen = reports[0]["keys"] + reports[1]["keys"]
    assert sorted(seen) == sorted(keys)  # no loss, no duplicates
    assert reports[0]["chunks"] == reports[1]["chunks"] == reports[0]["planned_chunks"]
    assert reports[0]["resampled_chunks"] == reports[1]["resampled_chunks"] == 3  # ceil(10 / 4)
    assert reports[0]["resampled_samples"] == reports[1]["resampled_samples"] == 12


def test_shard_shuffle_is_seeded_by_epoch(tmp_path):
    write_shards(tmp_path, [4] * 6)
    urls = pattern(tmp_path, 6)

    def order(epoch: int) -> list[str]:
        return [s["key"] for s in SampleStream(LoaderConfig(train_data=urls, shuffle_buffer=8, workers=0), TO_TENSOR,
                                                            epoch=epoch)]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1))


def test_resampled_epochs_have_the_same_length_on_every_rank(tmp_path):
    write_shards(tmp_path, [3, 8, 5])
    counts = []
    for rank in (0, 1):
        loader = build_loader(LoaderConfig(train_data=pattern(tmp_path, 3), chunk_size=4, workers=2, resampled=True,
                                           samples_per_epoch=22), TO_TENSOR, rank=rank, world_size=2)
        counts.append([len(keys) for keys in stream_keys(loader)])
    assert counts[0] == counts[1] == [4] * 6  # ceil(22 / 4) full chunks


def test_resampled_sources_follow_their_weights(tmp_path):
    urls = "::".join(pattern(tmp_path / name, 10, name) for name in ("a", "b"))
    for name in ("a", "b"):
        write_shards(tmp_path / name, [2] * 10, prefix=name)
    stream = SampleStream(LoaderConfig(train_data=urls, resampled=True, train_data_weights="3::1",
                                       samples_per_epoch=2000, chunk_size=100, shuffle_buffer=0, workers=0), TO_TENSOR)
    sources = Counter(s["key"][0] for s in stream)
    assert sources["a"] / sources.total() == pytest.approx(0.75, abs=0.05)


@pytest.mark.parametrize("resampled", [False, True], ids=["epoch", "resampled"])
def test_resume_skips_consumed_chunks_and_reproduces_the_rest(tmp_path, resampled):
    write_shards(tmp_path, [5, 9, 3, 12, 7, 1, 8])
    config = LoaderConfig(train_data=pattern(tmp_path, 7), chunk_size=3, workers=2, resampled=resampled,
                          shuffle_buffer=10, samples_per_epoch=40 if resampled else None)
    full_run = build_loader(config, TO_TENSOR)
    full_run.set_epoch(2)
    full = stream_keys(full_run)

    interrupted = build_loader(config, TO_TENSOR)
    interrupted.set_epoch(2)
    consumed = []
    for chunk in interrupted:
        consumed.append(chunk["keys"])
        if len(consumed) == 5:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "chunks_consumed": 5}

    resumed = build_loader(config, TO_TENSOR)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - 5
    assert consumed + stream_keys(resumed) == full


def test_refuses_weights_without_resampling_and_epochs_without_sizes(tmp_path):
    write_shards(tmp_path, [2, 2])
    with pytest.raises(ValueError, match="resampled"):
        build_loader(LoaderConfig(train_data=pattern(tmp_path, 2), train_data_weights="1"), TO_TENSOR)
    (tmp_path / "sizes.json").unlink()
    with pytest.raises(ValueError, match="sizes.json"):
        build_loader(LoaderConfig(train_data=pattern(tmp_path, 2)), TO_TENSOR)


def test_every_sample_has_a_txt_caption_for_open_clip_style_readers(tmp_path):
    # open_clip's loader and img2dataset-style tools read KEY.txt; a shard whose samples lack it reads as empty.
    with CaptionShardWriter(tmp_path, max_count=10) as writer:
        writer.write("a", image_bytes(0), "png", {"de": ["ein Hund"], "en": ["a dog"]})
        writer.write("b", image_bytes(1), "png", {"sw": ["mbwa", "mbwa mdogo"], "ha": ["kare"]})
        writer.write("c", image_bytes(2), "png", {"yo": ["ajá"]})
    shard = str(tmp_path / "shard-000000.tar")
    pairs = list(wds.WebDataset(shard, shardshuffle=False).to_tuple("__key__", "txt"))
    assert pairs == [("a", b"a dog"), ("b", b"mbwa"), ("c", "ajá".encode())]
    assert [s.key for s in iter_shard(shard)] == ["a", "b", "c"]
