"""The report's plots per benchmark: R@10 per language against α (when wide, a heat map of it and one of its
change from α = 0), the α gain against the untrained encoder, multilingual mAP and rank distance against α."""
from __future__ import annotations

from pathlib import Path

from .plots import plot_against_alpha, plot_group_scatter, plot_language_heatmap
from .report_data import WIDE_TABLE_LANGUAGES, language_columns

GROUP_STYLES = {"high": "-", "low": "--", "unseen": ":", "other": "-."}


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
        if 0.0 in table:  # what α does, without each language's level drowning it
            change = {lang: {a: v - row[0.0] for a, v in row.items()} for lang, row in values.items() if 0.0 in row}
            paths.append(plot_language_heatmap(change, columns, f"{bench}: R@10 change from α = 0 (points)",
                                               out / f"{bench}_r10_change_heatmap.png",
                                               label="R@10 minus α = 0's (points)", diverging=True))
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
