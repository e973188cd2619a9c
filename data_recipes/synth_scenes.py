"""An offline benchmark world: drawn scenes of coloured shapes with captions in the 11 XTD10 languages.

Writes ``OUT/train/`` (caption shards with a resource profile: some languages on every image,
some on a few, some never) and ``OUT/test/`` laid out like XTD10 (every language, one caption per
image). Every caption states each object group's count, size, colour, shape and place, and the
background colour, so a test caption describes its own image and (almost always) no other.

    python -m data_recipes.synth_scenes --out data/synth --train-samples 20000
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_recipes.scene_grammar import (
    COLOURS,
    MAX_COUNT,
    NUM_CELLS,
    SHAPES,
    SIZES,
    Description,
    Group,
    Placed,
    num_templates,
    render_caption,
)
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
from mclip_hbt.data.shards import CaptionShardWriter
from mclip_hbt.fileio import OutputError, check_output_dir
from mclip_hbt.languages import XTD_LANGS

#: Resource profiles: the fraction of training images that carry captions in each language
#: (a language left out never appears in training). Add your own here or pass one as JSON.
PROFILES: dict[str, dict[str, float]] = {
    "default": {"en": 1.0, "de": 1.0, "fr": 1.0, "es": 1.0, "zh": 1.0, "it": 0.05, "pl": 0.05, "tr": 0.05},
    "all": {lang: 1.0 for lang in XTD_LANGS},
    "english-only": {"en": 1.0},
}

DONE_MARKER = "synth_scenes.done.json"
JPEG_QUALITY = 90
PALETTE = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 50), "yellow": (240, 220, 30),
           "black": (20, 20, 20), "white": (245, 245, 245), "purple": (130, 40, 170), "orange": (250, 140, 20)}
# Canonical two-group layouts that captions may also state as a relation between the groups.
ROW_CELLS, COLUMN_CELLS = (3, 5), (1, 7)
# Where the objects of a group sit inside its cell (fractions of the cell), and their radius.
GROUP_LAYOUT = {1: ((0.5, 0.5),), 2: ((0.27, 0.5), (0.73, 0.5)), 3: ((0.27, 0.3), (0.73, 0.3), (0.5, 0.74)),
                4: ((0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)),
                5: ((0.2, 0.2), (0.8, 0.2), (0.5, 0.5), (0.2, 0.8), (0.8, 0.8))}
GROUP_RADIUS = {1: 0.40, 2: 0.22, 3: 0.2, 4: 0.2, 5: 0.16}
SMALL_SCALE = 0.55


def _regular_star(points: int, inner: float) -> tuple[tuple[float, float], ...]:
    return tuple(((1.0 if k % 2 == 0 else inner) * math.cos(math.pi * k / points - math.pi / 2),
                  (1.0 if k % 2 == 0 else inner) * math.sin(math.pi * k / points - math.pi / 2))
                 for k in range(2 * points))


def _heart(steps: int = 24) -> tuple[tuple[float, float], ...]:
    ts = [2 * math.pi * k / steps for k in range(steps)]
    return tuple((16 * math.sin(t) ** 3 / 17,
                  -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17 - 0.1)
                 for t in ts)


_ARM = 0.33
#: Unit outlines (radius 1, centred) of the polygon shapes; circle and ellipse are drawn as ellipses.
POLYGONS = {
    "square": ((-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)),
    "triangle": ((0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)),
    "star": _regular_star(5, 0.42),
    "heart": _heart(),
    "cross": ((-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM), (_ARM, 1), (-_ARM, 1),
              (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)),
}
ELLIPSE_ASPECT = {"circle": 1.0, "ellipse": 0.5}


@dataclass(frozen=True)
class Scene:
    background: str
    groups: tuple[Group, ...]
    cells: tuple[int, ...]

    def key(self) -> tuple:
        """What the captions state: two scenes with the same key get the same captions."""
        return self.background, frozenset(zip(self.groups, self.cells))


def sample_scene(rng: random.Random) -> Scene:
    """1-3 distinct object groups in distinct cells; half the two-group scenes in a relation layout."""
    background = rng.choice(COLOURS)
    num_groups = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    if num_groups == 2 and rng.random() < 0.5:
        cells = rng.choice((ROW_CELLS, COLUMN_CELLS))
    else:
        cells = tuple(rng.sample(range(NUM_CELLS), num_groups))
    colours = [c for c in COLOURS if c != background]
    groups: list[Group] = []
    while len(groups) < num_groups:
        count = 1 if rng.random() < 0.5 else rng.randint(2, MAX_COUNT)
        group = Group(rng.choice(SHAPES), rng.choice(colours), rng.choice(SIZES), count)
        if group not in groups:
            groups.append(group)
    return Scene(background, tuple(groups), cells)


def descriptions(scene: Scene) -> list[Description]:
    """Every way the captions may describe ``scene``: by grid cells, and by relation where the layout is canonical."""
    placed = sorted(zip(scene.cells, scene.groups), key=lambda cg: cg[0])
    options = [Description(scene.background, tuple(Placed(g, cell=c) for c, g in placed))]
    cells = tuple(c for c, _ in placed)
    if cells in (ROW_CELLS, COLUMN_CELLS):
        (_, first), (_, second) = placed
        forward, backward = ("left_of", "right_of") if cells == ROW_CELLS else ("above", "below")
        options.append(Description(scene.background, (Placed(first, relation=forward, anchor=second),)))
        options.append(Description(scene.background, (Placed(second, relation=backward, anchor=first),)))
    return options


def make_captions(scene: Scene, langs: list[str], per_language: int, rng: random.Random) -> dict[str, list[str]]:
    """``per_language`` captions in each language; caption k says the same thing in every language."""
    options = descriptions(scene)
    chosen = [rng.choice(options) for _ in range(per_language)]
    captions = {}
    for lang in langs:
        n = num_templates(lang)
        templates = rng.sample(range(n), per_language) if per_language <= n else \
            [rng.randrange(n) for _ in range(per_language)]
        texts = [render_caption(lang, desc, t) for desc, t in zip(chosen, templates)]
        captions[lang] = list(dict.fromkeys(texts))
    return captions


class Painter:
    """Draws scenes cheaply: cached gradient backgrounds, PIL shapes, one pass of precomputed noise."""

    NUM_NOISE_TILES = 8
    GRADIENT = 40  # background brightness swing across the image

    def __init__(self, image_size: int, seed: int):
        self.size = image_size
        noise_rng = np.random.default_rng(seed)
        self.noise = (noise_rng.normal(0.0, 7.0, (self.NUM_NOISE_TILES, image_size, image_size, 3))
                      .round().astype(np.int16))
        ramp = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
        self.ramps = (np.zeros((image_size, image_size), np.float32), np.repeat(ramp[:, None], image_size, 1),
                      np.repeat(ramp[None, :], image_size, 0), (ramp[:, None] + ramp[None, :]) / 2)
        self._backgrounds: dict[tuple[str, int, int], Image.Image] = {}

    def background(self, colour: str, ramp: int, sign: int) -> Image.Image:
        key = (colour, ramp, sign)
        if key not in self._backgrounds:
            base = np.array(PALETTE[colour], np.float32) + sign * self.GRADIENT * self.ramps[ramp][..., None]
            self._backgrounds[key] = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        return self._backgrounds[key].copy()

    def paint(self, scene: Scene, rng: random.Random) -> bytes:
        img = self.background(scene.background, rng.randrange(len(self.ramps)), rng.choice((-1, 1)))
        draw = ImageDraw.Draw(img)
        cell = self.size / 3
        for group, index in zip(scene.groups, scene.cells):
            row, col = divmod(index, 3)
            radius = cell * GROUP_RADIUS[group.count] * (1.0 if group.size == "large" else SMALL_SCALE)
            base = PALETTE[group.colour]
            for fx, fy in GROUP_LAYOUT[group.count]:
                jitter = cell * 0.04
                cx = (col + fx) * cell + rng.uniform(-jitter, jitter)
                cy = (row + fy) * cell + rng.uniform(-jitter, jitter)
                fill = tuple(min(255, max(0, v + rng.randint(-12, 12))) for v in base)
                self._shape(draw, group.shape, cx, cy, radius, fill)
        noise = self.noise[rng.randrange(self.NUM_NOISE_TILES)]
        if rng.random() < 0.5:
            noise = noise[::-1]
        pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()

    @staticmethod
    def _shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
        if shape in ELLIPSE_ASPECT:
            ry = r * ELLIPSE_ASPECT[shape]
            draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=fill)
        else:
            draw.polygon([(cx + r * x, cy + r * y) for x, y in POLYGONS[shape]], fill=fill)


class SampleMaker:
    """Sample ``index`` of a split as a pure function of (seed, split, index), so workers agree."""

    def __init__(self, image_size: int, seed: int, profile: dict[str, float], captions_per_language: int,
                 exclude: frozenset = frozenset()):
        self.seed = seed
        self.painter = Painter(image_size, seed)
        self.profile = profile
        self.captions_per_language = captions_per_language
        self.exclude = exclude  # scene keys of the test split, kept out of training

    def __call__(self, split: str, index: int) -> tuple[str, bytes, dict[str, list[str]], tuple]:
        rng = random.Random(f"synth_scenes/{self.seed}/{split}/{index}")
        scene = sample_scene(rng)
        while scene.key() in self.exclude:
            scene = sample_scene(rng)
        if split == "test":
            langs, per_language = list(XTD_LANGS), 1
        else:
            langs = [lang for lang, p in self.profile.items() if p > 0 and rng.random() < p]
            per_language = self.captions_per_language
        captions = make_captions(scene, langs, per_language, rng)
        return f"synth_{split}_{index:06d}", self.painter.paint(scene, rng), captions, scene.key()


def resolve_profile(spec: str | dict[str, float]) -> tuple[str, dict[str, float]]:
    """A profile name, an inline JSON object or a dict → (name, {lang: fraction} for all 11 languages).

    Raises ``ValueError`` with a plain message on unknown names, languages or fractions.
    """
    name, given = parse_profile(spec, PROFILES, XTD_LANGS)
    return name, {**dict.fromkeys(XTD_LANGS, 0.0), **given}


def _profile_record(name: str, fractions: dict[str, float]) -> dict:
    return {"name": name, "fractions": fractions,
            "high": [lang for lang, p in fractions.items() if p == 1.0],
            "low": [lang for lang, p in fractions.items() if 0.0 < p < 1.0],
            "unseen": [lang for lang, p in fractions.items() if p == 0.0]}


def _write_test_split(test_dir: Path, maker_kwargs: dict, count: int, workers: int, progress: bool) -> tuple[dict, set]:
    keys: list[tuple] = []

    def first_captions():
        for key, jpeg, captions, scene_key in produce(SampleMaker, maker_kwargs, [("test", i) for i in range(count)],
                                                      workers, "test", progress):
            keys.append(scene_key)
            yield key, jpeg, {lang: captions[lang][0] for lang in XTD_LANGS}

    write_xtd_split(test_dir, first_captions(), XTD_LANGS)
    unique = distinct_fraction(keys)
    return {"num_images": count, "languages": list(XTD_LANGS), "unique_description_fraction": unique}, set(keys)


def generate(out_dir: str | Path, train_samples: int = 20000, test_samples: int = 1000, image_size: int = 128,
             profile: str | dict[str, float] = "default", seed: int = 0, shard_size: int = 1000,
             captions_per_language: int = 2, workers: int = 1, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Write the train shards and the XTD-style test split under ``out_dir``; return the summary.

    A finished ``out_dir`` made with the same settings is left as it is (the summary then has
    ``"skipped": True``); one made with other settings is refused (:class:`data_recipes.worlds.SettingsMismatch`, before
    anything is written) unless ``overwrite``.
    """
    profile_name, fractions = resolve_profile(profile)
    out = Path(out_dir)
    config = {"train_samples": train_samples, "test_samples": test_samples, "image_size": image_size,
              "profile": _profile_record(profile_name, fractions), "seed": seed, "shard_size": shard_size,
              "captions_per_language": captions_per_language, "jpeg_quality": JPEG_QUALITY}
    done = finished_summary(out, DONE_MARKER, config, overwrite, ("train", "test"), "a synthetic dataset")
    if done is not None:
        return done

    maker_kwargs = {"image_size": image_size, "seed": seed, "profile": fractions,
                    "captions_per_language": captions_per_language}
    test_summary, test_keys = _write_test_split(out / "test", maker_kwargs, test_samples, workers, progress)
    maker_kwargs["exclude"] = frozenset(test_keys)
    writer = CaptionShardWriter(out / "train", prefix="synth", max_count=shard_size)
    for key, jpeg, captions, _ in produce(SampleMaker, maker_kwargs, [("train", i) for i in range(train_samples)],
                                          workers, "train", progress):
        writer.write(key, jpeg, "jpg", captions, source="synth_scenes")
    generator = {k: config[k] for k in ("seed", "image_size", "captions_per_language", "jpeg_quality")}
    train_stats = writer.close(extra={"profile": config["profile"], "generator": {"name": "synth_scenes", **generator}})
    return mark_finished(out, DONE_MARKER, config, {"out_dir": str(out), "train": train_stats, "test": test_summary})


def _print_summary(summary: dict) -> None:
    train_langs = summary["train"]["languages"]
    state = "already complete, nothing done" if summary["skipped"] else "written"
    print(f"{summary['out_dir']}: {state}")
    print(f"train: {summary['train']['num_samples']} images in {summary['train']['num_shards']} shards; "
          f"test: {summary['test']['num_images']} images, "
          f"{summary['test']['unique_description_fraction']:.3f} with a unique description")
    print(f"{'lang':<6}{'train images':>14}{'train captions':>16}{'test captions':>15}")
    for lang in XTD_LANGS:
        stats = train_langs.get(lang, {"samples": 0, "captions": 0})
        print(f"{lang:<6}{stats['samples']:>14}{stats['captions']:>16}{summary['test']['num_images']:>15}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_recipes.synth_scenes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gets train/ and test/)")
    p.add_argument("--train-samples", type=at_least(1), default=20000, help="training images (default: %(default)s)")
    p.add_argument("--test-samples", type=at_least(1), default=1000,
                   help="test images, XTD10-style (default: %(default)s)")
    p.add_argument("--image-size", type=at_least(16), default=128, help="image side in pixels (default: %(default)s)")
    p.add_argument("--profile", default="default",
                   help=f"resource profile: one of {', '.join(PROFILES)}, or an inline JSON object "
                        "{lang: fraction of training images} (default: %(default)s: en de fr es zh on every "
                        "image, it pl tr on 5%%, ru ko ja never)")
    p.add_argument("--profile-file", help="JSON file holding a profile object; overrides --profile")
    p.add_argument("--captions-per-language", type=at_least(1), default=2,
                   help="captions per language per training image, in different templates (default: %(default)s)")
    add_world_arguments(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    profile = args.profile
    if args.profile_file:
        try:
            profile = json.loads(Path(args.profile_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"--profile-file: cannot read a JSON profile from {args.profile_file}: {err}")
    try:
        resolve_profile(profile)
    except ValueError as err:
        parser.error(f"--profile{'-file' if args.profile_file else ''}: {err}")
    try:
        check_output_dir(args.out, "--out")
    except OutputError as err:
        parser.error(str(err))
    try:
        summary = generate(args.out, train_samples=args.train_samples, test_samples=args.test_samples,
                           image_size=args.image_size, profile=profile, seed=args.seed, shard_size=args.shard_size,
                           captions_per_language=args.captions_per_language, workers=args.workers,
                           overwrite=args.overwrite, progress=not args.no_progress)
    except FileExistsError as err:
        parser.error(f"--out: {err}")
    except OutputError as err:
        parser.error(str(err))
    _print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
