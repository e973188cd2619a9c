"""Command-line pieces every benchmark shares: where it runs and where the benchmark files are."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mclip_hbt.paths import REPO_ROOT, shared_data_dir


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (auto: cuda when torch sees one); picks the defaults of the sizes")


def resolve_device(parser: argparse.ArgumentParser, device: str) -> str:
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
