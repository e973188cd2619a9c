"""What the benchmarks share: the device they run on and how they time and count work there, the models and
data they build, and where they read benchmark data and write results."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm
from transformers import AutoTokenizer, XLMRobertaConfig

from mclip_hbt.data.shards import CaptionShardWriter
from mclip_hbt.offline.bundled_e5 import bundled_model_path
from mclip_hbt.paths import REPO_ROOT, shared_data_dir
from mclip_hbt.runtime import cpu_model

PRECISIONS = ("fp32", "bf16")
#: The presets the training benchmarks report on.
PRESETS = ("xlmr-base-vit-b32", "e5-small-vit-b32")
#: Accepted too: the unit-test preset, for a quick run of a training benchmark on a busy CPU.
QUICK_CHECK_PRESETS = ("tiny",)
#: xlm-roberta-base's architecture (its hub config.json), so no hub is needed for a random-init encoder.
XLMR_BASE_CONFIG = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
#: open_clip's HFTokenizer pads every caption to its context length; 77 is its default, CLIP's and what
#: CLIP_benchmark runs it with.
OPENCLIP_CONTEXT = 77
#: n of the n×n matmul whose speed stands for the device's peak: large enough to keep the device busy.
PEAK_MATMUL_SIZE = {"cpu": 1536, "cuda": 8192}
#: open_clip 3.3's ``open_clip_train`` needs webdataset <= 0.2.86; its data module also imports pandas, which
#: our venv lacks. The rest of what both need (numpy, dateutil, tzdata, braceexpand, pyyaml) comes from our
#: venv, hence ``pip install --no-deps``.
OPENCLIP_ENV_PACKAGES = ("webdataset==0.2.86", "pandas>=2.2")
WDS_DIR = REPO_ROOT / ".cache" / "wds0286"


# ------------------------------------------------------------------------------ options and paths

def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (auto: cuda when torch sees one); picks the defaults of the sizes")


def resolve_device(parser: argparse.ArgumentParser, device: str) -> str:
    """``--device`` as ``cpu`` or ``cuda``; asking for CUDA where torch sees none is a usage error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return device


def benchmark_data(parser: argparse.ArgumentParser, data: Path | None, subfolders: tuple[str, ...]) -> Path:
    """``data`` (default: ``$MCLIP_HBT_DATA`` or ``../shared/data``), refused unless it holds ``subfolders``."""
    data = data or shared_data_dir()
    for sub in subfolders:
        if not (data / sub).is_dir():
            parser.error(f"--data: {data / sub} is not a folder; point --data (or MCLIP_HBT_DATA) at the folder "
                         f"holding {' and '.join(s + '/' for s in subfolders)}")
    return data


def result_path(out: Path | None, benchmark: str, device: str) -> Path:
    """``--out``, else ``bench/results/<benchmark>_<device>.json``."""
    return out or REPO_ROOT / "bench" / "results" / f"{benchmark}_{device}.json"


def settings_for_json(args: argparse.Namespace, *leave_out: str) -> dict:
    """The parsed options as a result file records them (paths as strings), less ``leave_out``."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in leave_out}


# ------------------------------------------------------------------------------ timing and counting

def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it includes that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on ``device`` for ``precision`` bf16; fp32 runs as it is."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def matmul_peak_gflops(device: torch.device, precision: str, size: int, seconds: float) -> float:
    """The device's square-matmul peak: best GFLOP/s of an n×n @ n×n product in ``precision`` (2·n³ FLOPs each)
    over ``seconds`` of repeated timing, the yardstick of the benchmarks' fraction of peak. A CUDA product is
    too short to time alone against the synchronisation around it, so CUDA times bursts of 10."""
    burst = 10 if device.type == "cuda" else 1
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: thread pool and packing buffers, cuBLAS handle and heuristics
        sync(device)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(burst):
                torch.mm(a, b)
            sync(device)
            best = max(best, burst * 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts while ``fn`` runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------ models

def write_xlmr_base_folder(dest: Path) -> Path:
    """A Hugging Face folder with xlm-roberta-base's config and the bundled encoder's tokenizer (the same
    250,002-piece XLM-R SentencePiece vocabulary), for a random-init encoder without a hub."""
    XLMRobertaConfig(**XLMR_BASE_CONFIG).save_pretrained(dest)
    AutoTokenizer.from_pretrained(bundled_model_path()).save_pretrained(dest)
    return dest


def our_overrides(preset: str, tmp: Path) -> dict:
    """``model_overrides`` for the trainer's ``build_model``: every weight local, the image tower random."""
    if preset == "xlmr-base-vit-b32":
        folder = write_xlmr_base_folder(tmp / "xlm-roberta-base")
        return {"text_model": str(folder), "text_pretrained": False, "vision_pretrained": None}
    return {"vision_pretrained": None}


# ------------------------------------------------------------------------------ images and shards

def textured_jpeg(rng: np.random.Generator, long_side: int) -> bytes:
    """A photo-like JPEG: smooth colour fields plus fine noise, so it compresses like a real photo."""
    short = int(long_side * rng.uniform(0.66, 1.0))
    h, w = (short, long_side) if rng.random() < 0.7 else (long_side, short)
    coarse = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_shards(out_dir: Path, num_samples: int, shard_size: int, long_side: int,
                 captions_of: Callable[[int], dict[str, list[str]]], caption_source: str) -> str:
    """Write (once) ``num_samples`` captioned JPEGs, sample i captioned ``captions_of(i)``; return the shard
    pattern. ``caption_source`` names the captions in the marker that decides whether shards are reused."""
    num_shards = -(-num_samples // shard_size)
    pattern = f"{out_dir}/bench-{{000000..{num_shards - 1:06d}}}.tar"
    marker = out_dir / "dataset.json"
    profile = [num_samples, shard_size, long_side, caption_source]
    if marker.exists() and json.loads(marker.read_text()).get("profile") == profile:
        return pattern
    rng = np.random.default_rng(0)
    with CaptionShardWriter(out_dir, "bench", max_count=shard_size) as writer:
        for i in tqdm(range(num_samples), desc="writing bench shards", unit="img"):
            writer.write(f"s{i:07d}", textured_jpeg(rng, long_side), "jpg", captions=captions_of(i))
        writer.close(extra={"profile": profile})
    return pattern


def openclip_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with webdataset 0.2.86 first on ``PYTHONPATH``, installed into
    ``.cache/wds0286`` the first time: the environment open_clip_train 3.3 runs in."""
    if not all((WDS_DIR / name).exists() for name in ("webdataset", "pandas")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target",
                        str(WDS_DIR), *OPENCLIP_ENV_PACKAGES], check=True)
    env = dict(os.environ if env is None else env)
    return {**env, "PYTHONPATH": os.pathsep.join([str(WDS_DIR), str(REPO_ROOT)])}
