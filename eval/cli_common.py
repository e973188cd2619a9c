"""Options and steps shared by the ``eval.xtd``, ``eval.m3c`` and ``eval.xflickrco`` command lines."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mclip_hbt.data.benchmark_images import overlap
from mclip_hbt.fileio import OutputError, check_output_dir, check_output_file, check_replaceable, parse_json
from mclip_hbt.languages import parse_lang_list
from mclip_hbt.model.clip import TRAIN_META_NAME
from mclip_hbt.offline.hub import ModelUnavailableError
from mclip_hbt.retrieval.models import SPEC_FORMS, RetrievalModel, load_retrieval_model
from mclip_hbt.retrieval.text_cache import TextFeatureCache
from mclip_hbt.runtime import now_iso, package_versions

from .benchmark_data import RetrievalSplit
from .evaluate import SplitResult, evaluate_split
from .metrics import NonFiniteEmbeddingsError
from .plots import LanguagePanel, plot_language_panels
from .results import is_records_folder, records_dir, save_output, write_results


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common_arguments(parser: argparse.ArgumentParser, retrieval: bool = True) -> None:
    """The evaluators' options; ``retrieval=False`` leaves out those of the retrieval settings (pools, text-only)."""
    parser.add_argument("--model", default="e5-small-vit-b32",
                        help=f"what to evaluate: {SPEC_FORMS} (default: %(default)s)")
    parser.add_argument("--lang", nargs="+", default=["all"],
                        help="'all' (default) or language codes, space- or comma-separated "
                             "(jp and ja both mean Japanese)")
    if retrieval:
        parser.add_argument("--pool-lang", nargs="+", default=["all"],
                            help="languages of the multilingual pools and the targets of the cross-lingual matrix: "
                                 "'all' (default: every --lang) or some of the --lang codes; their cost grows with "
                                 "the square of their number (100 languages make 100,000-caption pools), so a run "
                                 "over many languages can score every language alone and pool a subset")
        parser.add_argument("--text-only", action="store_true",
                            help="only the settings that need no images (cross-lingual matrix, multilingual caption "
                                 "pool)")
    else:
        parser.set_defaults(pool_lang=["all"], text_only=False)
    parser.add_argument("--translate-test", action="store_true",
                        help="score every language with the English text (the aligned English captions, or the "
                             "English names): the perfect translate-test upper bound for an English CLIP; "
                             "image-text settings only")
    parser.add_argument("--device", default=default_device(),
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per text batch (default: %(default)s)")
    parser.add_argument("--image-batch-size", type=int, default=64,
                        help="images per image batch (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=2,
                        help="image decoding worker processes (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write a per-language bar plot (PNG) here")
    parser.add_argument("--text-cache", type=Path, default=None,
                        help="folder of cached text-encoder outputs (mclip_hbt.retrieval.text_cache): models that "
                             "share a frozen text encoder (LiT runs, an alpha sweep, the untrained encoder) encode "
                             "each caption once; keyed by the encoder's weights and tokenizer, so a fine-tuned "
                             "encoder never reads another's features (default: no cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad values before any work starts."""
    for option in ("batch_size", "image_batch_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be 0 or more")
    if args.text_only and args.translate_test:
        parser.error("--translate-test scores images; it cannot be combined with --text-only")
    try:
        kind = torch.device(args.device).type
    except RuntimeError as e:
        parser.error(f"--device: {e}")
    if kind not in ("cpu", "cuda", "mps"):  # meta, xla, ...: no evaluator computes numbers there
        parser.error(f"--device {args.device}: evaluate on cpu, cuda or mps")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        parser.error("--plot must name a .png file")
    try:
        if args.text_cache is not None:
            check_output_dir(args.text_cache, "--text-cache")
        for option, path in (("--out", args.out), ("--plot", args.plot)):
            if path is not None:
                check_output_file(path, option)
        if args.out is not None:  # replaced whole by each run: only a folder of result records
            check_replaceable(records_dir(args.out), "--out", is_records_folder, flag=None)
    except OutputError as e:
        parser.error(str(e))


def parse_languages(parser: argparse.ArgumentParser, spec: list[str], available: list[str]) -> list[str]:
    """``--lang`` as canonical codes; 'all' = every language ``available``; unknown codes refused."""
    try:
        langs = parse_lang_list([code for item in spec for code in item.split(",")], default=available)
    except ValueError as e:
        parser.error(f"--lang: {e}")
    missing = [lang for lang in langs if lang not in available]
    if missing:
        parser.error(f"--lang: no captions for {', '.join(missing)} (available: {', '.join(available)})")
    if not langs:
        parser.error(f"--lang: no language given; name some (available: {', '.join(available)}) or 'all'")
    return langs


def parse_pool_languages(parser: argparse.ArgumentParser, spec: list[str], langs: list[str]) -> list[str]:
    """``--pool-lang`` as canonical codes in ``langs`` order; 'all' = ``langs``; codes outside ``--lang`` refused."""
    try:
        pool = set(parse_lang_list([code for item in spec for code in item.split(",")], default=langs))
    except ValueError as e:
        parser.error(f"--pool-lang: {e}")
    outside = sorted(pool - set(langs))
    if outside:
        parser.error(f"--pool-lang: {', '.join(outside)} not among the --lang languages")
    return [lang for lang in langs if lang in pool]


def select_languages(parser: argparse.ArgumentParser, args: argparse.Namespace, available: list[str],
                     text_only_needs_two: bool = True) -> list[str]:
    """``--lang`` (returned) and ``--pool-lang`` (set as ``args.pool_langs``) among ``available``; with
    ``text_only_needs_two``, refuse ``--text-only`` on one language (its settings compare languages)."""
    langs = parse_languages(parser, args.lang, available)
    args.pool_langs = parse_pool_languages(parser, args.pool_lang, langs)
    if text_only_needs_two and args.text_only and len(langs) < 2:
        parser.error("--text-only settings compare languages: give at least two with --lang")
    return langs


def languages_to_read(args: argparse.Namespace, langs: list[str], order: Sequence[str]) -> list[str]:
    """The caption files to read: ``langs``, and English under ``--translate-test`` (it stands in for every
    language), in the benchmark's ``order``."""
    return sorted(set(langs) | ({"en"} if args.translate_test else set()), key=list(order).index)


def load_model_or_exit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RetrievalModel:
    try:
        model = load_retrieval_model(args.model, args.device)
        train_meta(model)  # read now, so a damaged file stops the command before the evaluation, not after
    except ModelUnavailableError as e:
        parser.error(f"--model: {e}")
    if not model.supports_images and not args.text_only:
        has_text_only = any(action.dest == "text_only" for action in parser._actions)
        parser.error(f"--model {args.model} encodes text only; "
                     + ("add --text-only" if has_text_only else "give a model with an image tower"))
    return model


def evaluate_or_exit(parser: argparse.ArgumentParser, args: argparse.Namespace, split: RetrievalSplit,
                     model: RetrievalModel, langs: list[str], image_paths: list[Path] | None) -> SplitResult:
    """``evaluate_split`` with the command line's options; a model whose embeddings are NaN or
    infinite is one error line (exit status 1), not a traceback and not a score."""
    try:
        return evaluate_split(split, model, langs=langs, image_paths=image_paths, translate_test=args.translate_test,
                              batch_size=args.batch_size, image_batch_size=args.image_batch_size,
                              num_workers=args.num_workers, device=args.device, progress=not args.no_progress,
                              text_cache=TextFeatureCache(args.text_cache) if args.text_cache else None,
                              pool_langs=args.pool_langs)  # evaluate_split keeps those of this split
    except NonFiniteEmbeddingsError as e:
        parser.exit(1, f"{parser.prog}: error: --model {args.model}: {e}\n")


def train_meta(model: RetrievalModel) -> dict | None:
    """The trainer's ``train_meta.json`` (alpha, seed, steps, ...) when the model is a saved run."""
    if model.source_dir is None:
        return None
    path = model.source_dir / TRAIN_META_NAME
    if not path.is_file():
        return None
    try:
        meta = parse_json(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(
            f"{path} is damaged ({e}); restore it or delete it (it only describes the run)") from e
    if not isinstance(meta, dict):
        raise ModelUnavailableError(f"{path} is not a JSON object; restore it or delete it (it only describes the run)")
    return meta


#: The benchmark (``mclip_hbt.data.benchmark_images``) whose test images each evaluated split holds.
SPLIT_IMAGES_OF = {"xtd10": "xtd10", "mscoco-1k": "xtd10", "xflickrco": "xflickrco", "multi30k": "multi30k-test2016"}


def contamination(prog: str, splits: dict[str, RetrievalSplit], train: dict | None) -> dict:
    """Per split, how many of its images the model trained on (``benchmark_images.overlap``); a warning on
    stderr for every split with any, or whose count is unknown for a model trained here."""
    found = {}
    record = None if train is None else train.get("benchmark_images")
    for name, split in splits.items():
        found[name] = overlap(split.image_names, SPLIT_IMAGES_OF.get(split.dataset, split.dataset), record)
        hits = found[name]["trained_on"]
        if hits:
            print(f"{prog}: warning: the model trained on {hits} of the {len(split.image_names)} test images of "
                  f"{name} (e.g. {', '.join(found[name]['examples'])}); its scores there are not zero-shot",
                  file=sys.stderr)
        elif train is not None and not found[name]["known"]:
            print(f"{prog}: warning: cannot tell whether the model trained on {name}'s test images: "
                  f"{found[name]['note']}", file=sys.stderr)
    return found


def run_meta(args: argparse.Namespace, parser: argparse.ArgumentParser, model: RetrievalModel, benchmark: str,
             langs: list[str], splits: dict[str, RetrievalSplit], unreadable_images: list[Path],
             started: float) -> dict:
    """The result JSON's ``meta``; ``splits`` by name (``{benchmark: split}`` for xtd and xflickrco, M3C's parts)."""
    n_images = {name: len(s.image_names) for name, s in splits.items()}
    train = train_meta(model)
    meta = {"benchmark": benchmark, "model": args.model, "model_name": model.name, "pretrained": model.pretrained,
            "languages": langs, "pool_languages": args.pool_langs,
            "n_images": n_images[benchmark] if list(splits) == [benchmark] else n_images,
            "n_unreadable_images": len(unreadable_images),
            "unreadable_images": [str(p) for p in unreadable_images], "device": str(args.device),
            "seconds": round(time.perf_counter() - started, 2), "date": now_iso(), "versions": package_versions(),
            "text_only": bool(args.text_only), "translate_test": bool(args.translate_test),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "contamination": contamination(parser.prog, splits, train)}
    if train is not None:
        meta["train"] = train
    return meta


def write_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace, records: list[dict], summary: dict,
                  meta: dict, panels: Callable[[], Sequence[LanguagePanel]]) -> int:
    """The result JSON (``--out``) and the plot of ``panels()`` (``--plot``); the exit status: 1 when one of
    them could not be written (the message says why), else 0."""
    written = []
    if args.out:
        written.append(save_output(parser.prog, "results", args.out,
                                   lambda: write_results(args.out, records, summary, meta)))
    if args.plot:
        written.append(save_output(parser.prog, "plot", args.plot, lambda: plot_language_panels(panels(), args.plot)))
    return 0 if all(written) else 1
