"""Shared test fixtures."""
from __future__ import annotations

import gzip
import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mclip_hbt.paths import REPO_ROOT, shared_data_dir

# Converted models (the bundled encoder) go to the checkout's gitignored .cache/, so a checkout
# converts once and reuses it across test sessions; an explicit $MCLIP_HBT_CACHE wins.
os.environ.setdefault("MCLIP_HBT_CACHE", str(REPO_ROOT / ".cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real caption data folder (XTD10, Multi30K); the test is skipped when it is absent."""
    root = shared_data_dir()
    if not (root / "xtd10").is_dir():
        pytest.skip(f"real caption data not found at {root}: set MCLIP_HBT_DATA to the folder holding "
                    "xtd10/ and multi30k/ (the project's shared/data)")
    return root


@contextmanager
def one_thread():
    """torch on one thread, as OMP_NUM_THREADS=1 gives a test's child process: results compared bit for bit with
    a child's must come from the same kernels (a CPU's matmul can sum in another order on two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    """A TCP port free right now, for a multi-process launch's rendezvous: launches running at the same time
    (``pytest -n``) must not share accelerate's default port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_first_lines(source_root: Path, dest_root: Path, pattern: str, n: int) -> list[Path]:
    """Copies of the files under ``source_root`` named ``pattern`` (line-aligned caption and image-name
    files), each cut to its first ``n`` lines, at the same relative paths under ``dest_root`` (``.gz``
    files stay gzip); returns the copies. For running a real benchmark's files on fewer images."""
    copies = []
    for source in sorted(source_root.rglob(pattern)):
        target = dest_root / source.relative_to(source_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as f:
            lines = f.read().split(b"\n")  # only "\n" ends a line (read_lines keeps a "\r" inside one)
        with opener(target, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines[:n]))
        copies.append(target)
    return copies


class SmallFileSystems:
    """Real small file systems for fault tests: a tmpfs that fills up (ENOSPC) or is read-only (EROFS,
    which root cannot bypass as it bypasses permission bits)."""

    def __init__(self, root: Path):
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, size: str = "1m", readonly: bool = False) -> Path:
        where = self.root / f"fs{len(self.mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"this test needs a small tmpfs and could not mount one ({result.stderr.strip()}); "
                        "run the tests as root (CI does) or in a container with CAP_SYS_ADMIN")
        self.mounted.append(where)
        return where

    @staticmethod
    def make_readonly(where: Path) -> None:
        """Turn a mounted tmpfs read-only after the test has put files in it."""
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)

    def unmount_all(self) -> None:
        for where in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path):
    """``small_fs.mount(size="1m", readonly=False)`` → path of a fresh tmpfs, unmounted after the test."""
    filesystems = SmallFileSystems(tmp_path)
    yield filesystems
    filesystems.unmount_all()
