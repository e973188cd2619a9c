"""Find image files by the names caption files use, and re-encode them for shards."""
from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps

#: Output formats: shard extension → Pillow format name.
PIL_FORMATS = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}


class ImageFinder:
    """Resolve an image name against a folder: the relative path first, then the file name anywhere below.

    The fallback covers layouts such as COCO, whose ``COCO_val2014_*.jpg`` files live in ``val2014/``
    while caption lists give bare file names. The recursive index is built once, on the first miss.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._by_name: dict[str, Path] | None = None

    def find(self, name: str) -> Path | None:
        direct = self.root / name
        if direct.is_file():
            return direct
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()  # first match in sorted order, so duplicates resolve the same way every run
                for filename in sorted(filenames):
                    self._by_name.setdefault(filename, Path(dirpath) / filename)
        return self._by_name.get(Path(name).name)


def encode_image(path: str | os.PathLike, max_side: int, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Decode an image, upright it by its EXIF orientation, shrink its longest side to ``max_side``
    (never enlarge; 0 keeps the size) and encode it as ``fmt``. Raises ``OSError``/``ValueError`` on a
    file Pillow cannot read."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpg", "webp") else {}
    img.save(buf, format=PIL_FORMATS[fmt], **options)
    return buf.getvalue()
