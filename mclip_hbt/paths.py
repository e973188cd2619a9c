"""Where the project finds shared caption data and keeps its cache."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The real caption data: ``$MCLIP_HBT_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("MCLIP_HBT_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """Cache for converted models: ``$MCLIP_HBT_CACHE``, else ``$XDG_CACHE_HOME/mclip_hbt``."""
    env = os.environ.get("MCLIP_HBT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mclip_hbt"
