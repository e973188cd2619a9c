"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
