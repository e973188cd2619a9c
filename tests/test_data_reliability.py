"""Issue 11, data and recipes: bad records and odd images never crash training or from_captions, both open
images with one function, from_captions stays inside --images, an interrupted re-run never leaves a folder
that looks finished, and unusable output folders are refused before any work."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_recipes.from_captions import main as from_captions
from data_recipes.synth_scenes import main as synth_scenes
from mclip_hbt.data.loader import LoaderConfig, SampleStream
from mclip_hbt.data.shards import CaptionShardWriter
from mclip_hbt.paths import REPO_ROOT

NESTED_JSON = b"[" * 200000


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def small_png(i: int) -> bytes:
    return png(Image.new("RGB", (8, 8), (40 * i % 256, 90, 200)))


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def training_images(folder: Path, images: dict[str, tuple[bytes, str]]) -> tuple[dict[str, np.ndarray], dict]:
    """Write ``{key: (image bytes, ext)}`` as a real shard set and stream it as training does;
    return the decoded 8-bit pixels by key and the fault counts."""
    with CaptionShardWriter(folder) as writer:
        for key, (data, ext) in images.items():
            writer.write(key, data, ext, {"en": [f"a picture {key}"]})
    stream = SampleStream(LoaderConfig(train_data=str(folder), shuffle_buffer=0, workers=0), np.asarray)
    pixels = {sample["key"]: sample["image"] for sample in stream}
    return pixels, dict(stream.faults)


def recipe_images(tmp_path: Path, files: dict[str, bytes], names: list[str] | None = None) -> tuple[dict, list]:
    """Put ``files`` in an image folder, run from_captions on a JSONL naming ``names`` (default: the
    files) with lossless PNG output; return the stored pixels by key and the skipped.jsonl lines."""
    images = tmp_path / "images"
    images.mkdir()
    for name, data in files.items():
        (images / name).write_bytes(data)
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"image": n, "captions": {"en": f"a picture {n}"}}) + "\n"
                             for n in (names if names is not None else files)))
    out = tmp_path / "out"
    assert from_captions(["--jsonl", str(jsonl), "--images", str(images), "--out", str(out), "--format", "png",
                          "--max-side", "0", "--workers", "1"]) == 0
    pixels = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".png"):
                    pixels[member.name[:-4]] = np.asarray(Image.open(tar.extractfile(member)))
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    return pixels, skipped


# ------------------------------------------------------------------ 4. deeply nested caption JSON

def test_deeply_nested_caption_json_in_a_shard_is_a_counted_bad_json_fault(tmp_path):
    caption = json.dumps({"captions": {"en": ["a photo"]}}).encode()
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for key, record in (("ok1", caption), ("nested", NESTED_JSON), ("ok2", caption)):
            add_member(tar, f"{key}.png", small_png(len(key)))
            add_member(tar, f"{key}.json", record)
    (tmp_path / "sizes.json").write_text(json.dumps({"shard-000000.tar": 3}))

    stream = SampleStream(LoaderConfig(train_data=str(tmp_path), shuffle_buffer=0, workers=0), np.asarray)
    assert [sample["key"] for sample in stream] == ["ok1", "ok2"]
    assert dict(stream.faults) == {"bad_json": 1}


def test_from_captions_skips_and_lists_a_deeply_nested_jsonl_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(small_png(len(name)))
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_bytes(b'{"image": "a.png", "captions": {"en": "one"}}\n' + NESTED_JSON + b"\n"
                      b'{"image": "b.png", "captions": {"en": "two"}}\n')
    assert from_captions(["--jsonl", str(jsonl), "--images", str(images), "--out", str(tmp_path / "out"),
                          "--workers", "1"]) == 0
    meta = json.loads((tmp_path / "out/dataset.json").read_text())
    assert meta["num_samples"] == 2 and meta["skipped"] == {"bad record": 1}
    [skip] = [json.loads(line) for line in (tmp_path / "out/skipped.jsonl").read_text().splitlines()]
    assert skip["line"] == f"{jsonl}:2" and skip["reason"] == "bad record" and "nested too deeply" in skip["detail"]


# ------------------------------------------------------- 9. one image-opening function, odd images

def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    """A real 16-bit greyscale PNG (a gradient over the whole 16-bit range) and its 8-bit values."""
    levels = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    data = png(Image.fromarray(levels))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    return data, levels / 257


def rotated_jpeg() -> bytes:
    """A 30x10 JPEG, red left half and blue right half, whose EXIF orientation 6 says: turn it 90° clockwise."""
    image = Image.new("RGB", (30, 10), "blue")
    image.paste((255, 0, 0), (0, 0, 15, 10))
    exif = image.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def transparent_pngs() -> dict[str, bytes]:
    """Left half transparent (stored colour black), right half opaque: as RGBA and as a palette image."""
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (4, 0, 8, 8))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.paste(1, (4, 0, 8, 8))
    palette.info["transparency"] = 0
    return {"rgba": png(rgba), "palette": png(palette)}


def check_odd_images(pixels: dict[str, np.ndarray], expected_16bit: np.ndarray) -> None:
    grey = pixels["deep"]
    assert abs(grey.mean() - expected_16bit.mean()) < 0.5  # 127.5, where clipping gave 254.6
    assert np.abs(grey[..., 0].astype(float) - expected_16bit).max() <= 0.5
    upright = pixels["rotated"]
    assert upright.shape == (30, 10, 3)  # portrait, as the tag says
    assert upright[3, 5, 0] > 200 and upright[3, 5, 2] < 60  # the red half is on top
    assert upright[26, 5, 2] > 200 and upright[26, 5, 0] < 60
    for key in ("rgba", "palette"):
        assert (pixels[key][:, :4] == 255).all(), key  # transparent: white, not the stored black
        assert (pixels[key][:, 4:] == (0, 255, 0)).all(), key


def test_training_decodes_16bit_exif_and_transparent_images_properly(tmp_path):
    deep, expected = sixteen_bit_png()
    images = {"deep": (deep, "png"), "rotated": (rotated_jpeg(), "jpg"),
              **{key: (data, "png") for key, data in transparent_pngs().items()}}
    pixels, faults = training_images(tmp_path, images)
    assert faults == {}
    check_odd_images(pixels, expected)


def test_from_captions_stores_the_pixels_training_would_decode(tmp_path):
    deep, expected = sixteen_bit_png()
    files = {"deep.png": deep, "rotated.jpg": rotated_jpeg(),
             **{f"{key}.png": data for key, data in transparent_pngs().items()}}
    pixels, skipped = recipe_images(tmp_path, files)
    assert skipped == []
    check_odd_images(pixels, expected)
    trained, _ = training_images(tmp_path / "shards", {Path(n).stem: (d, Path(n).suffix[1:]) for n, d in files.items()})
    assert all((pixels[key] == trained[key]).all() for key in trained)  # one decoder: the same pixels


@pytest.fixture(scope="module")
def decompression_bomb() -> bytes:
    """A real PNG of 9500 x 9500 one-bit pixels: 12 kB on disk, over PIL's 89.5 M pixel bomb limit."""
    return png(Image.new("1", (9500, 9500)))


def test_training_counts_a_decompression_bomb_as_bad_image(tmp_path, decompression_bomb):
    with pytest.warns(Image.DecompressionBombWarning):
        pixels, faults = training_images(tmp_path, {"bomb": (decompression_bomb, "png"), "fine": (small_png(1), "png")})
    assert list(pixels) == ["fine"] and faults == {"bad_image": 1}


def test_from_captions_skips_a_decompression_bomb(tmp_path, decompression_bomb):
    with pytest.warns(Image.DecompressionBombWarning):
        pixels, skipped = recipe_images(tmp_path, {"bomb.png": decompression_bomb, "fine.png": small_png(1)})
    assert list(pixels) == ["fine"]
    assert [(s["image"], s["reason"]) for s in skipped] == [("bomb.png", "unreadable")]
    assert "MAX_IMAGE_PIXELS" in skipped[0]["detail"]


def test_from_captions_refuses_image_names_outside_images(tmp_path):
    (tmp_path / "outside.jpg").write_bytes(small_png(2))
    names = ["inside.png", "../outside.jpg", str(tmp_path / "outside.jpg"), "/etc/hostname", "sub/../../outside.jpg"]
    pixels, skipped = recipe_images(tmp_path, {"inside.png": small_png(1)}, names)
    assert list(pixels) == ["inside"]
    assert [(s["image"], s["reason"]) for s in skipped] == [(name, "outside images") for name in names[1:]]
    assert len(list((tmp_path / "out").glob("*.tar"))) == 1


def test_sigkilled_from_captions_rerun_never_leaves_a_folder_that_looks_finished(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(jpeg, "JPEG")
    for i in range(1500):
        (images / f"{i:04d}.jpg").write_bytes(jpeg.getvalue())

    def captions(count: int) -> Path:
        path = tmp_path / f"captions{count}.jsonl"
        path.write_text("".join(json.dumps({"image": f"{i:04d}.jpg", "captions": {"en": f"picture {i}"}}) + "\n"
                                for i in range(count)))
        return path

    out = tmp_path / "out"

    def args(count: int, shard_size: int) -> list[str]:
        return ["--jsonl", str(captions(count)), "--images", str(images), "--out", str(out),
                "--shard-size", str(shard_size), "--workers", "1"]

    assert from_captions(args(30, 10)) == 0
    assert json.loads((out / "sizes.json").read_text()) == {f"shard-{i:06d}.tar": 10 for i in range(3)}
    first_shard = (out / "shard-000000.tar").stat().st_ino

    # A re-run of 1500 one-image shards, killed once it has started writing: the new shard 0 is there
    # (a new file, renamed into place) or the old counts are gone.
    rerun = subprocess.Popen([sys.executable, "-m", "data_recipes.from_captions", *args(1500, 1)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    try:
        while rerun.poll() is None and (out / "sizes.json").exists() \
                and (out / "shard-000000.tar").stat().st_ino == first_shard:
            time.sleep(0.001)
        rerun.send_signal(signal.SIGKILL)
        assert rerun.wait(timeout=60) == -signal.SIGKILL, "the re-run ended before it could be killed"
    finally:
        if rerun.poll() is None:
            rerun.kill()
    assert not (out / "sizes.json").exists() and not (out / "dataset.json").exists()

    # A complete re-run with fewer shards leaves exactly its own shards, all in sizes.json.
    assert from_captions(args(25, 10)) == 0
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 10, "shard-000001.tar": 10, "shard-000002.tar": 5}
    assert sorted(p.name for p in out.iterdir() if ".tar" in p.name) == sorted(sizes)
    assert json.loads((out / "dataset.json").read_text())["num_samples"] == 25


# ------------------------------------------------- 7 and 10. unusable --out refused before any work

def from_captions_args(tmp_path: Path, out: Path) -> list[str]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / "a.png").write_bytes(small_png(1))
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"image": "a.png", "captions": {"en": "one"}}\n')
    return ["--jsonl", str(jsonl), "--images", str(images), "--out", str(out), "--workers", "1"]


SYNTH_ARGS = ["--train-samples", "4", "--test-samples", "2", "--image-size", "16", "--no-progress"]


@pytest.mark.parametrize("recipe", ["from_captions", "synth_scenes"])
@pytest.mark.parametrize("where", ["read-only", "file"])
def test_recipes_refuse_an_unusable_out_before_any_work(tmp_path, small_fs, capsys, recipe, where):
    if where == "read-only":
        out = small_fs.mount(size="1m", readonly=True) / "out"
    else:
        out = tmp_path / "a-file"
        out.write_text("not a folder")
    argv = from_captions_args(tmp_path, out) if recipe == "from_captions" else ["--out", str(out), *SYNTH_ARGS]
    with pytest.raises(SystemExit) as exit_info:
        (from_captions if recipe == "from_captions" else synth_scenes)(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(out) in err
    if where == "file":
        assert out.read_text() == "not a folder"
    else:
        assert not out.exists()
