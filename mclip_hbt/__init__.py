"""mclip_hbt: multilingual CLIP with hybrid-batch training.

``mclip_hbt.MultilingualCLIP`` and ``mclip_hbt.create_model`` are imported on first use, so the
light modules (language codes, paths) do not pull in torch, open_clip and transformers.
"""
from __future__ import annotations

__all__ = ["MultilingualCLIP", "MultilingualCLIPConfig", "create_model"]


def __getattr__(name: str):
    if name in __all__:
        from mclip_hbt.model import clip

        return getattr(clip, name)
    raise AttributeError(f"module 'mclip_hbt' has no attribute {name!r}")
