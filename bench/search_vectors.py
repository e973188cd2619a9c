"""Vector search for the image-search index: exact numpy, faiss (flat and HNSW) and usearch (HNSW), measured.

For each size N the benchmark makes N L2-normalised float32 vectors and ``--queries`` queries from the
same distribution (not in the base). The main set is CLUSTERED, like real image embeddings: N/100
Gaussian clusters around random unit centres, with noise whose per-dimension variance decays as a power
law (``--noise-decay``; intrinsic dimension ~25 at the default, as CLIP-like embeddings have) and total
norm ``--noise-scale``, then L2-normalised. A query's exact top 10 are then cluster mates at cosine
~0.75 against ~0 for a random vector, so nearest neighbours mean something; ``--distribution uniform``
(random points on the sphere, the hardest case for a graph index) is there for comparison.

Each method is timed the way a search page uses it: build (add every vector), the index's own size
(serialized bytes; usearch's ``memory_usage`` too) and the growth of this process's RSS while building,
single-query latency p50/p99 over the queries one at a time, throughput of all queries in one call, and
recall@10 against exact search. Methods: numpy exact (rclip's approach: one float32 matrix, ``base @ q``,
argpartition top 10; also the ground truth), faiss ``IndexFlatIP`` (exact), faiss ``IndexHNSWFlat`` (inner
product) and usearch HNSW (``metric="ip"``, f32 / f16 / i8 storage). The HNSW methods are built once per
size and searched at every ``--ef-search`` (faiss efSearch, usearch expansion_search); the smallest one
that reaches ``--target-recall`` is the row's setting. ``--crossover-sizes`` are small sizes where exact
and HNSW latency are compared, to find the size below which exact search is as fast as the approximate one.

    pip install -e '.[search]' usearch     # faiss comes with the search extra; usearch only for its rows here
    python -m bench.search_vectors
    python -m bench.search_vectors --sizes 10000,100000 --crossover-sizes 1000,5000  # a quick run
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import faiss
import numpy as np
import threadpoolctl
from tqdm import tqdm
from usearch.index import Index

from bench.common import result_path, settings_for_json
from bench.search_vector_data import K, data_stats, make_vectors
from bench.search_vector_report import (
    EXACT_METHODS,
    HNSW_METHODS,
    IVF_METHODS,
    conclusion,
    print_conclusion,
    print_table,
)
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.runtime import machine_info, now_iso

#: The largest float32 score block (queries × N) the batched exact search holds at once.
SCORE_BLOCK_BYTES = 1 << 28


# ------------------------------------------------------------------------------ methods

@dataclass
class Method:
    name: str
    params: dict
    build: Callable[[np.ndarray, int], object]  # (base, chunk) -> index, adding ``chunk`` vectors at a time
    search_one: Callable[[object, np.ndarray], np.ndarray]  # one query (d,) -> K ids
    search_batch: Callable[[object, np.ndarray], np.ndarray]  # queries (q, d) -> (q, K) ids
    index_bytes: Callable[[object], dict]
    set_ef: Callable[[object, int], None] | None = None  # None: exact, nothing to tune


def chunks(n: int, chunk: int, desc: str):
    return tqdm(range(0, n, chunk), desc=desc, unit="chunk", leave=False)


def numpy_topk(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top K by inner product, sorted, in blocks of queries that bound the score matrix's memory."""
    out = np.empty((len(queries), K), np.int64)
    step = max(1, SCORE_BLOCK_BYTES // (4 * len(base)))
    for s in range(0, len(queries), step):
        scores = queries[s:s + step] @ base.T
        top = np.argpartition(scores, -K, axis=1)[:, -K:]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[s:s + step] = np.take_along_axis(top, order, axis=1)
    return out


def numpy_one(base: np.ndarray, q: np.ndarray) -> np.ndarray:
    scores = base @ q
    top = np.argpartition(scores, -K)[-K:]
    return top[np.argsort(-scores[top])]


def numpy_build(base: np.ndarray, chunk: int) -> np.ndarray:
    """A copy of the vectors: what loading rclip-style stored embeddings into one matrix costs."""
    out = np.empty_like(base)
    for s in chunks(len(base), chunk, "numpy copy"):
        out[s:s + chunk] = base[s:s + chunk]
    return out


def faiss_add(index, base: np.ndarray, chunk: int, desc: str):
    for s in chunks(len(base), chunk, desc):
        index.add(base[s:s + chunk])
    return index


def faiss_bytes(index) -> dict:
    return {"index_bytes": int(faiss.serialize_index(index).nbytes)}


def faiss_hnsw_index(dim: int, m: int, ef_construction: int):
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def faiss_set_ef(index, ef: int) -> None:
    index.hnsw.efSearch = ef


def faiss_ivf_build(args: argparse.Namespace) -> Callable[[np.ndarray, int], object]:
    def build(base: np.ndarray, chunk: int):
        lists = ivf_lists(len(base), args.ivf_lists_per_sqrt)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(base.shape[1]), base.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).permutation(len(base))[:args.ivf_train_per_list * lists]
        index.train(base[np.sort(sample)])
        return faiss_add(index, base, chunk, "faiss ivf add")
    return build


def ivf_lists(n: int, per_sqrt: float) -> int:
    """Inverted lists for n vectors: per_sqrt·√n (faiss's guidance is 4–16·√n), at least 39 vectors each."""
    return max(1, min(int(per_sqrt * math.sqrt(n)), n // 39))


def faiss_set_nprobe(index, nprobe: int) -> None:
    index.nprobe = nprobe


def usearch_build(args: argparse.Namespace, dtype: str) -> Callable[[np.ndarray, int], Index]:
    def build(base: np.ndarray, chunk: int) -> Index:
        # i8 under "ip" casts the raw components (~±0.05 for unit vectors) and loses more recall than under
        # "cos", which normalises before scaling to ±127; on unit vectors the two rank alike.
        index = Index(ndim=base.shape[1], metric="cos" if dtype == "i8" else "ip", dtype=dtype,
                      connectivity=args.usearch_connectivity, expansion_add=args.usearch_expansion_add)
        for s in chunks(len(base), chunk, f"usearch {dtype} add"):
            index.add(np.arange(s, min(s + chunk, len(base)), dtype=np.uint64), base[s:s + chunk],
                      threads=args.threads)
        return index
    return build


def usearch_set_ef(index: Index, ef: int) -> None:
    index.expansion_search = ef


def methods(args: argparse.Namespace) -> dict[str, Method]:
    threads = args.threads
    faiss_params = {"M": args.faiss_m, "efConstruction": args.faiss_ef_construction}
    usearch_params = {"connectivity": args.usearch_connectivity, "expansion_add": args.usearch_expansion_add}
    table = {
        "numpy-exact": Method("numpy-exact", {}, numpy_build, numpy_one, numpy_topk,
                              lambda base: {"index_bytes": int(base.nbytes)}),
        "faiss-flat": Method("faiss-flat", {},
                             lambda base, chunk: faiss_add(faiss.IndexFlatIP(base.shape[1]), base, chunk,
                                                           "faiss flat add"),
                             lambda index, q: index.search(q[None], K)[1][0],
                             lambda index, qs: index.search(qs, K)[1], faiss_bytes),
        "faiss-hnsw": Method("faiss-hnsw", faiss_params,
                             lambda base, chunk: faiss_add(faiss_hnsw_index(base.shape[1], args.faiss_m,
                                                                            args.faiss_ef_construction),
                                                           base, chunk, "faiss hnsw add"),
                             lambda index, q: index.search(q[None], K)[1][0],
                             lambda index, qs: index.search(qs, K)[1], faiss_bytes, faiss_set_ef),
        "faiss-ivf": Method("faiss-ivf", {"lists_per_sqrt_N": args.ivf_lists_per_sqrt,
                                          "train_per_list": args.ivf_train_per_list},
                            faiss_ivf_build(args), lambda index, q: index.search(q[None], K)[1][0],
                            lambda index, qs: index.search(qs, K)[1], faiss_bytes, faiss_set_nprobe),
    }
    for dtype in ("f32", "f16", "i8"):
        table[f"usearch-{dtype}"] = Method(
            f"usearch-{dtype}", {**usearch_params, "dtype": dtype, "metric": "cos" if dtype == "i8" else "ip"},
            usearch_build(args, dtype),
            lambda index, q: index.search(q, K, threads=args.latency_threads).keys,
            lambda index, qs: index.search(qs, K, threads=threads).keys,
            lambda index: {"index_bytes": int(index.serialized_length), "memory_usage": int(index.memory_usage)},
            usearch_set_ef)
    return table


# ------------------------------------------------------------------------------ measuring

def rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux >= 4.0), so that it tells the peak of the next step."""
    Path("/proc/self/clear_refs").write_text("5")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def latency_ms(args: argparse.Namespace, method: Method, index, queries: np.ndarray, desc: str | None) -> dict:
    """p50 / p99 over the queries one at a time with ``--latency-threads`` threads, after a few warm-up
    queries; a progress bar when ``desc`` is given."""
    faiss.omp_set_num_threads(args.latency_threads)
    with threadpoolctl.threadpool_limits(args.latency_threads):
        for q in queries[:5]:
            method.search_one(index, q)
        times = np.empty(len(queries))
        for i, q in enumerate(tqdm(queries, desc=desc, unit="query", leave=False, disable=desc is None)):
            start = time.perf_counter()
            method.search_one(index, q)
            times[i] = time.perf_counter() - start
    faiss.omp_set_num_threads(args.threads)
    return {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4), "latency_queries": len(queries)}


def batch_run(method: Method, index, queries: np.ndarray) -> tuple[dict, np.ndarray]:
    method.search_batch(index, queries[:8])  # warm-up: thread pools
    start = time.perf_counter()
    found = method.search_batch(index, queries)
    seconds = time.perf_counter() - start
    return {"batch_s": round(seconds, 4), "batch_qps": round(len(queries) / seconds, 1)}, np.asarray(found)


def measure(args: argparse.Namespace, method: Method, base: np.ndarray, queries: np.ndarray,
            truth: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """Build, size, latency, throughput and recall of one method on one data set; returns the row and the
    batch's ids (for numpy-exact: the ground truth)."""
    gc.collect()
    rss_before = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    index = method.build(base, args.add_chunk)
    build_s = time.perf_counter() - start
    row = {"N": len(base), "method": method.name, "params": method.params, "build_s": round(build_s, 3),
           "vectors_per_s": round(len(base) / build_s, 1), "rss_growth_bytes": rss_bytes() - rss_before,
           "rss_peak_growth_bytes": rss_bytes("VmHWM") - rss_before, **method.index_bytes(index)}
    if method.set_ef is None:
        lat_queries = queries[:args.exact_latency_queries]
        row.update(latency_ms(args, method, index, lat_queries, f"{method.name} N={len(base)}"))
        batch, found = batch_run(method, index, queries)
        row.update(batch, recall_at_10=round(recall(found, truth), 4) if truth is not None else 1.0)
    else:
        sweep = []
        for ef in args.ef_search:
            method.set_ef(index, ef)
            point = {"ef_search": ef, **latency_ms(args, method, index, queries, None)}
            batch, found = batch_run(method, index, queries)
            point.update(batch, recall_at_10=round(recall(found, truth), 4))
            sweep.append(point)
            print(f"  {method.name:12s} N={len(base):>9,} ef={ef:<4d} recall@10 {point['recall_at_10']:.4f}  "
                  f"p50 {point['p50_ms']:.3f} ms  p99 {point['p99_ms']:.3f} ms  {point['batch_qps']:,.0f} q/s")
        good = [p for p in sweep if p["recall_at_10"] >= args.target_recall]
        chosen = min(good, key=lambda p: p["ef_search"]) if good else max(sweep, key=lambda p: p["recall_at_10"])
        row.update(chosen, meets_target_recall=bool(good), sweep=sweep)
    del index
    gc.collect()
    return row, found


# ------------------------------------------------------------------------------ main

def int_list(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.search_vectors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int_list, default=[10_000, 100_000, 1_000_000],
                        help="comma-separated base sizes N measured with every --methods method")
    parser.add_argument("--crossover-sizes", type=int_list, default=[500, 1_000, 2_000, 5_000, 20_000, 50_000],
                        help="extra small sizes, measured with --crossover-methods only, for the exact/HNSW crossover")
    parser.add_argument("--methods", default=",".join(EXACT_METHODS + HNSW_METHODS),
                        help="comma-separated methods at --sizes (numpy-exact always runs: it is the ground truth)")
    parser.add_argument("--large-methods", default="numpy-exact,faiss-flat,faiss-hnsw,usearch-f16",
                        help="comma-separated methods at sizes >= --large-from: an HNSW build of 1M vectors takes "
                             "minutes on 2 cores, and usearch-f32 / -i8 lose to -f16 at 100k (as slow or slower, "
                             "larger or below the target recall)")
    parser.add_argument("--large-from", type=int, default=500_000, help="the smallest size --large-methods applies to")
    parser.add_argument("--crossover-methods", default="numpy-exact,faiss-flat,faiss-hnsw,usearch-f16",
                        help="comma-separated methods at --crossover-sizes")
    parser.add_argument("--dim", type=int, default=384, help="vector width (the model's embedding width)")
    parser.add_argument("--queries", type=int, default=1000, help="queries, drawn like the base but not in it")
    parser.add_argument("--exact-latency-queries", type=int, default=200,
                        help="queries timed one at a time for the exact methods (each scans all N vectors)")
    parser.add_argument("--distribution", choices=("clustered", "uniform"), default="clustered",
                        help="clustered: Gaussian clusters around random unit centres; uniform: on the sphere")
    parser.add_argument("--cluster-size", type=int, default=100, help="mean vectors per cluster (N / clusters)")
    parser.add_argument("--noise-scale", type=float, default=0.75,
                        help="expected norm of a vector's offset from its cluster centre, before normalising")
    parser.add_argument("--noise-decay", type=float, default=1.0,
                        help="per-dimension noise variance falls as i^-decay (0: isotropic)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data")
    # 16 / 64 reach recall@10 0.95 at efSearch 32-64 on 100k clustered vectors; 32 / 128 build ~4x slower.
    parser.add_argument("--faiss-m", type=int, default=16, help="faiss HNSW M (neighbours per node)")
    parser.add_argument("--faiss-ef-construction", type=int, default=64, help="faiss HNSW efConstruction")
    parser.add_argument("--usearch-connectivity", type=int, default=16, help="usearch connectivity (HNSW M)")
    parser.add_argument("--usearch-expansion-add", type=int, default=64,
                        help="usearch expansion_add (efConstruction)")
    parser.add_argument("--ivf-lists-per-sqrt", type=float, default=8.0,
                        help="faiss IVF: inverted lists per square root of N")
    parser.add_argument("--ivf-train-per-list", type=int, default=50, help="faiss IVF: training vectors per list")
    parser.add_argument("--ef-search", type=int_list, default=[16, 32, 64, 128, 256],
                        help="comma-separated efSearch / expansion_search values each HNSW index is searched at "
                             "(the nprobe values of faiss-ivf)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="recall@10 the chosen efSearch must reach (the smallest such efSearch is kept)")
    parser.add_argument("--latency-budgets-ms", type=lambda t: [float(x) for x in t.split(",")], default=[1.0, 10.0],
                        help="comma-separated single-query p50 budgets; the conclusion gives the size at which "
                             "exact search reaches each")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads of builds and batch searches: faiss (OpenMP), usearch, numpy's BLAS "
                             "(default: all cores)")
    parser.add_argument("--latency-threads", type=int, default=1,
                        help="threads of a single-query search: one request's share of a server; on a CPU shared "
                             "with other work a multi-threaded single query waits for its descheduled thread")
    parser.add_argument("--add-chunk", type=int, default=50_000, help="vectors per add call (the progress step)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON file (default: bench/results/search_vectors_cpu.json)")
    args = parser.parse_args(argv)
    known = EXACT_METHODS + HNSW_METHODS + IVF_METHODS
    for name in ("methods", "large_methods", "crossover_methods"):
        chosen = [m.strip() for m in getattr(args, name).split(",") if m.strip()]
        unknown = set(chosen) - set(known)
        if unknown:
            parser.error(f"--{name.replace('_', '-')}: unknown {sorted(unknown)}; choose from {', '.join(known)}")
        setattr(args, name, ["numpy-exact"] + [m for m in known if m in chosen and m != "numpy-exact"])
    if not args.sizes or min(args.sizes + args.crossover_sizes) <= K or min(args.ef_search) < 1:
        parser.error("--sizes is required, sizes must be > 10 and --ef-search values >= 1")
    for name in ("dim", "queries", "exact_latency_queries", "cluster_size", "threads", "latency_threads",
                 "add_chunk"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.out = result_path(args.out, "search_vectors", "cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)
    info = {**machine_info(), "threads": {
        "build_and_batch": args.threads, "single_query_latency": args.latency_threads,
        "faiss_omp_max_threads": faiss.omp_get_max_threads(), "usearch_threads_argument": args.threads,
        "threadpools": [{k: p[k] for k in ("user_api", "internal_api", "num_threads")}
                        for p in threadpoolctl.threadpool_info()]}}
    table = methods(args)
    rows, data = [], {}
    for n in sorted(set(args.sizes) | set(args.crossover_sizes)):
        names = (args.crossover_methods if n not in args.sizes else
                 args.large_methods if n >= args.large_from else args.methods)
        start = time.perf_counter()
        base, queries, base_ids, query_ids = make_vectors(args, n)
        print(f"N={n:,}: {args.distribution} data made in {time.perf_counter() - start:.1f} s; methods {names}")
        truth = None
        for name in names:
            row, found = measure(args, table[name], base, queries, truth)
            if name == "numpy-exact":
                truth = found
                data[n] = data_stats(base, queries, truth, base_ids, query_ids)
                print(f"  data: {data[n]}")
            row["set"] = "sizes" if n in args.sizes else "crossover"
            rows.append(row)
            print_table([row])
        del base, queries
    print()
    print_table(rows)
    summary = conclusion(args, rows)
    print_conclusion(summary)
    info["load_average_at_end"] = list(os.getloadavg())
    write_json_atomic(args.out, {
        "benchmark": "search_vectors", "k": K,
        "data": {"distribution": args.distribution, "dim": args.dim, "queries": args.queries, "seed": args.seed,
                 **({"clusters": "N // cluster_size", "cluster_size": args.cluster_size,
                     "noise_scale": args.noise_scale, "noise_decay": args.noise_decay,
                     "generator": "centres: random unit vectors; vector = centre + noise with per-dimension "
                                  "std noise_scale*sqrt(i^-decay / sum_j j^-decay), then L2-normalised; queries "
                                  "drawn the same way (fresh noise, not in the base)"}
                    if args.distribution == "clustered" else {"generator": "standard normal, L2-normalised"}),
                 "neighbour_stats_by_N": data},
        "settings": settings_for_json(args), "conclusion": summary, "rows": rows,
        "notes": {"latency": "single-query wall time of one search call from Python, queries one at a time; "
                             "exact methods time the first exact_latency_queries queries",
                  "batch": "all queries in one call, threads as recorded",
                  "recall": "recall@10 of the batch results against numpy-exact",
                  "memory": "index_bytes: serialized index (numpy: the matrix); memory_usage: usearch's own count; "
                            "rss_growth_bytes / rss_peak_growth_bytes: this process's RSS after / at its peak "
                            "during the build, minus RSS before it"},
        "machine": info, "date": now_iso(),
        "versions": {name: version(name) for name in ("numpy", "faiss-cpu", "usearch")}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
