"""Merge evaluation results of runs trained with different α into one table and α plots.

    python -m eval.report runs/alpha0.0 runs/alpha0.5 runs/alpha1.0 --out report/
    python -m eval.report a.json b.json --label a.json alpha=0.5,seed=0 --label b.json alpha=1,seed=0 --out report/

Inputs are result JSONs of ``eval.xtd``/``eval.m3c`` or folders searched recursively for them.
A run's α and seed come from the result's ``meta.train`` (the evaluator copies the trainer's
``train_meta.json`` there when ``--model`` is a saved run), else from ``--label PATH alpha=A,seed=S``.
Results with the same α and benchmark are averaged over seeds (mean ± sample standard deviation).

Writes ``OUT/report.md`` (rows α; per-language text→image R@10 grouped as high-resource /
low-resource / unseen, group means, multilingual mAP and rank distance; for a benchmark scored on captions
only, each language's caption → English R@1 per α beside the untrained encoder's (``--baseline``); the share
of monolingual steps and how much of a monolingual batch was in its own language, from the trainer's
``meta.train.batches``), ``OUT/report.json`` and, per benchmark, ``OUT/<benchmark>_r10_vs_alpha.png``,
``OUT/<benchmark>_map_vs_alpha.png`` and ``OUT/<benchmark>_rank_distance_vs_alpha.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mclip_hbt.fileio import OutputError, check_output_dir, write_json_atomic, write_text_atomic

from .report_data import (
    aggregate,
    aggregate_zeroshot,
    batches_by_alpha,
    find_result_files,
    gain_against_baseline,
    groups_from_world,
    is_captions_only,
    is_result_document,
    load_run,
    parse_groups,
    parse_label,
    read_baseline,
    read_result_document,
)
from .report_plots import write_plots
from .report_tables import (
    batches_section,
    caption_pool_note,
    captions_only_table,
    gain_section,
    markdown_table,
    zeroshot_section,
)
from .results import save_output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, metavar="RESULT_OR_RUN_DIR",
                        help="result JSONs, or folders searched recursively for them")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json and the plots")
    parser.add_argument("--groups", default=None,
                        help="language groups, e.g. 'high=en,de,es,fr,zh;low=it,pl,tr;unseen=ru,ko,ja' "
                             "(default: no groups; every language in one 'other' column)")
    parser.add_argument("--world", type=Path, default=None,
                        help="a world's languages.json (data_recipes.emoji_world): group languages by training "
                             "group × inside/outside the encoder's pre-training (instead of --groups)")
    parser.add_argument("--baseline", type=Path, action="append", default=[], metavar="RESULT_JSON",
                        help="text-only result of the untrained encoder on a benchmark's captions (repeatable, "
                             "matched by benchmark name): adds the R@10 gain from α = 0 to the best α > 0 against "
                             "its caption X → English R@1, per language, with the correlation")
    parser.add_argument("--label", nargs=2, action="append", default=[], metavar=("PATH", "ALPHA_SEED"),
                        help="α and seed for results without meta.train: PATH alpha=A,seed=S (repeatable; "
                             "PATH is a result file or a folder holding some)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.groups and args.world:
            raise ValueError("give --groups or --world, not both")
        groups = (parse_groups(args.groups) if args.groups else groups_from_world(args.world) if args.world
                  else {})
        baselines = {}
        for file in args.baseline:
            doc = read_result_document(file)
            if not is_result_document(doc):
                raise ValueError(f"--baseline {file} is not a result JSON of eval.xtd")
            baselines[str(doc["meta"].get("benchmark"))] = read_baseline(doc, file)
        labels = {}
        for path, text in args.label:
            try:
                parse_label(text)  # refuse a malformed label before reading anything
            except ValueError as e:
                raise ValueError(f"--label {path}: {e}") from None
            labels[Path(path)] = text
        check_output_dir(args.out, "--out")
    except (OutputError, ValueError) as e:
        parser.error(str(e))
    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    try:
        files = find_result_files(args.inputs)
        if not files:
            parser.error("no result JSONs (from eval.xtd / eval.m3c) found in the inputs")
        runs = [load_run(file, labels) for file in files]
    except ValueError as e:
        parser.error(str(e))

    tables = aggregate(runs, groups)
    gains = {bench: gain_against_baseline(table, baselines[bench]) for bench, table in tables.items()
             if bench in baselines}
    sections = [captions_only_table(bench, table, baselines.get(bench)) if is_captions_only(table)
                else markdown_table(bench, table, groups) + caption_pool_note(table)
                + gain_section(bench, gains.get(bench), groups) for bench, table in tables.items()]
    zeroshot = aggregate_zeroshot(runs, groups)
    sections += [zeroshot_section(bench, table) for bench, table in zeroshot.items()]
    batches = batches_by_alpha(runs, groups)
    report = "\n\n".join(sections + ([batches_section(batches)] if batches else [])) + "\n"
    print(report)
    print(f"{len(runs)} result file(s)")
    written = [save_output(parser.prog, "report", args.out / "report.md",
                           lambda: write_text_atomic(args.out / "report.md", report)),
               save_output(parser.prog, "report data", args.out / "report.json",
                           lambda: write_json_atomic(args.out / "report.json", {
                               "groups": groups, "inputs": [str(r.path) for r in runs], "baselines": baselines,
                               "gain_vs_untrained": gains,
                               "batches": {str(a): row for a, row in batches.items()},
                               "benchmarks": {b: {str(a): row for a, row in t.items()} for b, t in tables.items()},
                               "zeroshot": {b: {str(a): row for a, row in t.items()} for b, t in zeroshot.items()}})),
               save_output(parser.prog, "plots", args.out,
                           lambda: [write_plots(bench, table, groups, args.out, gains.get(bench))
                                           for bench, table in tables.items()])]
    return 0 if all(written) else 1


if __name__ == "__main__":
    raise SystemExit(main())
