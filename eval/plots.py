"""Figures: our per-language scores beside published reference rows, and metrics against α."""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402

from mclip_hbt.fileio import write_bytes_atomic  # noqa: E402

from .references import ReferenceRow  # noqa: E402
from .results import pivot_language  # noqa: E402


@dataclass
class LanguagePanel:
    """One bar chart: our scores per language (fractions) and reference rows of the same metric."""

    title: str
    ylabel: str
    ours_label: str
    ours: dict[str, float]
    references: Sequence[ReferenceRow] = field(default_factory=list)


def language_panel(name: str, summary: dict, langs: Sequence[str], model_name: str, metric: str, metric_label: str,
                   references: Sequence[ReferenceRow] = ()) -> LanguagePanel:
    """``summary.monolingual[lang][metric]`` beside the references; for text-only runs, caption X→pivot R@1."""
    if summary["monolingual"]:
        return LanguagePanel(title=f"{name}: {metric_label}", ylabel=f"{metric_label} (%)", ours_label=model_name,
                             ours={lang: summary["monolingual"][lang][metric] for lang in langs},
                             references=references)
    pivot = pivot_language(list(langs))
    return LanguagePanel(title=f"{name}: caption X→{pivot} R@1", ylabel="R@1 (%)", ours_label=model_name,
                         ours={lang: summary["crosslingual"]["r@1"][lang][pivot] for lang in langs if lang != pivot})


def _save(fig, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically: a full disk leaves no half-written file."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")  # legends placed outside the axes stay in the file
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())
    return path


def plot_language_panels(panels: Sequence[LanguagePanel], path: str | Path) -> Path:
    """Grouped bars per language (ours first, then each reference row marked "(published)"), in percent."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.9 * max(len(p.ours) for p in panels) + 3),
                                                      3.8 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        langs = list(panel.ours)
        series = [(panel.ours_label, panel.ours)] + [(r.label, r.fractions()) for r in panel.references]
        width = 0.8 / len(series)
        for s, (label, values) in enumerate(series):
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(langs))]
            heights = [100 * values[lang] if lang in values else 0.0 for lang in langs]
            ax.bar(xs, heights, width, label=label, hatch=None if s == 0 else "//", alpha=1.0 if s == 0 else 0.6)
        ax.set_xticks(range(len(langs)), langs)
        ax.set_ylabel(panel.ylabel)
        ax.set_ylim(0, 100)
        ax.set_title(panel.title)
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    return _save(fig, path)


def plot_against_alpha(series: Mapping[str, Mapping[float, tuple[float, float]]], ylabel: str, title: str,
                       path: str | Path, styles: Mapping[str, str] | None = None) -> Path:
    """Lines of ``series[name][alpha] = (mean, std)``; ``styles[name]`` is a matplotlib line style."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        alphas = sorted(points)
        means = [points[a][0] for a in alphas]
        stds = [points[a][1] for a in alphas]
        ax.errorbar(alphas, means, yerr=stds, label=name, marker="o", capsize=3,
                    linestyle=(styles or {}).get(name, "-"))
    ax.set_xlabel("α (probability of a monolingual batch)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # Beside the axes: inside, it covered the curves of low-scoring languages.
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_language_heatmap(values: Mapping[str, Mapping[float, float]], groups: Mapping[str, Sequence[str]],
                          title: str, path: str | Path, label: str = "text→image R@10 (%)",
                          diverging: bool = False) -> Path:
    """Language (rows, in ``groups`` order, groups separated by lines) × α (columns) of percentages;
    ``diverging`` centres a red–blue scale on 0, for changes."""
    langs = [lang for members in groups.values() for lang in members if lang in values]
    alphas = sorted({a for row in values.values() for a in row})
    grid = [[values[lang].get(a, float("nan")) for a in alphas] for lang in langs]
    height = 1.5 + 0.16 * len(langs)
    fig, ax = plt.subplots(figsize=(4.0 + 0.9 * len(alphas), height))
    scale = {"cmap": "viridis"}
    if diverging:
        bound = max((abs(v) for row in grid for v in row if not math.isnan(v)), default=1.0) or 1.0
        scale = {"cmap": "RdBu", "vmin": -bound, "vmax": bound}
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", **scale)
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(langs)), langs, fontsize=6)
    ax.set_xlabel("α (probability of a monolingual batch)")
    row = 0
    for group, members in groups.items():
        present = [lang for lang in members if lang in values]
        if not present:
            continue
        ax.text(len(alphas) - 0.4, row + len(present) / 2 - 0.5, f"{group} ({len(present)})", fontsize=7,
                va="center", ha="left")
        row += len(present)
        if row < len(langs):
            ax.axhline(row - 0.5, color="black" if diverging else "white", linewidth=1.5)
    # A tall figure (a hundred languages) would otherwise stretch the colour bar to its full height.
    fig.colorbar(image, ax=ax, label=label, pad=0.45, fraction=0.08, shrink=min(1.0, 6.0 / height))
    ax.set_title(title)
    return _save(fig, path)


def plot_group_scatter(points: Mapping[str, tuple[float, float]], groups: Mapping[str, Sequence[str]],
                       xlabel: str, ylabel: str, title: str, path: str | Path) -> Path:
    """One labelled point per language, coloured by its group."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for group, members in groups.items():
        present = [lang for lang in members if lang in points]
        if not present:
            continue
        ax.scatter([points[lang][0] for lang in present], [points[lang][1] for lang in present],
                   label=f"{group} ({len(present)})", s=18)
        for lang in present:
            ax.annotate(lang, points[lang], fontsize=5, xytext=(2, 2), textcoords="offset points")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
