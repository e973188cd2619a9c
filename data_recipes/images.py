"""Re-encode images for shards."""
from __future__ import annotations

import io
import os

from PIL import Image

from mclip_hbt.images import open_image

#: Output formats: shard extension → Pillow format name.
PIL_FORMATS = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}


def encode_image(path: str | os.PathLike, max_side: int, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Open an image as training does (``mclip_hbt.images.open_image``: upright, 8-bit RGB), shrink its
    longest side to ``max_side`` (never enlarge; 0 keeps the size) and encode it as ``fmt``. Raises
    ``ImageError`` on a file that gives no usable image."""
    img = open_image(path)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpg", "webp") else {}
    img.save(buf, format=PIL_FORMATS[fmt], **options)
    return buf.getvalue()
