"""The result JSON the evaluators write, and its printed table.

Shape (recalls, mAP as fractions in [0, 1]; rank distances in ranks; ranks start at 1)::

    {
      "results": [                          # CLIP_benchmark's layout, one record per language
        {"dataset": "xtd10", "model": ..., "pretrained": ..., "task": "zeroshot_retrieval",
         "language": "de",                  # CLIP_benchmark's code: xtd10's Japanese is "jp"
         "metrics": {"image_retrieval_recall@1": .., "@5", "@10",      # text → image
                     "text_retrieval_recall@1": .., "@5", "@10"}}      # image → text
      ],                                    # empty for --text-only runs
      "summary": {
        "monolingual": {lang: {"t2i_r@1", "t2i_r@5", "t2i_r@10",
                               "i2t_r@1", "i2t_r@5", "i2t_r@10", "mean_recall"}},   # {} if text-only
        "crosslingual": {"r@1": {X: {Y: ..}}, "map": {X: {Y: ..}}},    # X→Y caption retrieval, X≠Y
        "multilingual_image": {"map", "r@1", "r@5", "r@10", "rank_distance"},        # null if text-only
        "multilingual_text": {"map", "rank_distance",
                              "per_language": {lang: {"map", "rank_distance"}}}
      },
      "meta": {"benchmark", "model" (the spec given), "model_name", "pretrained", "languages",
               "n_images", "n_unreadable_images", "unreadable_images" (files that could not be
               decoded: every pair involving one counts as a miss), "device", "seconds", "date",
               "versions", "text_only", "translate_test",
               "train" (the trainer's train_meta.json when the model is a saved run),
               "contamination": {split: {"known", "test_images", "trained_on", "examples", "note"}}
                   (how many of the split's images the model trained on, from train_meta.json's
                   benchmark_images; known is false when that record cannot tell), ...}
    }

Each record is also written as its own file, named as ``clip_benchmark eval`` names its own, in
``NAME_clip_benchmark/`` beside ``NAME.json`` (``clip_benchmark build NAME_clip_benchmark --output
NAME.csv`` reads them as they are). ``model``/``pretrained`` say what the model is: open_clip's
architecture and tag, or for a run trained here ``mclip_hbt:PRESET`` (``mclip_hbt:TEXT+VISION`` when
it was built from a config of its own) and the run's name.

``crosslingual`` and ``multilingual_*`` are null where they do not apply (fewer than two
languages; ``--translate-test``). ``eval.m3c`` writes the same document with ``summary`` keyed by
part (``{"multi30k": <summary>, "mscoco-1k": <summary>}``). Published reference numbers never
appear in this file.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from mclip_hbt.fileio import atomic_directory, write_json_atomic

#: CLIP_benchmark's language codes where they differ from ours: its xtd10 calls Japanese ``jp`` (its
#: crossmodal3600 uses ``ja`` as we do; M3C's parts and xFlickr&CO are not CLIP_benchmark datasets).
CLIP_BENCHMARK_LANGUAGES = {"xtd10": {"ja": "jp"}}
#: CLIP_benchmark's default ``--output`` template, so our record files sit beside its own.
RECORD_FILE_TEMPLATE = "{dataset}_{pretrained}_{model}_{language}_{task}.json"


def clip_benchmark_language(dataset: str, lang: str) -> str:
    return CLIP_BENCHMARK_LANGUAGES.get(dataset, {}).get(lang, lang)


def records_dir(path: str | Path) -> Path:
    """Where the CLIP_benchmark records of the result file ``path`` go: ``NAME_clip_benchmark/`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_clip_benchmark")


def is_records_folder(folder: Path) -> bool:
    """A folder ``write_results`` made: result records (JSON files) only."""
    return all(p.is_file() and p.suffix == ".json" for p in folder.iterdir())


def record_file_name(record: dict) -> str:
    """CLIP_benchmark's file name for a record, with characters a file name cannot hold (``/``, ``:``) as ``-``."""
    fields = {k: re.sub(r"[^\w.+=,@-]", "-", str(record[k])) for k in ("dataset", "pretrained", "model", "language",
                                                                       "task")}
    return RECORD_FILE_TEMPLATE.format(**fields)


def write_results(path: str | Path, records: list[dict], summary: dict, meta: dict) -> Path:
    """The result document at ``path``, and each record as its own file in ``records_dir(path)`` (the layout
    ``clip_benchmark build`` reads: one ``{dataset, model, pretrained, task, language, metrics}`` per file),
    that folder replaced whole so no record of an earlier run stays in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(records_dir(path)) as staging:
        for record in records:
            write_json_atomic(staging / record_file_name(record), record)
    write_json_atomic(path, {"results": records, "summary": summary, "meta": meta})
    return path


def save_output(prog: str, what: str, path: Path, write: Callable[[], object]) -> bool:
    """Run ``write`` (which writes ``what`` to ``path``) and say where it went. A write error at the
    end of a run (a full disk) is one line naming what was not written, not a traceback; the
    atomic writers leave no temporary file. Returns whether it was written."""
    try:
        write()
    except OSError as err:
        print(f"{prog}: error: {what} not written to {path}: {err.strerror or err}; free some space "
              "or choose another path", file=sys.stderr)
        return False
    print(f"{what}: {path}")
    return True


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ranks(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def pivot_language(langs: list[str]) -> str:
    """The language cross-lingual retrieval is shown against: English when present."""
    return "en" if "en" in langs else langs[0]


def format_summary(summary: dict, langs: list[str], title: str) -> str:
    """Per-language rows: image–text recalls and mean recall (%), X→pivot R@1 (%), caption-pool mAP
    (%) and rank distance; then the multilingual image-pool line."""
    mono, cross, text_pool = summary["monolingual"], summary["crosslingual"], summary["multilingual_text"]
    pivot = pivot_language(langs)
    header = (f"{'lang':<5} {'t2i@1':>6} {'t2i@5':>6} {'t2i@10':>6} {'i2t@1':>6} {'i2t@5':>6} {'i2t@10':>6} "
              f"{'meanR':>6} | {'→' + pivot + ' R@1':>9} | {'pool mAP':>8} {'pool RD':>8}")
    lines = [title, header, "-" * len(header)]
    for lang in langs:
        m = mono.get(lang, {})
        to_pivot = cross["r@1"][lang].get(pivot) if cross and lang != pivot else None
        pool = text_pool["per_language"].get(lang) if text_pool else None  # None: not a --pool-lang
        lines.append(
            f"{lang:<5} {_pct(m.get('t2i_r@1')):>6} {_pct(m.get('t2i_r@5')):>6} {_pct(m.get('t2i_r@10')):>6} "
            f"{_pct(m.get('i2t_r@1')):>6} {_pct(m.get('i2t_r@5')):>6} {_pct(m.get('i2t_r@10')):>6} "
            f"{_pct(m.get('mean_recall')):>6} | {_pct(to_pivot):>9} | "
            f"{_pct(pool['map'] if pool else None):>8} {_ranks(pool['rank_distance'] if pool else None):>8}")
    if text_pool:
        lines.append(f"multilingual caption pool: mAP {_pct(text_pool['map'])}  rank distance "
                     f"{text_pool['rank_distance']:.1f}")
    image_pool = summary["multilingual_image"]
    if image_pool:
        lines.append(f"multilingual image → caption pool: mAP {_pct(image_pool['map'])}  R@1/5/10 "
                     f"{_pct(image_pool['r@1'])}/{_pct(image_pool['r@5'])}/{_pct(image_pool['r@10'])}  "
                     f"rank distance {image_pool['rank_distance']:.1f}")
    return "\n".join(lines)
