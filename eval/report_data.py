"""The report's numbers: reading the result JSONs of eval.xtd / eval.m3c (each run's α, seed and summaries),
the language groups, and the aggregates over seeds per benchmark and α (recalls, mAP, rank distance, the
batches as drawn, the α gain against the untrained encoder)."""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mclip_hbt.fileio import parse_json
from mclip_hbt.languages import canonical_lang


@dataclass
class RunResult:
    path: Path
    alpha: float
    seed: int | None
    summaries: dict[str, dict]  # benchmark (part) → summary
    batches: dict | None = None  # the batches it drew (mclip_hbt.data.hybrid.summarize_records)
    zeroshot: dict[str, dict] | None = None  # benchmark → language → eval.zeroshot's scores


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


def _measured(value: object, what: str) -> float:
    """A figure read from a result file: a JSON number, finite (a recall written as text is a damaged file)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def parse_label(text: str) -> tuple[float, int | None]:
    """``"alpha=0.5,seed=1"`` → (0.5, 1); the seed may be left out."""
    fields = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    if "alpha" not in fields:
        raise ValueError(f"label {text!r} has no alpha=")
    return (_alpha(fields["alpha"].strip(), f"alpha in label {text!r}"),
            _number(fields["seed"].strip(), f"seed in label {text!r}", int) if "seed" in fields else None)


def _alpha(value: object, what: str) -> float:
    """An α: a probability, so a number in [0, 1] (NaN or 7 would make table rows of their own)."""
    alpha = _number(value, what)
    if not 0.0 <= alpha <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{what} is {value!r}, not a probability in [0, 1]")
    return alpha


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
    files (a previous report.json, ...) are passed over. A file reached twice (named, and inside a folder
    named too) counts once."""
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
    return list({file.resolve(): file for file in files}.values())


def check_summary(summary: object, where: str) -> dict:
    """One benchmark's summary, checked for the fields the report reads; a ValueError naming ``where``."""
    if not isinstance(summary, dict) or not isinstance(summary.get("monolingual"), dict):
        raise ValueError(f"{where} is not a summary of eval.xtd / eval.m3c (no 'monolingual' object)")
    for lang, metrics in summary["monolingual"].items():
        if not isinstance(metrics, dict):
            raise ValueError(f"{where}.monolingual.{lang} is {metrics!r}, not an object")
        _measured(metrics.get("t2i_r@10"), f"{where}.monolingual.{lang}.t2i_r@10")
    crosslingual = summary.get("crosslingual")
    if not summary["monolingual"] and crosslingual:  # captions only: the report reads X → English R@1
        recall = crosslingual.get("r@1") if isinstance(crosslingual, dict) else None
        if not isinstance(recall, dict):
            raise ValueError(f"{where}.crosslingual.r@1 is {recall!r}, not an object")
        for lang, row in recall.items():
            if not isinstance(row, dict):
                raise ValueError(f"{where}.crosslingual.r@1.{lang} is {row!r}, not an object")
            if lang != "en" and "en" in row:
                _measured(row["en"], f"{where}.crosslingual.r@1.{lang}.en")
    for setting, keys in (("multilingual_image", ("map",)), ("multilingual_text", ("map", "rank_distance"))):
        values = summary.get(setting)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{where}.{setting} is {values!r}, not an object")
        for key in keys:
            _measured(values.get(key), f"{where}.{setting}.{key}")
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
        alpha = _alpha(train["alpha"], f"{file}: meta.train.alpha")
        seed = None if train.get("seed") is None else _number(train["seed"], f"{file}: meta.train.seed", int)
    elif label is not None:
        alpha, seed = parse_label(label)
    else:
        raise ValueError(f"{file} names no α (no meta.train); give --label {file} alpha=A,seed=S")
    batches = train.get("batches") if isinstance(train, dict) else None
    batches = check_batches(batches, f"{file}: meta.train.batches") if batches is not None else None
    summary = doc["summary"]
    if isinstance(summary, dict) and "zeroshot_classification" in summary:
        bench = str(doc["meta"].get("benchmark"))
        return RunResult(file, alpha, seed, {}, batches,
                         {bench: check_zeroshot(summary["zeroshot_classification"], f"{file}: summary")})
    return RunResult(file, alpha, seed, summaries_by_benchmark(doc, file), batches)


def check_batches(batches: object, where: str) -> dict:
    """The trainer's summary of the batches a run drew, checked for the fields the report reads."""
    if not isinstance(batches, dict) or not isinstance(batches.get("monolingual_share"), dict):
        raise ValueError(f"{where} is not the trainer's batch summary (no 'monolingual_share' object)")
    for key in ("steps", "monolingual_steps"):
        _measured(batches.get(key), f"{where}.{key}")
    for lang, share in batches["monolingual_share"].items():
        _measured(share, f"{where}.monolingual_share.{lang}")
    return batches


def check_zeroshot(scores: object, where: str) -> dict:
    """eval.zeroshot's per-language scores, checked for the accuracy the report reads."""
    if not isinstance(scores, dict):
        raise ValueError(f"{where}.zeroshot_classification is {scores!r}, not an object")
    for lang, metrics in scores.items():
        _measured(metrics.get("acc1") if isinstance(metrics, dict) else None,
                  f"{where}.zeroshot_classification.{lang}.acc1")
    return scores


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[RunResult], groups: dict[str, list[str]]) -> dict[str, dict[float, dict]]:
    """benchmark → α → {"n": runs, "seeds", "t2i_r@10": {lang: (mean, std)}, "groups": {group: (mean, std)},
    "x2en_r@1": {lang: (mean, std)} (captions-only results: caption X → English R@1), "image_map", "text_map",
    "rank_distance": (mean, std)}, from the runs' per-seed values."""
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
            if not mono and summary.get("crosslingual"):  # captions only: each language's retrieval of English
                for lang, row in summary["crosslingual"]["r@1"].items():
                    if lang != "en" and "en" in row:
                        s[f"x2en:{lang}"].append(row["en"])
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
                   "groups": {k[6:]: _mean_std(v) for k, v in s.items() if k.startswith("group:")},
                   "x2en_r@1": {k[5:]: _mean_std(v) for k, v in s.items() if k.startswith("x2en:")}}
            for key in ("image_map", "text_map", "rank_distance"):
                row[key] = _mean_std(s[key]) if s[key] else None
            out[bench][alpha] = row
    return out


def aggregate_zeroshot(runs: list[RunResult], groups: dict[str, list[str]]) -> dict[str, dict[float, dict]]:
    """benchmark → α → {"n": runs, "groups": {group: (mean, std) of the group's mean top-1 accuracy}}."""
    samples: dict[str, dict[float, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        for bench, scores in (run.zeroshot or {}).items():
            s = samples[bench][run.alpha]
            s["n"].append(1.0)
            for group, langs in {**groups, "all": list(scores)}.items():
                present = [scores[lang]["acc1"] for lang in langs if lang in scores]
                if present:
                    s[group].append(statistics.fmean(present))
    return {bench: {alpha: {"n": len(s.pop("n")), "groups": {g: _mean_std(v) for g, v in s.items()}}
                    for alpha, s in sorted(by_alpha.items())} for bench, by_alpha in samples.items()}


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


def language_columns(table: dict[float, dict], groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """Languages present in the results, grouped as given; those in no group go to "other"."""
    present = list(dict.fromkeys(lang for row in table.values() for lang in row["t2i_r@10"]))
    columns = {g: [lang for lang in langs if lang in present] for g, langs in groups.items()}
    other = [lang for lang in present if not any(lang in langs for langs in groups.values())]
    if other:
        columns["other"] = other
    return {g: langs for g, langs in columns.items() if langs}


#: Above this many languages a benchmark is laid out per language: its table transposed (languages as rows),
#: so it stays readable, and its R@10 plot a heat map.
WIDE_TABLE_LANGUAGES = 12


def read_baseline(doc: dict, file: Path) -> dict:
    """A captions-only result of the untrained encoder: per language its caption X → English R@1
    (``x2en_r@1``), and its caption-pool mAP and rank distance (None where it pooled no captions)."""
    try:
        r1 = doc["summary"]["crosslingual"]["r@1"]
        recall = {lang: _measured(row["en"], f"{file}: crosslingual.r@1.{lang}.en") for lang, row in r1.items()
                  if lang != "en"}
    except (KeyError, TypeError) as e:
        raise ValueError(f"--baseline {file}: not a text-only result with English captions "
                         f"(crosslingual r@1 to en; {type(e).__name__}: {e})") from e
    pool = doc["summary"].get("multilingual_text") or {}
    return {"x2en_r@1": recall, "text_map": pool.get("map"), "rank_distance": pool.get("rank_distance")}


def is_captions_only(table: dict[float, dict]) -> bool:
    """Whether a benchmark was scored on captions alone (caption → English R@1, no image retrieval)."""
    return not any(row["t2i_r@10"] for row in table.values()) and any(row["x2en_r@1"] for row in table.values())


def alpha_gain(table: dict[float, dict]) -> tuple[float, dict[str, float]] | None:
    """The α > 0 with the best mean R@10 over languages, and per language its R@10 minus α = 0's (so a
    gain may be negative: α = 0 itself is never picked, which would make every gain zero by construction);
    None without α = 0 or another α, or without image retrieval scores."""
    if 0.0 not in table or len(table) < 2:
        return None
    langs = list(table[0.0].get("t2i_r@10") or {})
    if not langs:  # a text-only benchmark (the real XTD10 captions of a text-learning sweep): no image R@10
        return None
    best = max((a for a in table if a > 0), key=lambda a: statistics.fmean(
        table[a]["t2i_r@10"][lang][0] for lang in langs if lang in table[a]["t2i_r@10"]))
    return best, {lang: table[best]["t2i_r@10"][lang][0] - table[0.0]["t2i_r@10"][lang][0] for lang in langs
                  if lang in table[best]["t2i_r@10"]}


def gain_against_baseline(table: dict[float, dict], baseline: dict) -> dict | None:
    """R@10 gain from α = 0 to the best α > 0 beside the untrained encoder's X → en R@1 (``read_baseline``), with
    their Pearson r."""
    gain = alpha_gain(table)
    if gain is None:
        return None
    best, per_lang = gain
    recall = baseline["x2en_r@1"]
    points = {lang: (recall[lang], g) for lang, g in per_lang.items() if lang in recall}
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    r = (statistics.correlation(xs, ys) if len(points) > 2 and len(set(xs)) > 1 and len(set(ys)) > 1
         else None)
    return {"best_alpha": best, "points": points, "pearson_r": r}
