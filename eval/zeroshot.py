"""Zero-shot classification in every language: each test picture among all concept names of language X.

The Babel-ImageNet idea on the emoji world: a split's ``classes.json`` (``data_recipes.emoji_world``) names each of
its concepts in every evaluated language (CLDR short names, written by native speakers) and says which concepts
each picture shows. A picture is classified among all the split's concepts by the cosine of its embedding with each
name's; only pictures of one emoji are scored (a picture of two has two right answers). Names are used as they are:
CLDR gives no prompt templates, and no hand-written template exists for most of these languages, so every language
is scored alike, on its names alone.

    python -m eval.zeroshot --model runs/demo/model --split runs/data/emoji/test_seen --lang all --out zs.json
    python -m eval.zeroshot --model open_clip:ViT-B-32:openai --split ... --translate-test   # English names for all

Per language: top-1 and top-5 accuracy and the mean per-class recall (CLIP_benchmark's ``acc1``, ``acc5``,
``mean_per_class_recall``), one CLIP_benchmark record per language (task ``zeroshot_classification``). Ties count
against the model, so a model whose embeddings are all alike scores 0, never chance or better.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mclip_hbt.data.images import ImageFinder
from mclip_hbt.fileio import parse_json
from mclip_hbt.retrieval.models import RetrievalModel
from mclip_hbt.retrieval.text_cache import TextFeatureCache

from .cli_common import (
    add_common_arguments,
    check_common_arguments,
    load_model_or_exit,
    parse_languages,
    train_meta,
    write_outputs,
)
from .metrics import NonFiniteEmbeddingsError, check_finite
from .plots import LanguagePanel

CLASSES_FILE = "classes.json"
TOP_K = (1, 5)
TIE = 1e-5


class ClassTableError(ValueError):
    """A split without a usable ``classes.json``; the message says how to get one."""


def read_class_table(split: Path) -> tuple[list[str], dict[str, list[str]], list[int], list[str]]:
    """(concepts, names per language, the label of each one-emoji picture, those pictures' file names)."""
    path = split / CLASSES_FILE
    fix = ("make the split with python -m data_recipes.emoji_world (its test splits hold classes.json), or run "
           "`make demo` again")
    try:
        table = parse_json(path.read_bytes())
        names_file = (split / "test_image_names.txt").read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ClassTableError(f"--split: {err.filename} not found: {fix}") from None
    except (OSError, ValueError) as err:
        raise ClassTableError(f"--split: {path} cannot be read ({err}): {fix}") from None
    try:
        classes, names, labels = table["classes"], table["names"], table["labels"]
        image_names = names_file.split()
        if len(labels) != len(image_names) or any(len(n) != len(classes) for n in names.values()):
            raise ValueError("its labels or names do not match the split's pictures and concepts")
        single = [(i, int(picture[0])) for i, picture in enumerate(labels) if len(picture) == 1]
        if any(not 0 <= label < len(classes) for _, label in single):
            raise ValueError("a label is outside the list of concepts")
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ClassTableError(f"--split: {path} is not a class table ({err}): {fix}") from None
    return classes, names, [label for _, label in single], [image_names[i] for i, _ in single]


def classification_scores(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-k accuracy and mean per-class recall of classifying each image by its most similar class embedding.

    The true class's rank counts every class scoring at least as high as it (itself included), so a tie is
    resolved against the model and identical embeddings rank every true class last. Scores within ``TIE`` of the
    true one count as ties: cosines of identical vectors computed in different matmul blocks differ in the last
    bits, which would otherwise hand a constant model lucky wins."""
    check_finite(image_emb, "image")
    check_finite(class_emb, "class name")
    scores = image_emb @ class_emb.T
    true = scores.gather(1, labels[:, None])
    rank = (scores >= true - TIE).sum(1)
    out = {f"acc{k}": (rank <= k).float().mean().item() for k in TOP_K}
    hit = (rank == 1).float()
    out["mean_per_class_recall"] = statistics.fmean(hit[labels == c].mean().item() for c in labels.unique())
    return out


def evaluate(model: RetrievalModel, classes_names: dict[str, list[str]], langs: list[str], image_paths: list[Path],
             labels: list[int], args: argparse.Namespace) -> tuple[dict[str, dict], list[Path]]:
    """Per language, the scores of classifying the pictures among that language's names (English's with
    ``--translate-test``); the pictures that could not be read (scored as misses)."""
    image_emb, unreadable = model.encode_images(image_paths, batch_size=args.image_batch_size,
                                                num_workers=args.num_workers, progress=not args.no_progress)
    image_emb[unreadable] = 0.0  # scores 0 against every name: its true class ties with every other, a miss
    label_tensor = torch.tensor(labels)
    cache = TextFeatureCache(args.text_cache) if args.text_cache else None
    summary = {}
    for lang in langs:
        names = classes_names["en" if args.translate_test else lang]
        class_emb = model.encode_texts(names, batch_size=args.batch_size, progress=False, cache=cache)
        summary[lang] = classification_scores(image_emb, class_emb, label_tensor)
    return summary, [p for p, bad in zip(image_paths, unreadable.tolist()) if bad]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.zeroshot", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, retrieval=False)
    parser.add_argument("--split", type=Path, required=True,
                        help="a test split with classes.json and images/ (the emoji world's test_seen, test_unseen)")
    parser.add_argument("--dataset", default=None,
                        help="dataset name in the result records (default: emoji_ + the split folder's name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    try:
        classes, names, labels, image_names = read_class_table(args.split)
    except ClassTableError as err:
        parser.error(str(err))
    langs = parse_languages(parser, args.lang, list(names))
    if args.translate_test and "en" not in names:
        parser.error("--translate-test needs English names in the split's classes.json")
    finder = ImageFinder(args.split / "images")
    image_paths = [finder.find(name) for name in image_names]
    missing = [name for name, path in zip(image_names, image_paths) if path is None]
    if missing:
        parser.error(f"--split: {len(missing)} picture(s) missing from {args.split / 'images'}, e.g. {missing[0]}")
    dataset = args.dataset or f"emoji_{args.split.name.removeprefix('test_')}"
    model = load_model_or_exit(parser, args)
    try:
        summary, unreadable = evaluate(model, names, langs, image_paths, labels, args)
    except NonFiniteEmbeddingsError as err:
        parser.exit(1, f"{parser.prog}: error: --model {args.model}: {err}\n")
    records = [{"dataset": dataset, "model": model.name, "pretrained": model.pretrained,
                "task": "zeroshot_classification", "language": lang, "metrics": scores}
               for lang, scores in summary.items()]
    meta = {"benchmark": dataset, "model": args.model, "model_name": model.name, "pretrained": model.pretrained,
            "languages": langs, "n_classes": len(classes), "n_images": len(image_paths),
            "chance_acc1": 1 / len(classes), "n_unreadable_images": len(unreadable),
            "unreadable_images": [str(p) for p in unreadable], "translate_test": bool(args.translate_test),
            "prompts": "class names only (CLDR gives no templates)", "device": str(args.device),
            "seconds": round(time.perf_counter() - started, 2)}
    train = train_meta(model)
    if train is not None:  # what eval.report reads a run's alpha and seed from
        meta["train"] = train
    print(f"{dataset} zero-shot classification — {args.model}: {len(image_paths)} one-emoji pictures, "
          f"{len(classes)} classes (chance top-1 {100 / len(classes):.2f} %)")
    print(f"{'lang':<8}{'top-1':>8}{'top-5':>8}{'per-class':>11}")
    for lang, scores in summary.items():
        print(f"{lang:<8}{scores['acc1'] * 100:>8.1f}{scores['acc5'] * 100:>8.1f}"
              f"{scores['mean_per_class_recall'] * 100:>11.1f}")
    return write_outputs(parser, args, records, {"zeroshot_classification": summary}, meta, lambda: [
        LanguagePanel(title=f"{dataset}: zero-shot top-1 accuracy", ylabel="top-1 accuracy (%)",
                      ours_label=model.name, ours={lang: s["acc1"] for lang, s in summary.items()})])


if __name__ == "__main__":
    raise SystemExit(main())
