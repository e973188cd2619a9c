"""The report's markdown: per benchmark a table of R@10 by caption language and the multilingual settings
against α (transposed when wide), its notes and α-gain section, and the table of the batches as drawn."""
from __future__ import annotations

import math
import statistics

from .report_data import WIDE_TABLE_LANGUAGES, language_columns


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


def zeroshot_section(bench: str, table: dict[float, dict]) -> str:
    """Zero-shot classification (eval.zeroshot) against α: mean top-1 accuracy per language group."""
    groups = list(dict.fromkeys(g for row in table.values() for g in row["groups"]))
    head = ["α", "runs"] + [f"{g}" for g in groups]
    lines = [f"### {bench}: zero-shot classification, top-1 accuracy (%) by language group", "",
             "Each one-emoji test picture classified among the names of all the split's concepts in a language; "
             "group cells are means over the group's languages.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for alpha, row in table.items():
        lines.append("| " + " | ".join([f"{alpha:g}", str(row["n"])] + [_cell(row["groups"].get(g)) for g in groups])
                     + " |")
    return "\n".join(lines)


def _cell(value: tuple[float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std else "")


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


def captions_only_table(bench: str, table: dict[float, dict], baseline: dict | None) -> str:
    """A benchmark scored on captions only (the real XTD10 captions of a text-learning sweep): per α, each
    language's caption → English R@1 and the caption pool's mAP and rank distance, below the untrained encoder's
    (``baseline``, when given) with the largest loss against it."""
    langs = list(dict.fromkeys(lang for row in table.values() for lang in row["x2en_r@1"]))
    recall = baseline["x2en_r@1"] if baseline else {}
    head = ["α", "runs", *langs, "mean"] + (["worst change"] if recall else []) + ["txt→ml mAP", "rank distance"]
    lines = [f"### {bench} (captions only): caption X → English R@1 (%), caption pool"
             + (" — against the untrained encoder" if recall else ""), ""]
    if recall:
        lines += ["The worst change is the seed mean's R@1 minus the untrained encoder's in the language that lost "
                  "most (a text encoder that keeps what it knew stays above -2.0 everywhere).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if recall:
        known = [recall[lang] for lang in langs if lang in recall]
        cells = ["untrained", "–", *(_cell((recall[lang], 0.0)) if lang in recall else "–" for lang in langs),
                 _cell((statistics.fmean(known), 0.0)) if known else "–", "–",
                 _cell((baseline["text_map"], 0.0)) if baseline["text_map"] is not None else "–",
                 _cell((baseline["rank_distance"], 0.0), scale=1.0) if baseline["rank_distance"] is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    for alpha, row in table.items():
        scores = row["x2en_r@1"]
        per_seed_means = [scores[lang] for lang in langs if lang in scores]
        cells = [f"{alpha:g}", str(row["n"]), *(_cell(scores.get(lang)) for lang in langs)]
        cells.append(_cell((statistics.fmean(m for m, _ in per_seed_means), 0.0)) if per_seed_means else "–")
        if recall:
            changes = {lang: scores[lang][0] - recall[lang] for lang in langs if lang in scores and lang in recall}
            worst = min(changes, key=changes.get) if changes else None
            cells.append("–" if worst is None else _change_cell(100 * changes[worst], worst))
        cells += [_cell(row["text_map"]), _cell(row["rank_distance"], scale=1.0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _change_cell(points: float, lang: str) -> str:
    """The largest loss in points and its language; a change that rounds to zero names no language (a frozen
    encoder differs from the untrained one by float noise only, and "-0.0 (es)" would say es lost)."""
    return "0.0" if round(points, 1) == 0 else f"{points:+.1f} ({lang})"


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
