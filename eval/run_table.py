"""The plain-text table of one demo run: per language and group, text→image R@10 on each test split, R@1 and
zero-shot top-1 on the first, the untrained encoder's caption X → English R@1, the multilingual settings, and the
real-XTD10 check (trained against untrained caption X → English R@1)."""
from __future__ import annotations

import statistics

from mclip_hbt.languages import XTD_LANGS


def results_table(results: dict[str, dict], baselines: dict[str, dict], groups: dict[str, list[str]]) -> str:
    """Per-language rows and group means (with the number of languages) on every test split, the
    untrained encoder's caption X → English R@1 beside them when given, and the real-XTD10 check."""
    benches = [b for b in results if b != "xtd10_text" and not b.startswith("zeroshot_")]
    first = benches[0]
    monos = {b: results[b]["summary"]["monolingual"] for b in benches}
    zeroshot = results.get(f"zeroshot_{first}", {}).get("summary", {}).get("zeroshot_classification", {})
    base_r1 = baselines.get(first, {}).get("summary", {}).get("crosslingual", {}).get("r@1", {})
    header = f"{'group':<34}{'lang':<7}" + "".join(f"{b + ' R@10':>19}" for b in benches)
    header += f"{first + ' R@1':>18}" + (f"{'zero-shot top-1':>17}" if zeroshot else "")
    header += f"{'untrained X→en':>16}" if base_r1 else ""
    lines = ["text→image retrieval over 1000 test images per split (chance R@10 = 0.01); zero-shot top-1: each "
             "one-emoji picture among all the split's concept names; group rows are means over their (n) languages",
             header, "-" * len(header)]
    for group, members in groups.items():
        langs = [lang for lang in members if lang in monos[first]]
        if not langs:
            continue
        for lang in langs:
            row = f"{group:<34}{lang:<7}" + "".join(f"{monos[b][lang]['t2i_r@10']:>19.3f}" for b in benches)
            row += f"{monos[first][lang]['t2i_r@1']:>18.3f}"
            if zeroshot:
                row += f"{zeroshot[lang]['acc1']:>17.3f}" if lang in zeroshot else f"{'':>17}"
            if base_r1:
                row += f"{base_r1[lang]['en']:>16.3f}" if lang != "en" and lang in base_r1 else f"{'':>16}"
            lines.append(row)
        means = "".join(f"{statistics.fmean(monos[b][lang]['t2i_r@10'] for lang in langs):>19.3f}" for b in benches)
        if zeroshot and all(lang in zeroshot for lang in langs):
            means += f"{'':>18}{statistics.fmean(zeroshot[lang]['acc1'] for lang in langs):>17.3f}"
        lines.append(f"{group + ' (' + str(len(langs)) + ')':<34}{'mean':<7}{means}")
        lines.append("")
    for b in benches:
        mi, mt = results[b]["summary"]["multilingual_image"], results[b]["summary"]["multilingual_text"]
        lines.append(f"{b}: multilingual image→caption pool mAP {mi['map']:.3f}, R@10 {mi['r@10']:.3f}; caption "
                     f"pool mAP {mt['map']:.3f}, rank distance {mt['rank_distance']:.1f}")
    if "xtd10_text" in results and "xtd10_text" in baselines:
        trained = results["xtd10_text"]["summary"]["crosslingual"]["r@1"]
        untrained = baselines["xtd10_text"]["summary"]["crosslingual"]["r@1"]
        langs = [lang for lang in XTD_LANGS if lang != "en"]
        lines.append("")
        lines.append(f"{'real XTD10 captions, caption X → English R@1 (text-only)':>58}: "
                     + " ".join(f"{lang:>6}" for lang in langs))
        for name, r1 in (("trained", trained), ("untrained", untrained)):
            lines.append(f"{name:>58}: " + " ".join(f"{r1[lang]['en']:>6.3f}" for lang in langs))
        drop = max(untrained[lang]["en"] - trained[lang]["en"] for lang in langs)
        lines.append(f"{'largest drop, trained below untrained':>58}: {drop:.3f} (the demo must stay within 0.02)")
    return "\n".join(lines)
