"""Search a picture folder in any language with a trained model (or any model ``--model`` accepts).

    python -m mclip_hbt.search index PICTURES --model runs/demo/model --out my-index
    python -m mclip_hbt.search query my-index "ein rotes Herz" --also "cœur rouge" --also "赤いハート" -k 10
    python -m mclip_hbt.search serve my-index            # http://127.0.0.1:8000
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from mclip_hbt.fileio import OutputError, check_replaceable, write_text_atomic
from mclip_hbt.offline.hub import ModelUnavailableError
from mclip_hbt.retrieval.models import SPEC_FORMS, load_retrieval_model

from .catalog import Catalog, is_index
from .indexing import index_folder
from .querying import MAX_K, QueryError, SearchIndex, agreement_summary
from .vectors import SEARCH_MODES

SKIPPED_LIST = "skipped.tsv"
SKIPPED_SHOWN = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mclip_hbt.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="index a folder of pictures (again: only what changed)")
    index.add_argument("images", type=Path, help="the folder of pictures (jpg, png, webp, gif), searched recursively")
    index.add_argument("--out", type=Path, required=True, help="the index folder (made, or brought up to date)")
    index.add_argument("--batch-size", type=int, default=64, help="pictures per forward pass (default 64)")
    index.add_argument("--num-workers", type=int, default=2, help="processes decoding pictures (default 2)")
    index.add_argument("--commit-every", type=int, default=512,
                       help="pictures per committed batch: a killed run loses at most this many (default 512)")
    index.add_argument("--no-progress", action="store_true", help="no progress bars")

    query = commands.add_parser("query", help="search an index by text (in several languages) or by a picture")
    query.add_argument("index", type=Path, help="an index folder")
    query.add_argument("text", nargs="?", help="what to look for, in any language")
    query.add_argument("--also", action="append", default=[], metavar="TEXT",
                       help="the same query in another language (repeatable): each one's top k and how far they agree")
    query.add_argument("--image", type=Path, help="a picture to find similar ones to, instead of a text")
    query.add_argument("-k", type=int, default=10, help=f"results per query, 1 to {MAX_K} (default 10)")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")

    serve = commands.add_parser("serve", help="the search page in a browser")
    serve.add_argument("index", type=Path, help="an index folder")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to others)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")

    for sub in (index, query, serve):
        sub.add_argument("--model", help=f"the model: {SPEC_FORMS}. Required for a new index; afterwards the index's "
                                         "own, and any other is refused")
        sub.add_argument("--device", default="cpu", help="torch device (default cpu)")
    for sub in (query, serve):
        sub.add_argument("--search", choices=SEARCH_MODES, default="auto",
                         help="exact (every vector), approximate (the inverted file) or auto: exact for small indexes "
                              "(default)")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad arguments before any model is loaded."""
    if args.command == "index":
        if not args.images.is_dir():
            parser.error(f"{args.images} is not a folder of pictures")
        for name in ("batch_size", "commit_every"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be 1 or more")
        if args.num_workers < 0:
            parser.error("--num-workers must be 0 or more")
        check_replaceable(args.out, "--out", is_index, flag=None)
        if args.model is None and not is_index(args.out):
            parser.error("--model is required to start a new index")
        return
    if not is_index(args.index):
        parser.error(f"{args.index} is not a search index; build one with `python -m mclip_hbt.search index`")
    if args.command == "query":
        if (args.text is None) == (args.image is None):
            parser.error("give a text to search for, or --image PATH (one of the two)")
        if args.image is not None and args.also:
            parser.error("--also phrases a text query in other languages; it does not go with --image")
        if not 1 <= args.k <= MAX_K:
            parser.error(f"-k must be between 1 and {MAX_K}")
    if args.command == "serve" and not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")


def run_index(args: argparse.Namespace) -> int:
    spec = args.model
    if spec is None:
        with Catalog(args.out, readonly=True) as catalog:
            spec = catalog.model.spec
    model = load_retrieval_model(spec, args.device)
    if not model.supports_images:
        raise ModelUnavailableError(f"{spec} encodes text only; an index needs a model with an image tower")
    report = index_folder(args.images, args.out, model, spec, batch_size=args.batch_size,
                          num_workers=args.num_workers, commit_every=args.commit_every, progress=not args.no_progress)
    write_text_atomic(args.out / SKIPPED_LIST, "".join(f"{path}\t{reason}\n" for path, reason in report.skipped))
    rate = report.encoded / report.seconds if report.seconds else 0.0
    print(f"{args.out}: {report.images} pictures indexed; this run encoded {report.encoded} ({rate:.1f}/s), "
          f"removed {report.removed}, kept {report.unchanged} unchanged, in {report.seconds:.1f} s")
    if report.skipped:
        print(f"{len(report.skipped)} file(s) skipped (not readable as pictures), listed in "
              f"{args.out / SKIPPED_LIST}:")
        for path, reason in report.skipped[:SKIPPED_SHOWN]:
            print(f"  {path}: {reason}")
    return 0


def open_index(args: argparse.Namespace) -> SearchIndex:
    return SearchIndex(args.index, model_spec=args.model, mode=args.search, device=args.device)


def print_table(title: str, hits) -> None:
    print(title)
    for rank, hit in enumerate(hits, 1):
        print(f"  {rank:>3}  {hit.score:6.3f}  {hit.path}")


def run_query(args: argparse.Namespace) -> int:
    index = open_index(args)
    if args.image is not None:
        hits = index.by_image_file(args.image, args.k)
        if args.json:
            print(json.dumps({"image": str(args.image), "k": args.k, "hits": [asdict(h) for h in hits]},
                             ensure_ascii=False))
        else:
            print_table(f"like {args.image} — top {args.k} of {len(index)} ({index.mode} search)", hits)
        return 0
    texts = [args.text, *args.also]
    hits, pairs = index.by_texts(texts, args.k)
    agreement = agreement_summary(hits, pairs)
    if args.json:
        print(json.dumps({"k": args.k, "search": index.mode, "queries": [
            {"query": t, "hits": [asdict(h) for h in found]} for t, found in zip(texts, hits)],
            "agreement": agreement}, ensure_ascii=False))
        return 0
    for text, found in zip(texts, hits):
        print_table(f"{text!r} — top {args.k} of {len(index)} ({index.mode} search)", found)
    if agreement:
        print(f"agreement of the phrasings (overlap@{args.k}: share of the top {args.k} in common; rank correlation: "
              "Spearman over the pictures either found):")
        for pair in agreement["pairs"]:
            rho = "—" if pair["rank_correlation"] is None else f"{pair['rank_correlation']:.2f}"
            print(f"  {texts[pair['a']]!r} ~ {texts[pair['b']]!r}: overlap {pair['overlap']:.0%}, "
                  f"rank correlation {rho}")
        print(f"  in every top {args.k}: {len(agreement['shared'])}; mean overlap {agreement['mean_overlap']:.0%}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .server import create_app
    index = open_index(args)
    app = create_app(index, model_name=index.catalog.model.spec)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: other machines can reach the page and the indexed pictures",
              file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(parser, args)
        return {"index": run_index, "query": run_query, "serve": run_serve}[args.command](args)
    except ModelUnavailableError as err:
        parser.error(f"--model: {err}")
    except (QueryError, OutputError) as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
