"""An offline world of real concepts named in real languages: emoji pictures with their Unicode CLDR names.

Pictures: 1-3 emoji (rendered with the Noto Color Emoji font) on a varied background (flat colour,
gradient, noise or texture), each with its own scale, position and rotation. Captions: per language,
the emoji's CLDR short name (``type="tts"``, written by native speakers) and, in training, its
keywords; an image with several emoji joins their names left to right with the language's own CLDR
list pattern ("a dog and a cat" → "Hund und Katze", "ውሻ እና ድመት").

Writes ``OUT/train/`` (caption shards under a resource profile) and two XTD-layout test splits, each
captioned in every evaluated language and line-aligned:

- ``OUT/test_seen/``: fresh renders of the concepts that training draws from;
- ``OUT/test_unseen/``: a fixed held-out set of concepts (``--heldout-fraction``) never drawn in training.

Evaluated languages are those with at least ``--min-names`` renderable names; both test splits draw
only emoji named in every evaluated language. The default profile (``--profile default``):

- high-resource, on every training image: en de fr es zh ja ru ar pt it;
- low-resource, on 5 % of training images: sw am km ne te my cy is fil so;
- unseen, never in training: every other evaluated language (about 85 with the default --min-names).

``OUT/languages.json`` lists every evaluated language with its group, its name count and whether
XLM-R's pre-training corpus (CC-100, the encoder family's data) holds it; Yoruba, Zulu, Igbo and a
few others are outside it and are reported apart.

    python -m data_recipes.emoji_world --out data/emoji --train-samples 20000 --workers 2
"""
from __future__ import annotations

import argparse
import io
import itertools
import math
import random
import shutil
import sys
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from babel.lists import format_list
from PIL import Image, ImageDraw, ImageFont

from data_recipes.worlds import (
    add_world_arguments,
    at_least,
    distinct_fraction,
    finished_summary,
    mark_finished,
    parse_profile,
    produce,
    write_xtd_split,
)
from mclip_hbt.fileio import check_output_dir, write_json_atomic
from mclip_hbt.languages import PRETRAINING_SOURCE, canonical_lang, language_name, parse_lang_list, pretraining_status
from mclip_hbt.paths import shared_data_dir
from mclip_hbt.shards import CaptionShardWriter

HIGH_RESOURCE = ("en", "de", "fr", "es", "zh", "ja", "ru", "ar", "pt", "it")
LOW_RESOURCE = ("sw", "am", "km", "ne", "te", "my", "cy", "is", "fil", "so")
LOW_FRACTION = 0.05
PROFILES: dict[str, dict[str, float]] = {
    "default": {**dict.fromkeys(HIGH_RESOURCE, 1.0), **dict.fromkeys(LOW_RESOURCE, LOW_FRACTION)},
    "english-only": {"en": 1.0},
}
DONE_MARKER = "emoji_world.done.json"
TEST_SPLITS = ("test_seen", "test_unseen")
LANGUAGES_FILE = "languages.json"
JPEG_QUALITY = 90
#: The font's one bitmap strike: render there, then resize.
FONT_STRIKE = 109
#: Emoji per image and how often each count is drawn.
EMOJI_COUNTS, EMOJI_COUNT_WEIGHTS = (1, 2, 3), (0.5, 0.3, 0.2)
#: Emoji side as a fraction of the image side, by the number of emoji in the image.
EMOJI_SCALE = {1: (0.55, 0.9), 2: (0.38, 0.55), 3: (0.3, 0.42)}
MAX_ROTATION = 30.0
BACKGROUNDS = ("flat", "gradient", "noise", "stripes", "checker", "dots")

CLDR_SYSTEM_DIR = Path("/usr/share/unicode/cldr/common/annotations")
FONT_SYSTEM_FILE = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CLDR_URL = "https://unicode.org/Public/cldr/41/core.zip"
FONT_URL = "https://github.com/googlefonts/noto-emoji/raw/v2.042/fonts/NotoColorEmoji.ttf"
WHERE_TO_GET = (
    "get the CLDR annotations from CLDR's core.zip ({cldr}, folder common/annotations) or Debian's "
    "unicode-cldr-core package, and the font from the noto-emoji release ({font}) or Debian's "
    "fonts-noto-color-emoji; or pass --download to fetch both").format(cldr=CLDR_URL, font=FONT_URL)


class EmojiDataError(ValueError):
    """The CLDR annotations or the font cannot be found or read; the message says where to get them."""


# --- locating and reading the data ------------------------------------------------------------

def locate_cldr(path: str | Path | None = None) -> Path:
    """The folder of CLDR ``annotations/*.xml``: ``path``, else the shared data, else Debian's."""
    candidates = [Path(path)] if path else [shared_data_dir() / "cldr-annotations" / "annotations", CLDR_SYSTEM_DIR]
    for folder in candidates:
        if (folder / "en.xml").is_file():
            return folder
        if (folder / "annotations" / "en.xml").is_file():
            return folder / "annotations"
    raise EmojiDataError(f"no CLDR annotations (en.xml) in {', '.join(map(str, candidates))}; {WHERE_TO_GET}")


def locate_font(path: str | Path | None = None) -> Path:
    """The Noto Color Emoji font file: ``path``, else the shared data, else Debian's."""
    candidates = [Path(path)] if path else [shared_data_dir() / "emoji-font" / "NotoColorEmoji.ttf", FONT_SYSTEM_FILE]
    for file in candidates:
        if file.is_file():
            return file
    raise EmojiDataError(f"no emoji font at {', '.join(map(str, candidates))}; {WHERE_TO_GET}")


def download(cldr_url: str, font_url: str, dest: Path) -> tuple[Path, Path]:
    """Fetch CLDR's core.zip (keeping ``common/annotations``) and the font into ``dest``; reused when present."""
    cldr_dir, font_file = dest / "cldr-annotations" / "annotations", dest / "emoji-font" / "NotoColorEmoji.ttf"
    if not (cldr_dir / "en.xml").is_file():
        with urllib.request.urlopen(cldr_url, timeout=120) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
        members = [m for m in archive.namelist() if m.startswith("common/annotations/") and m.endswith(".xml")]
        if not members:
            raise EmojiDataError(f"{cldr_url} holds no common/annotations/*.xml; is it CLDR's core.zip?")
        staging = cldr_dir.with_name(cldr_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for member in members:
            (staging / Path(member).name).write_bytes(archive.read(member))
        staging.rename(cldr_dir)
    if not font_file.is_file():
        font_file.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(font_url, timeout=120) as response:
            data = response.read()
        tmp = font_file.with_name(font_file.name + ".tmp")
        tmp.write_bytes(data)
        tmp.rename(font_file)
    return cldr_dir, font_file


@dataclass(frozen=True)
class Annotation:
    name: str  # the CLDR short name (type="tts")
    keywords: tuple[str, ...]


def read_annotations(xml_file: Path) -> dict[str, Annotation]:
    """``{emoji: Annotation}`` of one CLDR annotations file (a real XML parser: entities decoded)."""
    try:
        root = ET.parse(xml_file).getroot()
    except (ET.ParseError, OSError) as err:
        raise EmojiDataError(f"cannot read {xml_file}: {err}") from err
    names: dict[str, str] = {}
    keywords: dict[str, tuple[str, ...]] = {}
    for node in root.iter("annotation"):
        emoji, text = node.get("cp"), (node.text or "").strip()
        if not emoji or not text or text == "↑↑↑":  # "↑↑↑": inherited from the parent locale, no name here
            continue
        if node.get("type") == "tts":
            names[emoji] = text
        else:
            keywords[emoji] = tuple(k.strip() for k in text.split("|") if k.strip())
    return {e: Annotation(n, keywords.get(e) or (n,)) for e, n in names.items()}


def read_all_annotations(cldr_dir: Path) -> dict[str, dict[str, Annotation]]:
    """Every language's annotations, keyed by the project's language code (``root`` is no language)."""
    out: dict[str, dict[str, Annotation]] = {}
    for xml_file in sorted(cldr_dir.glob("*.xml")):
        if xml_file.stem == "root":
            continue
        try:
            lang = canonical_lang(xml_file.stem)
        except ValueError:
            continue  # a locale file this project has no code for; listed nowhere, used nowhere
        out.setdefault(lang, {}).update(read_annotations(xml_file))
    return out


# --- rendering --------------------------------------------------------------------------------

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


# --- captions ---------------------------------------------------------------------------------

def join_names(names: list[str], lang: str) -> str:
    """Names joined with the language's CLDR list pattern (one name stays as it is)."""
    return names[0] if len(names) == 1 else format_list(names, locale=lang)


def test_caption(annotations: dict[str, Annotation], picture: Picture, lang: str) -> str:
    return join_names([annotations[p.emoji].name for p in picture.emoji], lang)


def train_captions(annotations: dict[str, Annotation], picture: Picture, lang: str, rng: random.Random) -> list[str]:
    """The names, and the same picture said with one keyword per emoji (repeats dropped)."""
    names = [annotations[p.emoji].name for p in picture.emoji]
    keywords = [rng.choice(annotations[p.emoji].keywords) for p in picture.emoji]
    return list(dict.fromkeys([join_names(names, lang), join_names(keywords, lang)]))


# --- the world --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Concepts:
    """Which emoji each split draws from, and which languages are evaluated."""
    evaluated: tuple[str, ...]  # the profile's languages first, then the others in code order
    train: tuple[str, ...]  # emoji drawn in training (TRAIN_CONCEPTS), never a held-out one
    seen: tuple[str, ...]  # test_seen: named in every evaluated language, not held out
    heldout: tuple[str, ...]  # test_unseen: named in every evaluated language, never in training


#: What training draws from. "seen": the seen-test concepts (named in every evaluated language, not held out),
#: about 70 pictures of each in 20,000 images; "profile": every emoji named in every profile language and not
#: held out — more variety, but over twice the concepts and so under half the pictures of each.
TRAIN_CONCEPTS = ("seen", "profile")


def choose_concepts(annotations: dict[str, dict[str, Annotation]], drawable: set[str], profile: dict[str, float],
                    min_names: int, heldout_fraction: float, seed: int,
                    eval_languages: list[str] | None = None, train_concepts: str = "seen") -> Concepts:
    """Evaluated languages: the profile's, then ``eval_languages`` (default: every language with enough names)."""
    named = {lang: set(a) & drawable for lang, a in annotations.items()}
    others = sorted(lang for lang in named if len(named[lang]) >= min_names) if eval_languages is None \
        else list(eval_languages)
    evaluated = list(dict.fromkeys([*profile, *others]))
    missing = sorted(lang for lang in evaluated if len(named.get(lang, ())) < min_names)
    if missing:
        raise ValueError(f"languages with fewer than {min_names} drawable names in the CLDR files: "
                         f"{', '.join(missing)}; lower --min-names or leave them out")
    shared = sorted(set.intersection(*(named[lang] for lang in evaluated)))
    heldout = sorted(random.Random(f"emoji_world/{seed}/heldout").sample(shared, round(heldout_fraction * len(shared))))
    seen = sorted(set(shared) - set(heldout))
    if train_concepts not in TRAIN_CONCEPTS:
        raise ValueError(f"train_concepts must be one of {', '.join(TRAIN_CONCEPTS)}, got {train_concepts!r}")
    # Either way every profile language names every training concept, so a language's share of training
    # images is its fraction.
    train = seen if train_concepts == "seen" else sorted(
        set.intersection(*(named[lang] for lang in profile)) - set(heldout))
    return Concepts(tuple(evaluated), tuple(train), tuple(seen), tuple(heldout))


def pool_of(concepts: Concepts, split: str) -> tuple[str, ...]:
    """The concepts a test split draws from."""
    return concepts.seen if split == "test_seen" else concepts.heldout


def plan_test_split(concepts: tuple[str, ...], count: int, split: str, seed: int,
                    annotations: dict[str, Annotation]) -> list[Picture]:
    """``count`` pictures whose English captions are distinct (redrawn on a repeat, a bounded number of times)."""
    rng = random.Random(f"emoji_world/{seed}/{split}")
    pictures, used = [], set()
    for _ in range(count):
        for _ in range(50):
            k = rng.choices(EMOJI_COUNTS, EMOJI_COUNT_WEIGHTS)[0]
            picture = draw_picture(rng, rng.sample(concepts, min(k, len(concepts))))
            caption = test_caption(annotations, picture, "en")
            if caption not in used:
                break
        used.add(caption)
        pictures.append(picture)
    return pictures


class SampleMaker:
    """Renders and captions pictures; training sample ``i`` is a pure function of (seed, i)."""

    def __init__(self, annotations: dict[str, dict[str, Annotation]], font_file: str, image_size: int, seed: int,
                 profile: dict[str, float], train_concepts: tuple[str, ...]):
        self.annotations = annotations  # of the evaluated languages, in their order
        self.painter = Painter(font_file, image_size)
        self.seed, self.profile, self.train_concepts = seed, profile, train_concepts

    def test(self, key: str, picture: Picture) -> tuple[str, bytes, dict[str, str]]:
        return key, self.painter.paint(picture), {lang: test_caption(a, picture, lang)
                                                  for lang, a in self.annotations.items()}

    def train(self, index: int) -> tuple[str, bytes, dict[str, list[str]], list[str]]:
        rng = random.Random(f"emoji_world/{self.seed}/train/{index}")
        k = rng.choices(EMOJI_COUNTS, EMOJI_COUNT_WEIGHTS)[0]
        picture = draw_picture(rng, rng.sample(self.train_concepts, k))
        captions = {}
        for lang, fraction in self.profile.items():
            if fraction == 1.0 or rng.random() < fraction:
                captions[lang] = train_captions(self.annotations[lang], picture, lang, rng)
        return f"emoji_train_{index:07d}", self.painter.paint(picture), captions, [p.emoji for p in picture.emoji]

    def __call__(self, kind: str, *args):
        return self.test(*args) if kind == "test" else self.train(*args)


def resolve_profile(spec: str | dict) -> tuple[str, dict[str, float]]:
    """A profile name, an inline JSON object or a dict → (name, {lang: fraction}, languages never drawn left out)."""
    name, fractions = parse_profile(spec, PROFILES)
    return name, {lang: frac for lang, frac in fractions.items() if frac > 0}


def language_table(concepts: Concepts, profile: dict[str, float], annotations: dict[str, dict]) -> list[dict]:
    """One row per evaluated language: group, names, and whether the encoder's pre-training saw it."""
    rows = []
    for lang in concepts.evaluated:
        fraction = profile.get(lang, 0.0)
        group = "high" if fraction == 1.0 else "low" if fraction > 0 else "unseen"
        rows.append({"lang": lang, "name": language_name(lang), "group": group, "train_fraction": fraction,
                     "names": len(annotations[lang]), **pretraining_status(lang)})
    return rows


def generate(out_dir: str | Path, *, cldr: str | Path | None = None, font: str | Path | None = None,
             train_samples: int = 20000, test_samples: int = 1000, image_size: int = 64,
             profile: str | dict = "default", min_names: int = 1000, eval_languages: list[str] | None = None,
             heldout_fraction: float = 0.2, train_concepts: str = "seen", seed: int = 0, shard_size: int = 1000,
             workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the training shards and both test splits under ``out_dir``; return the summary.

    A finished ``out_dir`` made with the same settings is left as it is (``"skipped": True``); one made
    with other settings is refused unless ``overwrite``.
    """
    cldr_dir, font_file = locate_cldr(cldr), locate_font(font)
    profile_name, fractions = resolve_profile(profile)
    out = Path(out_dir)
    config = {"train_samples": train_samples, "test_samples": test_samples, "image_size": image_size,
              "profile": {"name": profile_name, "fractions": fractions}, "min_names": min_names,
              "eval_languages": eval_languages, "heldout_fraction": heldout_fraction,
              "train_concepts": train_concepts, "seed": seed, "shard_size": shard_size, "jpeg_quality": JPEG_QUALITY}
    done = finished_summary(out, DONE_MARKER, config, overwrite, ("train", *TEST_SPLITS),
                            "an emoji world")
    if done is not None:
        return done

    annotations = read_all_annotations(cldr_dir)
    everything = set().union(*(set(a) for a in annotations.values()))
    drawable = {e for e in sorted(everything) if renderable(str(font_file), e)}
    concepts = choose_concepts(annotations, drawable, fractions, min_names, heldout_fraction, seed, eval_languages,
                               train_concepts)
    used = set(concepts.train) | set(concepts.seen) | set(concepts.heldout)
    evaluated = {lang: {e: a for e, a in annotations[lang].items() if e in used} for lang in concepts.evaluated}
    maker_kwargs = {"annotations": evaluated, "font_file": str(font_file), "image_size": image_size, "seed": seed,
                    "profile": fractions, "train_concepts": concepts.train}
    # One task list (both test splits, then training) so that one pool of workers renders everything.
    test_pictures = {split: plan_test_split(pool_of(concepts, split), test_samples, split, seed, annotations["en"])
                     for split in TEST_SPLITS}
    tasks = [("test", f"emoji_{split}_{i:05d}", p) for split, pictures in test_pictures.items()
             for i, p in enumerate(pictures)] + [("train", i) for i in range(train_samples)]
    samples = produce(SampleMaker, maker_kwargs, tasks, workers, "emoji_world", progress)
    test_summaries = {}
    for split, pictures in test_pictures.items():
        write_xtd_split(out / split, itertools.islice(samples, len(pictures)), concepts.evaluated)
        english = [test_caption(annotations["en"], p, "en") for p in pictures]
        test_summaries[split] = {"num_images": len(pictures), "concepts": len(pool_of(concepts, split)),
                                 "distinct_english_fraction": distinct_fraction(english)}
    writer = CaptionShardWriter(out / "train", prefix="emoji", max_count=shard_size)
    for key, jpeg, captions, emoji in samples:
        writer.write(key, jpeg, "jpg", captions, source="emoji_world:" + " ".join(emoji))
    table = language_table(concepts, fractions, annotations)
    groups = {g: [row["lang"] for row in table if row["group"] == g] for g in ("high", "low", "unseen")}
    profile_record = {"name": profile_name, "fractions": fractions, **groups}
    train_stats = writer.close(extra={"profile": profile_record,
                                      "generator": {"name": "emoji_world", "seed": seed, "image_size": image_size}})
    write_json_atomic(out / LANGUAGES_FILE, {"languages": table, "pretraining_source": PRETRAINING_SOURCE})
    summary = {"out_dir": str(out), "train": train_stats, **test_summaries,
               "concepts": {"train": len(concepts.train), "seen": len(concepts.seen),
                            "heldout": len(concepts.heldout)},
               "languages": {g: len(v) for g, v in groups.items()}}
    return mark_finished(out, DONE_MARKER, config, summary)


def _print_summary(summary: dict) -> None:
    state = "already complete, nothing done" if summary["skipped"] else "written"
    print(f"{summary['out_dir']}: {state}")
    c, langs = summary["concepts"], summary["languages"]
    print(f"concepts: {c['train']} drawn in training, {c['seen']} in test_seen, {c['heldout']} held out (test_unseen)")
    print(f"languages: {langs['high']} high-resource, {langs['low']} low-resource, {langs['unseen']} unseen")
    print(f"train: {summary['train']['num_samples']} images in {summary['train']['num_shards']} shards")
    for split in TEST_SPLITS:
        s = summary[split]
        print(f"{split}: {s['num_images']} images over {s['concepts']} concepts, "
              f"{s['distinct_english_fraction']:.3f} with a distinct English caption")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_recipes.emoji_world", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gets train/, test_seen/, test_unseen/)")
    p.add_argument("--cldr", help="folder of CLDR annotations/*.xml (default: $MCLIP_HBT_DATA/cldr-annotations, "
                                  f"../shared/data/cldr-annotations, then {CLDR_SYSTEM_DIR})")
    p.add_argument("--font", help="NotoColorEmoji.ttf (default: $MCLIP_HBT_DATA/emoji-font, ../shared/data/emoji-font, "
                                  f"then {FONT_SYSTEM_FILE})")
    p.add_argument("--download", metavar="DIR",
                   help="fetch CLDR's core.zip and the font into DIR first (machines with internet), then use them")
    p.add_argument("--cldr-url", default=CLDR_URL, help="where --download gets CLDR's core.zip (default: %(default)s)")
    p.add_argument("--font-url", default=FONT_URL, help="where --download gets the font (default: %(default)s)")
    p.add_argument("--train-samples", type=at_least(1), default=20000, help="training images (default: %(default)s)")
    p.add_argument("--test-samples", type=at_least(1), default=1000,
                   help="images in each test split (default: %(default)s)")
    p.add_argument("--image-size", type=at_least(16), default=64, help="image side in pixels (default: %(default)s)")
    p.add_argument("--profile", default="default",
                   help=f"resource profile: one of {', '.join(PROFILES)}, or an inline JSON object "
                        "{lang: fraction of training images} (default: %(default)s: "
                        f"{' '.join(HIGH_RESOURCE)} on every image, {' '.join(LOW_RESOURCE)} on "
                        f"{LOW_FRACTION:.0%} of images, every other evaluated language never)".replace("%", "%%"))
    p.add_argument("--min-names", type=at_least(1), default=1000,
                   help="a language is evaluated when CLDR names at least this many drawable emoji in it "
                        "(default: %(default)s: 104 languages sharing about 700 emoji)")
    p.add_argument("--eval-languages", default="all",
                   help="languages captioned in the test splits besides the profile's: 'all' (every language with "
                        "--min-names names) or a comma-separated list (default: %(default)s)")
    p.add_argument("--heldout-fraction", type=_fraction, default=0.2,
                   help="share of the test concepts held out of training for test_unseen (default: %(default)s)")
    p.add_argument("--train-concepts", choices=TRAIN_CONCEPTS, default="seen",
                   help="what training pictures show: seen = the seen-test concepts (named in every evaluated "
                        "language, about 70 pictures each in 20,000 images); profile = every emoji the profile's "
                        "languages all name (over twice as many, fewer pictures each); held-out concepts never "
                        "(default: %(default)s)")
    add_world_arguments(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_profile(args.profile)
        eval_languages = None if args.eval_languages == "all" else parse_lang_list(args.eval_languages)
        check_output_dir(args.out, "--out")
        cldr, font = args.cldr, args.font
        if args.download:
            check_output_dir(args.download, "--download")
            cldr, font = download(args.cldr_url, args.font_url, Path(args.download))
        locate_cldr(cldr), locate_font(font)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    try:
        summary = generate(args.out, cldr=cldr, font=font, train_samples=args.train_samples,
                           test_samples=args.test_samples, image_size=args.image_size, profile=args.profile,
                           min_names=args.min_names, eval_languages=eval_languages,
                           heldout_fraction=args.heldout_fraction, train_concepts=args.train_concepts,
                           seed=args.seed,
                           shard_size=args.shard_size, workers=args.workers, overwrite=args.overwrite,
                           progress=not args.no_progress)
    except (FileExistsError, EmojiDataError, ValueError) as err:
        parser.error(f"--out: {err}" if isinstance(err, FileExistsError) else str(err))
    _print_summary(summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
