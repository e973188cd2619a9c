"""The vector-search benchmark's table and conclusion: which approximate method to use at each size, and up to
which size exact search is as fast or within a latency budget."""
from __future__ import annotations

import argparse
import math

EXACT_METHODS = ("numpy-exact", "faiss-flat")
HNSW_METHODS = ("faiss-hnsw", "usearch-f32", "usearch-f16", "usearch-i8")
#: Tuned like the HNSW methods, nprobe standing for efSearch: an inverted file, what mclip_hbt.search uses.
IVF_METHODS = ("faiss-ivf",)
def meeting_point(sizes: list[int], log_ratio: list[float]) -> dict:
    """Where ``log_ratio`` (log of exact p50 over a rival's or a budget, by size) turns positive, i.e. exact
    search is no longer within it: the largest size before that, the first size after, and the size where it
    crosses 0, interpolated linearly in log(N)."""
    slower = [i for i, r in enumerate(log_ratio) if r > 0]
    if not slower:
        return {"exact_within_up_to": sizes[-1], "estimated_N": None, "note": "within at every size measured"}
    i = slower[0]
    if i == 0:
        return {"exact_within_up_to": None, "estimated_N": None,
                "note": f"already beyond at the smallest size measured ({sizes[0]:,})"}
    lo, hi = math.log(sizes[i - 1]), math.log(sizes[i])
    at = lo + (hi - lo) * -log_ratio[i - 1] / (log_ratio[i] - log_ratio[i - 1])
    return {"exact_within_up_to": sizes[i - 1], "first_size_exact_beyond": sizes[i],
            "estimated_N": int(round(math.exp(at)))}


def exact_thresholds(rows: list[dict], exact: str, approx: str, budgets_ms: list[float]) -> dict:
    """Single-query p50 of ``exact`` against ``approx`` by size, the size where they meet, and the sizes at
    which ``exact`` reaches each latency budget."""
    p50 = {m: {r["N"]: r["p50_ms"] for r in rows if r["method"] == m} for m in (exact, approx)}
    sizes = sorted(set(p50[exact]) & set(p50[approx]))
    if not sizes:
        return {}
    return {"p50_ms_by_N": {n: {exact: p50[exact][n], approx: p50[approx][n]} for n in sizes},
            "crossover": meeting_point(sizes, [math.log(p50[exact][n] / p50[approx][n]) for n in sizes]),
            "budgets": {f"{ms:g} ms": meeting_point(sorted(p50[exact]), [math.log(p50[exact][n] / ms)
                                                                         for n in sorted(p50[exact])])
                        for ms in budgets_ms}}


# ------------------------------------------------------------------------------ report

def print_table(rows: list[dict]) -> None:
    head = (f"{'N':>9} {'method':12} {'ef':>4} {'build s':>8} {'vec/s':>9} {'index MB':>9} {'RSS+ MB':>8} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10} {'R@10':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['N']:>9,} {r['method']:12} {r.get('ef_search', '-'):>4} {r['build_s']:>8.2f} "
              f"{r['vectors_per_s']:>9,.0f} {r['index_bytes'] / 2**20:>9.1f} {r['rss_growth_bytes'] / 2**20:>8.1f} "
              f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['batch_qps']:>10,.0f} {r['recall_at_10']:>6.3f}")


def print_conclusion(summary: dict) -> None:
    print("\nconclusion:")
    for n, pick in summary["pick_by_N"].items():
        print(f"  N={n:,}: {pick}")
    print(f"  basis: {summary['basis']}")
    for exact, found in summary["exact_vs_approximate"].items():
        print(f"  {exact} as fast as {summary['approximate_method']}: {found['crossover']}")
        for budget, point in found["budgets"].items():
            print(f"  {exact} p50 within {budget}: {point}")


def conclusion(args: argparse.Namespace, rows: list[dict]) -> dict:
    """Per size in ``--sizes``, the approximate method to use: the lowest single-query p50 among HNSW methods
    reaching the target recall, else (flagged) the highest recall. The one picked at the largest size that met
    the target is the basis for the size below which exact search is as fast, and the sizes up to which
    exact search stays within each latency budget."""
    keys = ("method", "params", "ef_search", "p50_ms", "p99_ms", "batch_qps", "recall_at_10", "build_s",
            "index_bytes", "meets_target_recall")
    picks = {}
    for n in args.sizes:
        hnsw = [r for r in rows if r["N"] == n and r["method"] in HNSW_METHODS + IVF_METHODS]
        good = [r for r in hnsw if r["meets_target_recall"]]
        if hnsw:
            best = min(good, key=lambda r: r["p50_ms"]) if good else max(hnsw, key=lambda r: r["recall_at_10"])
            picks[n] = {k: best[k] for k in keys}
    if not picks:
        return {"pick_by_N": {}, "basis": "no HNSW method measured", "exact_vs_approximate": {}}
    met = [n for n, pick in picks.items() if pick["meets_target_recall"]]
    basis_n = max(met) if met else max(picks)
    approx = picks[basis_n]["method"]
    return {"criterion": f"lowest single-query p50 among HNSW methods with recall@10 >= {args.target_recall}; "
                         "where none reaches it, the highest recall (meets_target_recall false)",
            "pick_by_N": picks, "approximate_method": approx,
            "basis": f"{approx}, the pick at N={basis_n:,}" + ("" if met else " (target recall not met)"),
            "exact_vs_approximate": {exact: exact_thresholds(rows, exact, approx, args.latency_budgets_ms)
                                     for exact in EXACT_METHODS if any(r["method"] == exact for r in rows)}}
