"""Open an image the same way everywhere: upright, 8-bit RGB, of bounded size.

Training (``mclip_hbt.data.samples.decode_image``) and the shard recipes (:func:`encode_image`)
both call :func:`open_image`, so a picture looks the same in a shard and in a training batch:

* the EXIF orientation is applied (cameras store portraits as landscapes plus an orientation tag);
* high-bit-depth greyscale (``I;16*``, ``I``, ``F``) is scaled to 8 bits, where Pillow's ``convert``
  clips it (a 16-bit PNG comes out white);
* transparency (``RGBA``, ``LA``, ``PA``, a transparent palette or colour key) is composited on
  white, not dropped to show whatever colour the file keeps under transparent pixels;
* an image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb: a few kB
  that decode to gigabytes), or one side over ``MAX_ASPECT_RATIO`` times the other, is refused before
  it is decoded.

Every failure is an :class:`ImageError`, so a caller has one thing to catch and count.
:class:`ImageFinder` resolves the image names that caption lists use (recipes and benchmarks alike).
"""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Full-scale value of Pillow's single-channel high-bit-depth modes (``I`` holds 16-bit PNG/TIFF
#: greyscale; floating-point images use 0..1).
_FULL_SCALE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: Wider than any panorama worth a caption: a 1x20000 strip, resized to a 224-pixel short side, is gigabytes.
MAX_ASPECT_RATIO = 50


class ImageError(ValueError):
    """Bytes or a file that give no usable image: undecodable, truncated, or too large."""


def open_image(source: bytes | str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes or a file into an upright 8-bit RGB image; raise :class:`ImageError` if unusable.

    With ``draft_size`` a JPEG is decoded at the smallest 1/2**k DCT scale that keeps both sides
    >= ``draft_size`` (libjpeg does the downscale, several times faster for large photos).
    """
    if not isinstance(source, bytes):
        try:
            regular = stat.S_ISREG(os.stat(source).st_mode)
        except OSError as exc:
            raise ImageError(f"{type(exc).__name__}: {exc}") from exc
        if not regular:  # reading a FIFO or a device named like an image would wait forever or never end
            raise ImageError(f"{source} is not a regular file")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                raise ImageError(f"{image.width}x{image.height} pixels is more than PIL.Image.MAX_IMAGE_PIXELS "
                                 f"({limit}); raise that limit if the image is genuine")
            if max(image.size) > MAX_ASPECT_RATIO * max(1, min(image.size)):
                raise ImageError(f"{image.width}x{image.height} pixels: a side more than {MAX_ASPECT_RATIO} times "
                                 "the other, which resizing the short side to the model's input would blow up")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt files; each only means "not an image"
        raise ImageError(f"{type(exc).__name__}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: high-bit-depth greyscale scaled (not clipped) to 0..255, transparency composited on white."""
    if image.mode in _FULL_SCALE:
        levels = np.nan_to_num(np.asarray(image, dtype=np.float32)) * (255 / _FULL_SCALE[image.mode])
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")
    elif image.mode in _ALPHA_MODES or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


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


#: Output formats: shard extension → Pillow format name.
PIL_FORMATS = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}


def encode_image(path: str | os.PathLike, max_side: int, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Open an image as training does (:func:`open_image`: upright, 8-bit RGB), shrink its
    longest side to ``max_side`` (never enlarge; 0 keeps the size) and encode it as ``fmt``. Raises
    ``ImageError`` on a file that gives no usable image."""
    img = open_image(path)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpg", "webp") else {}
    img.save(buf, format=PIL_FORMATS[fmt], **options)
    return buf.getvalue()
