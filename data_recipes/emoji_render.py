"""Drawing the emoji world's pictures: emoji rendered with the Noto Color Emoji font, placed with their own
scale, position and rotation (:func:`draw_picture`) and painted on a varied background as a JPEG (:class:`Painter`)."""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_recipes.emoji_sources import EmojiDataError

JPEG_QUALITY = 90
#: The font's one bitmap strike: render there, then resize.
FONT_STRIKE = 109
#: Emoji per image and how often each count is drawn.
EMOJI_COUNTS, EMOJI_COUNT_WEIGHTS = (1, 2, 3), (0.5, 0.3, 0.2)
#: Emoji side as a fraction of the image side, by the number of emoji in the image.
EMOJI_SCALE = {1: (0.55, 0.9), 2: (0.38, 0.55), 3: (0.3, 0.42)}
MAX_ROTATION = 30.0
BACKGROUNDS = ("flat", "gradient", "noise", "stripes", "checker", "dots")


@lru_cache(maxsize=4)
def _font(font_file: str) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(font_file, FONT_STRIKE)
    except OSError as err:
        raise EmojiDataError(f"cannot load the emoji font {font_file}: {err}") from err


def render_emoji(font_file: str, emoji: str) -> Image.Image:
    """The emoji as an RGBA image at the font's strike, cropped to its visible pixels (maybe empty)."""
    font = _font(font_file)
    left, top, right, bottom = font.getbbox(emoji)
    tile = Image.new("RGBA", (max(1, right - left), max(1, bottom - top)), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((-left, -top), emoji, font=font, embedded_color=True)
    visible = tile.getchannel("A").getbbox()
    return tile.crop(visible) if visible else Image.new("RGBA", (1, 1), (0, 0, 0, 0))


def renderable(font_file: str, emoji: str) -> bool:
    """Whether the font draws the emoji (CLDR also names punctuation and symbols the font lacks)."""
    tile = render_emoji(font_file, emoji)
    return tile.size != (1, 1) and tile.getchannel("A").getextrema()[1] > 0


@dataclass(frozen=True)
class Placed:
    emoji: str
    x: float  # centre, fraction of the image side
    y: float
    scale: float  # side, fraction of the image side
    rotation: float  # degrees


@dataclass(frozen=True)
class Picture:
    emoji: tuple[Placed, ...]  # left to right: the order the caption names them
    background: str
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    texture_seed: int


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def draw_picture(rng: random.Random, emoji: list[str]) -> Picture:
    """Place ``emoji`` with their own scale, position and rotation, overlapping as little as tries allow."""
    low, high = EMOJI_SCALE[len(emoji)]
    placed: list[Placed] = []
    for e in emoji:
        best = None
        for _ in range(20):  # rejection sampling: the placement farthest from the others wins
            scale = rng.uniform(low, high)
            half = scale / 2
            x, y = rng.uniform(half, 1 - half), rng.uniform(half, 1 - half)
            gap = min((math.hypot(x - p.x, y - p.y) - (scale + p.scale) / 2 for p in placed), default=1.0)
            if best is None or gap > best[0]:
                best = (gap, Placed(e, x, y, scale, rng.uniform(-MAX_ROTATION, MAX_ROTATION)))
            if gap > 0:
                break
        placed.append(best[1])
    placed.sort(key=lambda p: p.x)
    return Picture(tuple(placed), rng.choice(BACKGROUNDS), (_colour(rng), _colour(rng)), rng.randrange(2**31))


class Painter:
    """Paints a :class:`Picture` at ``image_size`` px (emoji tiles rendered once per process)."""

    def __init__(self, font_file: str, image_size: int):
        self.font_file, self.size = font_file, image_size
        self._tiles: dict[str, Image.Image] = {}

    def tile(self, emoji: str) -> Image.Image:
        if emoji not in self._tiles:
            self._tiles[emoji] = render_emoji(self.font_file, emoji)
        return self._tiles[emoji]

    def background(self, picture: Picture) -> Image.Image:
        n = self.size
        first, second = (np.array(c, np.float32) for c in picture.colours)
        rng = np.random.default_rng(picture.texture_seed)
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        kind = picture.background
        if kind == "flat":
            mix = np.zeros((n, n), np.float32)
        elif kind == "gradient":
            angle = rng.uniform(0, 2 * math.pi)
            mix = np.clip(0.5 + (np.cos(angle) * (ramp[None, :] - 0.5) + np.sin(angle) * (ramp[:, None] - 0.5)), 0, 1)
        elif kind == "noise":
            coarse = rng.random((max(2, n // 8), max(2, n // 8)), dtype=np.float32)
            mix = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((n, n), Image.BILINEAR),
                             np.float32) / 255
        elif kind == "stripes":
            period, angle = rng.uniform(4, 16), rng.uniform(0, math.pi)
            proj = np.cos(angle) * np.arange(n)[None, :] + np.sin(angle) * np.arange(n)[:, None]
            mix = ((proj // (period / 2)) % 2).astype(np.float32)
        elif kind == "checker":
            cell = int(rng.integers(4, 17))
            mix = (((np.arange(n)[None, :] // cell) + (np.arange(n)[:, None] // cell)) % 2).astype(np.float32)
        else:  # dots
            cell = int(rng.integers(6, 17))
            yy, xx = np.mgrid[0:n, 0:n] % cell - cell / 2
            mix = (np.hypot(xx, yy) < cell / 4).astype(np.float32)
        pixels = first * (1 - mix[..., None]) + second * mix[..., None]
        pixels += rng.normal(0.0, 6.0, pixels.shape)  # sensor-like grain on every kind
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    def paint(self, picture: Picture) -> bytes:
        canvas = self.background(picture)
        for p in picture.emoji:
            tile = self.tile(p.emoji)
            side = max(4, round(p.scale * self.size))
            width = max(1, round(side * tile.width / max(tile.size)))
            height = max(1, round(side * tile.height / max(tile.size)))
            sprite = tile.resize((width, height), Image.LANCZOS).rotate(p.rotation, Image.BICUBIC, expand=True)
            canvas.paste(sprite,
                         (round(p.x * self.size - sprite.width / 2), round(p.y * self.size - sprite.height / 2)),
                         sprite)
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()
