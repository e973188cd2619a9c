"""Merge evaluation results of runs trained with different α into one table and α plots.

    python -m eval.report runs/alpha0.0 runs/alpha0.5 runs/alpha1.0 --out report/
    python -m eval.report a.json b.json --label a.json alpha=0.5,seed=0 --label b.json alpha=1,seed=0 --out report/

Inputs are result JSONs of ``eval.xtd``/``eval.m3c`` or folders searched recursively for them.
A run's α and seed come from the result's ``meta.train`` (the evaluator copies the trainer's
``train_meta.json`` there when ``--model`` is a saved run), else from ``--label PATH alpha=A,seed=S``.
Results with the same α and benchmark are averaged over seeds (mean ± sample standard deviation).

Writes ``OUT/report.md`` (rows α; per-language text→image R@10 grouped as high-resource /
low-resource / unseen, group means, multilingual mAP and rank distance; the share of monolingual steps
and how much of a monolingual batch was in its own language, from the trainer's ``meta.train.batches``),
``OUT/report.json`` and,
per benchmark, ``OUT/<benchmark>_r10_vs_alpha.png``, ``OUT/<benchmark>_map_vs_alpha.png`` and
``OUT/<benchmark>_rank_distance_vs_alpha.png``.
"""
from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mclip_hbt.fileio import OutputError, check_output_dir, parse_json, write_json_atomic, write_text_atomic
from mclip_hbt.languages import canonical_lang

from .plots import plot_against_alpha, plot_group_scatter, plot_language_heatmap
from .results import save_output

GROUP_STYLES = {"high": "-", "low": "--", "unseen": ":", "other": "-."}


@dataclass
class RunResult:
    path: Path
    alpha: float
    seed: int | None
    summaries: dict[str, dict]  # benchmark (part) → summary
    batches: dict | None = None  # the trainer's summary of the batches it drew (mclip_hbt.hybrid.summarize_records)


def groups_from_world(path: Path) -> dict[str, list[str]]:
    """Groups from a world's ``languages.json`` (``data_recipes.emoji_world``): its training group
    (high / low / unseen) crossed with whether the text encoder saw the language in pre-training."""
    try:
        doc = parse_json(path.read_bytes())
        entries = doc["languages"]
        groups: dict[str, list[str]] = defaultdict(list)
        for entry in entries:
            where = "in pre-training" if entry["in_pretraining"] else "outside pre-training"
            groups[f"{entry['group']}, {where}"].append(canonical_lang(entry["lang"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--world {path}: not a world's languages.json ({type(e).__name__}: {e})") from e
    order = {"high": 0, "low": 1, "unseen": 2}
    return dict(sorted(groups.items(), key=lambda item: (order.get(item[0].split(",")[0], 3), item[0])))


def parse_groups(spec: str) -> dict[str, list[str]]:
    """``"high=en,de;low=it,pl;unseen=ru"`` → ``{"high": ["en", "de"], ...}`` (codes canonicalised)."""
    groups: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, codes = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"group {part!r} is not NAME=lang,lang,...")
        groups[name.strip()] = [canonical_lang(c) for c in codes.split(",") if c.strip()]
    if not groups:
        raise ValueError("no groups given")
    return groups


def _number(value: object, what: str, convert=float):
    """``value`` (a JSON number, or a label's text) as ``convert`` gives it; else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} is {value!r}, not a number")
    try:
        return convert(value)
    except ValueError:
        raise ValueError(f"{what} is {value!r}, not a number") from None


def parse_label(text: str) -> tuple[float, int | None]:
    """``"alpha=0.5,seed=1"`` → (0.5, 1); the seed may be left out."""
    fields = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    if "alpha" not in fields:
        raise ValueError(f"label {text!r} has no alpha=")
    return (_number(fields["alpha"].strip(), f"alpha in label {text!r}"),
            _number(fields["seed"].strip(), f"seed in label {text!r}", int) if "seed" in fields else None)


def is_result_document(doc: object) -> bool:
    return isinstance(doc, dict) and {"results", "summary", "meta"} <= doc.keys()


def read_result_document(file: Path) -> dict:
    """The JSON document in ``file``; a ValueError naming the file when it cannot be read or parsed."""
    try:
        return parse_json(file.read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"{file}: cannot read it as JSON ({e})") from e


def find_result_files(paths: list[Path]) -> list[Path]:
    """Result documents among ``paths``: a file given by name must be one; in a folder, other JSON
    files (a previous report.json, ...) are passed over."""
    files = []
    for path in paths:
        if not path.is_dir():
            if not is_result_document(read_result_document(path)):
                raise ValueError(f"{path} is not a result JSON of eval.xtd / eval.m3c (no results, summary and meta)")
            files.append(path)
            continue
        for file in sorted(path.rglob("*.json")):
            try:
                if is_result_document(read_result_document(file)):
                    files.append(file)
            except ValueError:
                continue
    return files


def check_summary(summary: object, where: str) -> dict:
    """One benchmark's summary, checked for the fields the report reads; a ValueError naming ``where``."""
    if not isinstance(summary, dict) or not isinstance(summary.get("monolingual"), dict):
        raise ValueError(f"{where} is not a summary of eval.xtd / eval.m3c (no 'monolingual' object)")
    for lang, metrics in summary["monolingual"].items():
        if not isinstance(metrics, dict):
            raise ValueError(f"{where}.monolingual.{lang} is {metrics!r}, not an object")
        _number(metrics.get("t2i_r@10"), f"{where}.monolingual.{lang}.t2i_r@10")
    for setting, keys in (("multilingual_image", ("map",)), ("multilingual_text", ("map", "rank_distance"))):
        values = summary.get(setting)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{where}.{setting} is {values!r}, not an object")
        for key in keys:
            _number(values.get(key), f"{where}.{setting}.{key}")
    return summary


def summaries_by_benchmark(doc: dict, file: Path) -> dict[str, dict]:
    """XTD documents carry one summary; M3C documents one per part."""
    summary = doc["summary"]
    if isinstance(summary, dict) and "monolingual" in summary:
        return {str(doc["meta"].get("benchmark", "xtd10")): check_summary(summary, f"{file}: summary")}
    if not isinstance(summary, dict) or not summary:
        raise ValueError(f"{file}: summary is {summary!r}, not one summary or one per benchmark part")
    return {str(part): check_summary(s, f"{file}: summary.{part}") for part, s in summary.items()}


def load_run(file: Path, labels: dict[Path, str]) -> RunResult:
    """One result file's α, seed and summaries; a ValueError naming the file when any is unusable."""
    doc = read_result_document(file)
    if not isinstance(doc.get("meta"), dict):
        raise ValueError(f"{file}: meta is {doc.get('meta')!r}, not an object")
    train = doc["meta"].get("train")
    where = file.resolve()
    label = next((text for path, text in labels.items() if path.resolve() in (where, *where.parents)), None)
    if isinstance(train, dict) and "alpha" in train:
        alpha = _number(train["alpha"], f"{file}: meta.train.alpha")
        seed = None if train.get("seed") is None else _number(train["seed"], f"{file}: meta.train.seed", int)
    elif label is not None:
        alpha, seed = parse_label(label)
    else:
        raise ValueError(f"{file} names no α (no meta.train); give --label {file} alpha=A,seed=S")
    batches = train.get("batches") if isinstance(train, dict) else None
    return RunResult(file, alpha, seed, summaries_by_benchmark(doc, file),
                     batches if isinstance(batches, dict) else None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[RunResult], groups: dict[str, list[str]]) -> dict[str, dict[float, dict]]:
    """benchmark → α → {"n": runs, "seeds", "t2i_r@10": {lang: (mean, std)}, "groups": {group: (mean, std)},
    "image_map", "text_map", "rank_distance": (mean, std)}, from the runs' per-seed values."""
    samples: dict[str, dict[float, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        for bench, summary in run.summaries.items():
            s = samples[bench][run.alpha]
            s["seeds"].append(run.seed)
            mono = summary["monolingual"]
            for lang, metrics in mono.items():
                s[f"lang:{lang}"].append(metrics["t2i_r@10"])
            for group, langs in groups.items():
                present = [mono[lang]["t2i_r@10"] for lang in langs if lang in mono]
                if present:
                    s[f"group:{group}"].append(statistics.fmean(present))
            if summary.get("multilingual_image"):
                s["image_map"].append(summary["multilingual_image"]["map"])
            if summary.get("multilingual_text"):
                s["text_map"].append(summary["multilingual_text"]["map"])
                s["rank_distance"].append(summary["multilingual_text"]["rank_distance"])
    out: dict[str, dict[float, dict]] = {}
    for bench, by_alpha in samples.items():
        out[bench] = {}
        for alpha, s in sorted(by_alpha.items()):
            row = {"n": len(s["seeds"]), "seeds": s["seeds"],
                   "t2i_r@10": {k[5:]: _mean_std(v) for k, v in s.items() if k.startswith("lang:")},
                   "groups": {k[6:]: _mean_std(v) for k, v in s.items() if k.startswith("group:")}}
            for key in ("image_map", "text_map", "rank_distance"):
                row[key] = _mean_std(s[key]) if s[key] else None
            out[bench][alpha] = row
    return out


def batches_by_alpha(runs: list[RunResult], groups: dict[str, list[str]]) -> dict[float, dict]:
    """α → {"n": runs, "monolingual_steps": (mean, std) share of steps, "share": {group: (mean, std)}}: per
    group, the mean share of a monolingual batch's captions in its own language, over the group's trained
    languages. Each training run counts once, however many results it has; runs without a summary are left out."""
    seen: dict[float, dict[int | None, dict]] = defaultdict(dict)
    for run in runs:
        if run.batches and run.batches.get("steps"):
            seen[run.alpha][run.seed] = run.batches
    out = {}
    for alpha, by_seed in sorted(seen.items()):
        shares: dict[str, list[float]] = defaultdict(list)
        for batches in by_seed.values():
            for group, langs in groups.items():
                present = [batches["monolingual_share"][lang] for lang in langs if lang in batches["monolingual_share"]]
                if present:
                    shares[group].append(statistics.fmean(present))
        out[alpha] = {"n": len(by_seed),
                      "monolingual_steps": _mean_std([b["monolingual_steps"] / b["steps"] for b in by_seed.values()]),
                      "share": {group: _mean_std(values) for group, values in shares.items()}}
    return out


def batches_section(batches: dict[float, dict]) -> str:
    """What the runs' batches held, beside the α they asked for (empty without the trainer's summaries)."""
    if not batches:
        return ""
    groups = list(dict.fromkeys(g for row in batches.values() for g in row["share"]))
    head = ["α", "runs", "monolingual steps (%)"] + [f"{g}: own-language share (%)" for g in groups]
    lines = ["### Batches as drawn (rank 0's step log)", "",
             "A monolingual step in a language on few training samples is topped up with other languages when the "
             "batcher's buffer holds too few of it; the share columns say how much of such a batch was in its own "
             "language.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for alpha, row in batches.items():
        cells = [f"{alpha:g}", str(row["n"]), _cell(row["monolingual_steps"])]
        cells += [_cell(row["share"].get(g)) for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: tuple[float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std else "")


def language_columns(table: dict[float, dict], groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """Languages present in the results, grouped as given; those in no group go to "other"."""
    present = list(dict.fromkeys(lang for row in table.values() for lang in row["t2i_r@10"]))
    columns = {g: [lang for lang in langs if lang in present] for g, langs in groups.items()}
    other = [lang for lang in present if not any(lang in langs for langs in groups.values())]
    if other:
        columns["other"] = other
    return {g: langs for g, langs in columns.items() if langs}


#: Above this many languages a benchmark's table is transposed (languages as rows), so it stays readable.
WIDE_TABLE_LANGUAGES = 12


def markdown_table(bench: str, table: dict[float, dict], groups: dict[str, list[str]]) -> str:
    columns = language_columns(table, groups)
    if sum(map(len, columns.values())) > WIDE_TABLE_LANGUAGES:
        return _long_tables(bench, table, columns)
    head = ["α", "runs"] + [f"{g}: {lang}" for g, langs in columns.items() for lang in langs]
    head += [f"{g} mean" for g in columns] + ["img→ml mAP", "txt→ml mAP", "rank distance"]
    lines = [f"### {bench}: text→image R@10 (%) by caption language, multilingual settings",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for alpha, row in table.items():
        cells = [f"{alpha:g}", str(row["n"])]
        cells += [_cell(row["t2i_r@10"].get(lang)) for langs in columns.values() for lang in langs]
        cells += [_cell(row["groups"].get(g)) for g in columns]
        cells += [_cell(row["image_map"]), _cell(row["text_map"]), _cell(row["rank_distance"], scale=1.0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption_pool_note(table: dict[float, dict]) -> str:
    """A warning under the table when every run has the same caption-pool mAP and rank distance: then the
    runs share their caption-to-caption similarities (a frozen text encoder, under a rotation or no
    head), and those two columns cannot show what α does."""
    rows = [row for row in table.values() if row["text_map"] and row["rank_distance"]]
    if sum(row["n"] for row in rows) < 2:
        return ""
    keys = ("text_map", "rank_distance")
    # equal to 1e-5: a rotation keeps the similarities only up to float rounding (~1e-7 here)
    same = all(row[key][1] <= 1e-5 * abs(row[key][0]) and math.isclose(row[key][0], rows[0][key][0], rel_tol=1e-5)
               for row in rows for key in keys)
    if not same:
        return ""
    return ("\n\nThe caption-pool mAP and rank distance are the same in every run: the runs rank captions against "
            "captions identically (a frozen text encoder, e.g. under an orthogonal head), so these two columns "
            "cannot show an α effect; language bias can move only in the image → caption pool (img→ml mAP).")


def _long_tables(bench: str, table: dict[float, dict], columns: dict[str, list[str]]) -> str:
    """Group means per α, then one row per language (grouped) with a column per α."""
    head = ["α", "runs"] + [f"{g} ({len(langs)})" for g, langs in columns.items()]
    head += ["img→ml mAP", "txt→ml mAP", "rank distance"]
    lines = [f"### {bench}: text→image R@10 (%), group means (languages per group), multilingual settings",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for alpha, row in table.items():
        cells = [f"{alpha:g}", str(row["n"])] + [_cell(row["groups"].get(g)) for g in columns]
        cells += [_cell(row["image_map"]), _cell(row["text_map"]), _cell(row["rank_distance"], scale=1.0)]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["group", "lang"] + [f"α={alpha:g}" for alpha in table]
    lines += ["", f"### {bench}: text→image R@10 (%) per language and α", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, langs in columns.items():
        for lang in langs:
            cells = [group, lang] + [_cell(row["t2i_r@10"].get(lang)) for row in table.values()]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baseline_recall(doc: dict, file: Path) -> dict[str, float]:
    """Per language, the caption X → English R@1 of a text-only result (the untrained encoder's)."""
    try:
        r1 = doc["summary"]["crosslingual"]["r@1"]
        return {lang: _number(row["en"], f"{file}: crosslingual.r@1.{lang}.en") for lang, row in r1.items()
                if lang != "en"}
    except (KeyError, TypeError) as e:
        raise ValueError(f"--baseline {file}: not a text-only result with English captions "
                         f"(crosslingual r@1 to en; {type(e).__name__}: {e})") from e


def alpha_gain(table: dict[float, dict]) -> tuple[float, dict[str, float]] | None:
    """The α > 0 with the best mean R@10 over languages, and per language its R@10 minus α = 0's (so a
    gain may be negative: α = 0 itself is never picked, which would make every gain zero by construction);
    None without α = 0 or another α."""
    if 0.0 not in table or len(table) < 2:
        return None
    langs = list(table[0.0]["t2i_r@10"])
    best = max((a for a in table if a > 0), key=lambda a: statistics.fmean(
        table[a]["t2i_r@10"][lang][0] for lang in langs if lang in table[a]["t2i_r@10"]))
    return best, {lang: table[best]["t2i_r@10"][lang][0] - table[0.0]["t2i_r@10"][lang][0] for lang in langs
                  if lang in table[best]["t2i_r@10"]}


def gain_against_baseline(table: dict[float, dict], baseline: dict[str, float]) -> dict | None:
    """R@10 gain from α = 0 to the best α > 0 beside the untrained encoder's X → en R@1, with their Pearson r."""
    gain = alpha_gain(table)
    if gain is None:
        return None
    best, per_lang = gain
    points = {lang: (baseline[lang], g) for lang, g in per_lang.items() if lang in baseline}
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    r = (statistics.correlation(xs, ys) if len(points) > 2 and len(set(xs)) > 1 and len(set(ys)) > 1
         else None)
    return {"best_alpha": best, "points": points, "pearson_r": r}


def gain_section(bench: str, gain: dict | None, groups: dict[str, list[str]]) -> str:
    """Markdown lines on the α gain against the untrained encoder's X → en R@1 (empty without a baseline)."""
    if gain is None:
        return ""
    r = "n/a" if gain["pearson_r"] is None else f"{gain['pearson_r']:.2f}"
    lines = ["", f"R@10 gain from α = 0 to α = {gain['best_alpha']:g} (the best α > 0 over all languages) against the "
             f"untrained encoder's caption X → English R@1: Pearson r = {r} over {len(gain['points'])} languages.",
             "", "| group | languages | mean gain (points) |", "|---|---|---|"]
    for group, langs in groups.items():
        present = [gain["points"][lang][1] for lang in langs if lang in gain["points"]]
        if present:
            lines.append(f"| {group} | {len(present)} | {100 * statistics.fmean(present):+.1f} |")
    return "\n".join(lines)


def write_plots(bench: str, table: dict[float, dict], groups: dict[str, list[str]], out: Path,
                gain: dict | None = None) -> list[Path]:
    columns = language_columns(table, groups)
    percent = lambda v: (100 * v[0], 100 * v[1])  # noqa: E731
    paths = []
    if columns and sum(map(len, columns.values())) > WIDE_TABLE_LANGUAGES:
        values = {lang: {a: 100 * row["t2i_r@10"][lang][0] for a, row in table.items() if lang in row["t2i_r@10"]}
                  for langs in columns.values() for lang in langs}
        paths.append(plot_language_heatmap(values, columns, f"{bench}: text→image R@10 (%), mean over seeds",
                                           out / f"{bench}_r10_heatmap.png"))
    elif columns:
        series, styles = {}, {}
        for group, langs in columns.items():
            for lang in langs:
                name = f"{lang} ({group})"
                series[name] = {a: percent(row["t2i_r@10"][lang])
                                for a, row in table.items() if lang in row["t2i_r@10"]}
                styles[name] = GROUP_STYLES.get(group, "-")
        paths.append(plot_against_alpha(series, "text→image R@10 (%)", f"{bench}: R@10 per language against α",
                                        out / f"{bench}_r10_vs_alpha.png", styles))
    if gain is not None and gain["points"]:
        r = "" if gain["pearson_r"] is None else f" (Pearson r = {gain['pearson_r']:.2f})"
        points = {lang: (100 * x, 100 * y) for lang, (x, y) in gain["points"].items()}
        paths.append(plot_group_scatter(
            points, columns, "untrained encoder: caption X → English R@1 (%)",
            f"R@10 gain, α = {gain['best_alpha']:g} minus α = 0 (points)",
            f"{bench}: what α buys against what the encoder knew{r}",
            out / f"{bench}_gain_vs_untrained.png"))
    maps = {name: {a: percent(row[key]) for a, row in table.items() if row[key]}
            for name, key in (("image → multilingual captions", "image_map"),
                              ("caption → multilingual captions", "text_map"))}
    maps = {name: points for name, points in maps.items() if points}
    if maps:
        paths.append(plot_against_alpha(maps, "mAP (%)", f"{bench}: multilingual mAP against α",
                                        out / f"{bench}_map_vs_alpha.png"))
    rd = {"caption pool": {a: row["rank_distance"] for a, row in table.items() if row["rank_distance"]}}
    if rd["caption pool"]:
        paths.append(plot_against_alpha(rd, "rank distance (lower: less language bias)",
                                        f"{bench}: rank distance against α",
                                        out / f"{bench}_rank_distance_vs_alpha.png"))
    return paths


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
            baselines[str(doc["meta"].get("benchmark"))] = baseline_recall(doc, file)
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
    sections = [markdown_table(bench, table, groups) + caption_pool_note(table)
                + gain_section(bench, gains.get(bench), groups) for bench, table in tables.items()]
    batches = batches_by_alpha(runs, groups)
    report = "\n\n".join(sections + ([batches_section(batches)] if batches else [])) + "\n"
    print(report)
    print(f"{len(runs)} result file(s)")
    written = [save_output(parser.prog, "report", args.out / "report.md",
                           lambda: write_text_atomic(args.out / "report.md", report)),
               save_output(parser.prog, "report data", args.out / "report.json",
                           lambda: write_json_atomic(args.out / "report.json", {
                               "groups": groups, "inputs": [str(r.path) for r in runs], "gain_vs_untrained": gains,
                               "batches": {str(a): row for a, row in batches.items()},
                               "benchmarks": {b: {str(a): row for a, row in t.items()} for b, t in tables.items()}})),
               save_output(parser.prog, "plots", args.out,
                           lambda: [write_plots(bench, table, groups, args.out, gains.get(bench))
                                           for bench, table in tables.items()])]
    return 0 if all(written) else 1


if __name__ == "__main__":
    raise SystemExit(main())
