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

Each split also holds ``classes.json``: its concepts, their names in every evaluated language and the concepts of
each picture, for zero-shot classification (``eval.zeroshot``).

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
import itertools
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from babel.lists import format_list

from data_recipes.emoji_render import (
    EMOJI_COUNT_WEIGHTS,
    EMOJI_COUNTS,
    JPEG_QUALITY,
    Painter,
    Picture,
    draw_picture,
    renderable,
)
from data_recipes.emoji_sources import (
    CLDR_SYSTEM_DIR,
    CLDR_URL,
    FONT_SYSTEM_FILE,
    FONT_URL,
    Annotation,
    EmojiDataError,
    download,
    locate_cldr,
    locate_font,
    read_all_annotations,
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
from mclip_hbt.fileio import check_output_dir, write_json_atomic
from mclip_hbt.languages import PRETRAINING_SOURCE, language_name, parse_lang_list, pretraining_status

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
#: Beside each test split: its concepts, their names per language and each picture's concepts (``class_table``).
CLASSES_FILE = "classes.json"


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


def class_table(classes: tuple[str, ...], pictures: list[Picture],
                annotations: dict[str, dict[str, Annotation]]) -> dict:
    """What zero-shot classification (``eval.zeroshot``) reads beside a test split: its concepts, each one's CLDR
    name in every evaluated language, and the concepts of each picture (line-aligned with the image names)."""
    index = {emoji: i for i, emoji in enumerate(classes)}
    return {"classes": list(classes),
            "names": {lang: [names[emoji].name for emoji in classes] for lang, names in annotations.items()},
            "labels": [[index[p.emoji] for p in picture.emoji] for picture in pictures]}


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
        write_json_atomic(out / split / CLASSES_FILE, class_table(pool_of(concepts, split), pictures, evaluated))
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
