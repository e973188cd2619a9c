"""Find image files by the names caption files use, and re-encode them for shards."""
from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from mclip_hbt.images import open_image

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

    def escapes(self, name: str) -> bool:
        """Whether ``name`` points outside the folder (an absolute path, or ``..`` climbing out of it).

        Checked on the name alone: symbolic links inside the folder are the user's own layout
        (a ``train2014`` link to another disk), while a caption list must not name ``/etc/hostname``.
        """
        relative = os.path.normpath(name)
        return os.path.isabs(relative) or relative == os.pardir or relative.startswith(os.pardir + os.sep)

    def find(self, name: str) -> Path | None:
        """The image file ``name`` names, or None when there is none inside the folder (see :meth:`escapes`)."""
        if self.escapes(name):
            return None
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
