"""Learning without forgetting: each lever of ``mclip_hbt.train.text_learning`` at α = 0.5, same data and steps.

Every row is one ``demo.py sweep --alphas 0.5`` run on the emoji world (the demo languages: ten high-resource, five
low-resource, four unseen), scored by ``eval.xtd`` and ``eval.zeroshot`` on the world's seen-concept split and by
``eval.xtd`` on the real XTD10 captions (text only). Per row: text→image R@10 and zero-shot top-1 accuracy by
language group, the caption pool's mAP and rank distance and the image→pool mAP on the emoji split, and on real
XTD10 the caption X → English R@1 per language against the untrained encoder (the largest drop is the
forgetting), with the real-text caption pool's mAP and rank distance.

    python -m bench.text_tradeoff --jobs 2            # every row; runs/tradeoff/, bench/results/text_tradeoff.json
    python -m bench.text_tradeoff --rows frozen,teacher --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import settings_for_json
from eval.report_data import groups_from_world
from mclip_hbt.fileio import write_json_atomic
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.paths import REPO_ROOT
from mclip_hbt.runtime import cpu_model

#: The two ways the encoder learns, spelled out so a row means the same whatever the text config ships.
TOP_BLOCKS = "--text-unlocked-layers 2 --freeze-word-embeddings --text-lora-rank 0"
LORA = "--text-unlocked-layers -1 --no-freeze-word-embeddings --text-lora-rank 8"
#: name → (demo.py --setting, train.py options over that setting's config, what the row tries)
ROWS: dict[str, tuple[str, str, str]] = {
    "frozen": ("frozen", "", "frozen encoder under a rotation (the first sweep's setting)"),
    "plain": ("text", f"{TOP_BLOCKS} --lr 5e-4 --text-lr 5e-4 --text-distill-weight 0",
              "top 2 blocks, one learning rate 5e-4 (plain fine-tuning)"),
    "text-lr": ("text", f"{TOP_BLOCKS} --text-lr 1e-4 --text-distill-weight 0",
                "top 2 blocks at text lr 1e-4, head and image tower at 2e-3"),
    "teacher": ("text", f"{TOP_BLOCKS} --text-lr 1e-4 --text-distill-weight 1",
                "text lr 1e-4 + teacher term (weight 1, cosine)"),
    "teacher-pairs": ("text", f"{TOP_BLOCKS} --text-lr 1e-4 --text-distill-weight 1 --text-pair-weight 0.5",
                      "text lr 1e-4 + teacher + text-text term on CLDR name pairs (weight 0.5)"),
    "lora": ("text", f"{LORA} --text-lr 5e-4 --text-distill-weight 0",
             "LoRA r 8 on query/value of every block, adapter lr 5e-4: the text config as shipped"),
    "lora-teacher": ("text", f"{LORA} --text-lr 5e-4 --text-distill-weight 1", "LoRA r 8 + teacher term (weight 1)"),
}
GROUP_ORDER = ("high", "low", "unseen")


def run_row(name: str, seed: int, out: Path, threads: int) -> Path:
    setting, train_args, _ = ROWS[name]
    run_out = out / name
    log = out / f"{name}_seed{seed}.log"
    cmd = [sys.executable, str(REPO_ROOT / "demo.py"), "sweep", "--out", str(run_out), "--alphas", "0.5",
           "--seeds", str(seed), "--eval-languages", "demo", "--setting", setting, "--train-args", train_args]
    print("+", shlex.join(cmd), f"> {log}", flush=True)
    with log.open("a") as sink:
        subprocess.run(cmd, check=True, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"})
    return run_out / f"alpha0.5_seed{seed}"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def group_means(monolingual: dict, groups: dict[str, list[str]]) -> dict[str, float]:
    """Mean ``t2i_r@10`` per training group (high / low / unseen, whatever the pre-training)."""
    out = {}
    for group in GROUP_ORDER:
        langs = [lang for name, members in groups.items() if name.split(",")[0] == group for lang in members
                 if lang in monolingual]
        if langs:
            out[group] = statistics.fmean(monolingual[lang]["t2i_r@10"] for lang in langs)
    return out


def row_figures(run_dir: Path, untrained_xtd: dict, groups: dict[str, list[str]]) -> dict:
    emoji = _load(run_dir / "eval" / "emoji_seen.json")["summary"]
    xtd = _load(run_dir / "eval" / "xtd10_text.json")["summary"]
    trained_r1 = {lang: xtd["crosslingual"]["r@1"][lang]["en"] for lang in XTD_LANGS if lang != "en"}
    untrained_r1 = {lang: untrained_xtd["crosslingual"]["r@1"][lang]["en"] for lang in trained_r1}
    drops = {lang: untrained_r1[lang] - trained_r1[lang] for lang in trained_r1}
    worst = max(drops, key=drops.get)
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines() if line.strip()]
    zeroshot = _load(run_dir / "eval" / "zeroshot_emoji_seen.json")["summary"]["zeroshot_classification"]
    return {"emoji_r10": group_means(emoji["monolingual"], groups),
            "zeroshot_acc1": group_means({lang: {"t2i_r@10": s["acc1"]} for lang, s in zeroshot.items()}, groups),
            "emoji_caption_pool": {"map": emoji["multilingual_text"]["map"],
                                   "rank_distance": emoji["multilingual_text"]["rank_distance"]},
            "emoji_image_pool_map": emoji["multilingual_image"]["map"],
            "xtd10_x_to_en_r1": trained_r1, "xtd10_x_to_en_r1_mean": statistics.fmean(trained_r1.values()),
            "xtd10_worst_drop": {"lang": worst, "drop": drops[worst]},
            "xtd10_caption_pool": {"map": xtd["multilingual_text"]["map"],
                                   "rank_distance": xtd["multilingual_text"]["rank_distance"]},
            "seconds_per_step": (steps[-1]["time_s"] - steps[0]["time_s"]) / max(1, len(steps) - 1)}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown(rows: dict[str, list[dict]], untrained: dict) -> str:
    def cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
        mean, std = mean_std([v * scale for v in values])
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")

    lines = ["| row | what | seeds | high R@10 | low R@10 | unseen R@10 | zero-shot top-1 high / low / unseen | "
             "caption-pool mAP | rank distance | image→pool mAP | XTD10 X→en R@1 (mean) | worst drop | "
             "real-text pool mAP | real-text rank distance |", "|---" * 14 + "|"]
    for name, runs in rows.items():
        worst = [r["xtd10_worst_drop"]["drop"] for r in runs]
        langs = sorted({r["xtd10_worst_drop"]["lang"] for r in runs})
        lines.append(" | ".join([
            f"| {name}", ROWS[name][2], str(len(runs)),
            *(cell([r["emoji_r10"][g] for r in runs]) for g in GROUP_ORDER),
            " / ".join(cell([r["zeroshot_acc1"][g] for r in runs]) for g in GROUP_ORDER),
            cell([r["emoji_caption_pool"]["map"] for r in runs]),
            cell([r["emoji_caption_pool"]["rank_distance"] for r in runs], 1.0, 0),
            cell([r["emoji_image_pool_map"] for r in runs]),
            cell([r["xtd10_x_to_en_r1_mean"] for r in runs]),
            f"{cell(worst)} ({', '.join(langs)})",
            cell([r["xtd10_caption_pool"]["map"] for r in runs]),
            cell([r["xtd10_caption_pool"]["rank_distance"] for r in runs], 1.0, 0)]) + " |")
    base = untrained["summary"]
    r1 = [base["crosslingual"]["r@1"][lang]["en"] for lang in XTD_LANGS if lang != "en"]
    lines.append(f"| untrained | the bundled encoder, no training | – | – | – | – | – | – | – | – | "
                 f"{statistics.fmean(r1) * 100:.1f} | 0 | {base['multilingual_text']['map'] * 100:.1f} | "
                 f"{base['multilingual_text']['rank_distance']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.text_tradeoff", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows, of: " + ", ".join(ROWS))
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds per row")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each with cores / jobs threads")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "tradeoff", help="where the runs go")
    parser.add_argument("--result", type=Path, default=REPO_ROOT / "bench" / "results" / "text_tradeoff.json",
                        help="the JSON written (the markdown table goes beside it)")
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows:
        parser.error(f"--rows: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ROWS)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    if args.jobs < 1 or not args.seeds:
        parser.error("--jobs must be >= 1 and --seeds must name at least one seed")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    todo = [(name, seed) for seed in args.seeds for name in args.rows]
    # The first run alone, with every core: it writes the untrained baselines and the text cache the others read.
    run_dirs = [run_row(*todo[0], args.out, os.cpu_count() or 1)]
    with ThreadPoolExecutor(args.jobs) as pool:
        run_dirs += pool.map(lambda task: run_row(*task, args.out, threads), todo[1:])
    groups = groups_from_world(args.out / "data" / "emoji" / "languages.json")
    untrained = _load(args.out / "baselines" / "untrained_e5_xtd10_text.json")
    rows: dict[str, list[dict]] = {}
    for (name, seed), run_dir in zip(todo, run_dirs):
        rows.setdefault(name, []).append({"seed": seed, **row_figures(run_dir, untrained["summary"], groups)})
    table = markdown(rows, untrained)
    print(table)
    write_json_atomic(args.result, {"bench": "text_tradeoff", "machine": cpu_model(), "alpha": 0.5,
                                    "settings": settings_for_json(args), "rows": rows,
                                    "row_options": {name: {"setting": ROWS[name][0], "train_args": ROWS[name][1]}
                                                    for name in rows}})
    args.result.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
