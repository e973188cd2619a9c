"""What the search index costs and whether it tells the truth, measured in one run on one machine.

    HF_HUB_OFFLINE=1 python -m bench.search                       # both parts on the demo model (make demo first)
    HF_HUB_OFFLINE=1 python -m bench.search --parts indexing --model e5-small-vit-b32

- ``indexing``: ``--pictures`` photo-like JPEGs (``--long-side`` pixels) encoded twice with the same model: by the
  evaluators' ``encode_images`` (decode, preprocess, forward: the model's own throughput), then by
  ``python -m mclip_hbt.search index`` into a fresh index (the same, plus reading and hashing each file, the
  SQLite commits and the search graph). The index must cost under 10 % of the images/s. Then a re-run with
  nothing changed (a scan of sizes and time stamps) and one after touching 1 % of the files.
- ``parity``: on an XTD-layout split (default: the demo's emoji ``test_seen``), text→image R@10 per language as
  ``eval.xtd`` scores it, and the same queries through the index: every caption searched, a hit when its own
  picture is in the top 10. Exact search must give eval.xtd's figures; the approximate graph at least 0.98 of them.

Nearest-neighbour speed and recall at 10 k to 1 M vectors are ``bench/search_vectors.py``'s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_device_option, resolve_device, result_path, settings_for_json, textured_jpeg
from eval.benchmark_data import load_xtd_split
from eval.evaluate import evaluate_split
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.retrieval.models import load_retrieval_model
from mclip_hbt.runtime import machine_info, now_iso, package_versions
from mclip_hbt.search.indexing import index_folder, scan
from mclip_hbt.search.querying import SearchIndex

PARTS = ("indexing", "parity")
DEMO_MODEL = REPO_ROOT / "runs" / "demo" / "model"
DEMO_SPLIT = REPO_ROOT / "runs" / "data" / "emoji" / "test_seen"
#: The demo's high-resource languages, two low-resource, two unseen (one outside the encoder's pre-training).
PARITY_LANGS = "en,de,fr,es,zh,ja,ru,ar,pt,it,sw,am,hi,yo"


def write_pictures(folder: Path, count: int, long_side: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"photo_{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(textured_jpeg(rng, long_side))
        paths.append(path)
    return paths


def indexing(args: argparse.Namespace, model, work: Path) -> dict:
    pictures = work / "pictures"
    paths = write_pictures(pictures, args.pictures, args.long_side)
    model.encode_images(paths[: args.batch_size], batch_size=args.batch_size, num_workers=0, progress=False)  # warm
    started = time.perf_counter()
    model.encode_images(paths, batch_size=args.batch_size, num_workers=args.num_workers)
    encode_s = time.perf_counter() - started
    first = index_folder(pictures, work / "index", model, args.model, batch_size=args.batch_size,
                         num_workers=args.num_workers)
    unchanged = index_folder(pictures, work / "index", model, args.model, num_workers=args.num_workers)
    for path in paths[:: 100]:
        path.write_bytes(path.read_bytes() + b"\0")  # a changed file (JPEG decoders ignore trailing bytes)
    changed = index_folder(pictures, work / "index", model, args.model, batch_size=args.batch_size,
                           num_workers=args.num_workers)
    encode_rate, index_rate = args.pictures / encode_s, first.encoded / first.seconds
    result = {"pictures": args.pictures, "long_side": args.long_side,
              "encode_images_per_s": round(encode_rate, 2), "index_images_per_s": round(index_rate, 2),
              "index_cost_pct": round(100 * (1 - index_rate / encode_rate), 1),
              "index_bytes": sum(p.stat().st_size for p in (work / "index").iterdir()),
              "rerun_unchanged_s": round(unchanged.seconds, 2), "rerun_1pct_changed_s": round(changed.seconds, 2),
              "rerun_1pct_changed_encoded": changed.encoded, "scan_s": round(_timed(lambda: scan(pictures)), 3)}
    print(f"indexing {args.pictures} pictures: encode_images {encode_rate:.1f}/s, index {index_rate:.1f}/s "
          f"(the index costs {result['index_cost_pct']} %); re-run unchanged {unchanged.seconds:.1f} s, "
          f"1 % changed {changed.seconds:.1f} s ({changed.encoded} encoded)")
    return result


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def parity(args: argparse.Namespace, model, work: Path) -> dict:
    langs = args.langs.split(",")
    split = load_xtd_split(args.split, langs, dataset="emoji_seen")
    images = [args.split / "images" / name for name in split.image_names]
    scored = evaluate_split(split, model, langs=langs, image_paths=images, translate_test=False, batch_size=256,
                            image_batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                            progress=False)
    index_folder(args.split / "images", work / "parity-index", model, args.model, batch_size=args.batch_size,
                 num_workers=args.num_workers, progress=False)
    rows = {}
    for mode in ("exact", "approximate"):
        index = SearchIndex(work / "parity-index", model=model, mode=mode)
        for lang in langs:
            hits = index.search_texts(split.aligned[lang], 10)
            own = split.image_names
            found = [own[i] in {Path(h.path).name for h in top} for i, top in enumerate(hits)]
            rows.setdefault(lang, {})[f"index_{mode}_t2i_r@10"] = round(100 * float(np.mean(found)), 2)
    for lang in langs:
        rows[lang]["eval_xtd_t2i_r@10"] = round(100 * scored.summary["monolingual"][lang]["t2i_r@10"], 2)
    exact_equal = all(r["index_exact_t2i_r@10"] == r["eval_xtd_t2i_r@10"] for r in rows.values())
    worst = min(r["index_approximate_t2i_r@10"] / r["eval_xtd_t2i_r@10"] for r in rows.values()
                if r["eval_xtd_t2i_r@10"] > 0)
    print(f"{'lang':<5} {'eval.xtd':>9} {'exact':>9} {'approx':>9}")
    for lang, r in rows.items():
        print(f"{lang:<5} {r['eval_xtd_t2i_r@10']:>9.2f} {r['index_exact_t2i_r@10']:>9.2f} "
              f"{r['index_approximate_t2i_r@10']:>9.2f}")
    print(f"exact search equals eval.xtd in every language: {exact_equal}; approximate / eval.xtd, worst: {worst:.4f}")
    return {"split": str(args.split), "images": len(images), "languages": rows, "exact_equals_eval_xtd": exact_equal,
            "approximate_over_eval_xtd_worst": round(worst, 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--model", default=str(DEMO_MODEL), help="any --model the evaluators accept "
                        "(default: the demo's trained model, runs/demo/model)")
    parser.add_argument("--split", type=Path, default=DEMO_SPLIT, help="an XTD-layout split for the parity part "
                        "(default: the demo's emoji test_seen)")
    parser.add_argument("--langs", default=PARITY_LANGS, help="languages of the parity part")
    parser.add_argument("--pictures", type=int, default=2000, help="synthetic pictures of the indexing part")
    parser.add_argument("--long-side", type=int, default=640, help="their long side in pixels (a phone's preview)")
    parser.add_argument("--batch-size", type=int, default=64, help="pictures per forward pass")
    parser.add_argument("--num-workers", type=int, default=2, help="decoding processes")
    add_device_option(parser)
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/search_DEVICE.json)")
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        parser.error(f"--parts: give some of {', '.join(PARTS)}")
    if "parity" in parts and not (args.split / "images").is_dir():
        parser.error(f"--split: {args.split} has no images/ folder; run `make demo` for the emoji world's test_seen")
    model = load_retrieval_model(args.model, args.device)
    result = {"benchmark": "search", "created": now_iso(), "machine": machine_info(), "versions": package_versions(),
              "settings": settings_for_json(args), "threads": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as work:
        for part in parts:
            result[part] = (indexing if part == "indexing" else parity)(args, model, Path(work))
    out = result_path(args.out, "search", args.device)
    write_json_atomic(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
