"""eval.report: three saved runs with different α, evaluated by eval.xtd, merged into a table and α plots."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_recipes.synth_scenes import generate
from eval import report, report_data, xtd
from mclip_hbt.model.clip import create_model
from mclip_hbt.paths import REPO_ROOT

ALPHAS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Three run folders: a saved tiny model with the trainer's train_meta.json, and eval/xtd.json."""
    root = tmp_path_factory.mktemp("runs")
    generate(root / "synth", train_samples=1, test_samples=20, image_size=32, progress=False)
    split = root / "synth" / "test"
    folders = []
    for i, alpha in enumerate(ALPHAS):
        run = root / f"alpha{alpha}"
        torch.manual_seed(i)  # a different random tiny model per run, so the rows differ
        create_model("tiny").save_pretrained(run / "model")
        (run / "model" / "train_meta.json").write_text(json.dumps({"alpha": alpha, "seed": 0, "steps": 10}))
        assert xtd.main(["--model", str(run / "model"), "--images", str(split), "--captions", str(split),
                         "--dataset", "synth", "--out", str(run / "eval" / "xtd.json"), "--no-progress"]) == 0
        folders.append(run)
    return folders


def test_evaluator_copies_the_training_meta(runs):
    meta = json.loads((runs[1] / "eval" / "xtd.json").read_text())["meta"]
    assert meta["train"] == {"alpha": 0.5, "seed": 0, "steps": 10}


def test_report_over_three_runs_writes_table_and_alpha_plots(runs, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "eval.report", *map(str, runs), "--out", str(out),
                           "--groups", "high=en,de,es,fr,zh;low=it,pl,tr;unseen=ru,ko,ja"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = (out / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| α")]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "0.5", "1"]
    header = next(line for line in table.splitlines() if line.startswith("| α"))
    for column in ("high: en", "low: it", "unseen: ja", "high mean", "low mean", "unseen mean", "rank distance"):
        assert column in header
    for name in ("synth_r10_vs_alpha.png", "synth_map_vs_alpha.png", "synth_rank_distance_vs_alpha.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "report.json").read_text())
    assert sorted(data["benchmarks"]["synth"]) == ["0.0", "0.5", "1.0"]


def result_doc(r10: dict[str, float], text_map: float, rd: float) -> dict:
    mono = {lang: {"t2i_r@10": v} for lang, v in r10.items()}
    return {"results": [], "meta": {"benchmark": "xtd10"},
            "summary": {"monolingual": mono, "crosslingual": None, "multilingual_image": None,
                        "multilingual_text": {"map": text_map, "rank_distance": rd, "per_language": {}}}}


def test_labels_give_alpha_and_seeds_are_averaged(tmp_path, capsys):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(result_doc({"en": 0.50, "ru": 0.10}, text_map=0.20, rd=100.0)))
    b.write_text(json.dumps(result_doc({"en": 0.70, "ru": 0.30}, text_map=0.40, rd=300.0)))
    assert report.main([str(a), str(b), "--out", str(tmp_path / "r"), "--groups", "high=en;unseen=ru",
                        "--label", str(a), "alpha=0.5,seed=1", "--label", str(b), "alpha=0.5,seed=2"]) == 0
    row = json.loads((tmp_path / "r" / "report.json").read_text())["benchmarks"]["xtd10"]["0.5"]
    assert row["n"] == 2 and row["seeds"] == [1, 2]
    assert row["t2i_r@10"]["en"] == pytest.approx([0.6, 0.1414213], abs=1e-6)  # mean, sample std
    assert row["rank_distance"] == pytest.approx([200.0, 141.42135], abs=1e-4)
    assert "60.0 ± 14.1" in (tmp_path / "r" / "report.md").read_text()


def test_a_caption_pool_that_no_run_changes_is_called_out(tmp_path):
    # Two alphas, two seeds: the image side differs, the caption pool is the same in all four runs (a frozen
    # encoder), and the report says that those columns cannot show an alpha effect. One run that differs
    # and the note is gone.
    def write(name, r10, text_map):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(result_doc({"en": r10}, text_map=text_map, rd=250.0)))
        return path

    files = [write(f"a{alpha}s{seed}", 0.3 + alpha / 10 + seed / 100, 0.12) for alpha in (0, 1) for seed in (0, 1)]
    labels = [arg for f in files for arg in ("--label", str(f), f"alpha={f.stem[1]},seed={f.stem[3]}")]
    assert report.main([*map(str, files), "--out", str(tmp_path / "same"), "--groups", "high=en", *labels]) == 0
    note = "cannot show an α effect"
    assert note in (tmp_path / "same" / "report.md").read_text()
    files[-1].write_text(json.dumps(result_doc({"en": 0.5}, text_map=0.13, rd=250.0)))
    assert report.main([*map(str, files), "--out", str(tmp_path / "moved"), "--groups", "high=en", *labels]) == 0
    assert note not in (tmp_path / "moved" / "report.md").read_text()


def test_result_without_alpha_is_refused_with_a_hint(tmp_path, capsys):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(result_doc({"en": 0.5}, text_map=0.2, rd=1.0)))
    with pytest.raises(SystemExit) as exc:
        report.main([str(a), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--label" in capsys.readouterr().err


def test_world_groups_many_languages_heatmap_and_gain_against_the_untrained_encoder(tmp_path):
    """14 languages of a world (two outside pre-training): long tables, a heat map, and a gain whose
    correlation with the untrained encoder's X→en R@1 is exact here (gain = baseline / 2)."""
    langs = ["en", "de", "fr", "sw", "am", "cy", "km", "is", "so", "ne", "te", "my", "yo", "zu"]
    world = [{"lang": lang, "group": "high" if i < 3 else "low" if i < 6 else "unseen",
              "in_pretraining": lang not in ("yo", "zu")} for i, lang in enumerate(langs)]
    (tmp_path / "languages.json").write_text(json.dumps({"languages": world}))
    baseline_r1 = {lang: 0.05 * i for i, lang in enumerate(langs) if lang != "en"}
    baseline = {"results": [], "meta": {"benchmark": "emoji_seen"},
                "summary": {"monolingual": {}, "multilingual_image": None, "multilingual_text": None,
                            "crosslingual": {"r@1": {lang: {"en": r} for lang, r in baseline_r1.items()}}}}
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    files = []
    for alpha in (0.0, 0.5, 1.0):
        # α = 0.5 is best on average; its gain over α = 0 is half the language's baseline R@1.
        r10 = {lang: 0.2 + (baseline_r1.get(lang, 0.0) / 2 if alpha == 0.5 else 0.0) for lang in langs}
        doc = result_doc(r10, text_map=0.3, rd=50.0)
        doc["meta"] = {"benchmark": "emoji_seen", "train": {"alpha": alpha, "seed": 0}}
        files.append(tmp_path / f"a{alpha}.json")
        files[-1].write_text(json.dumps(doc))
    out = tmp_path / "r"
    assert report.main([*map(str, files), "--out", str(out), "--world", str(tmp_path / "languages.json"),
                        "--baseline", str(tmp_path / "baseline.json")]) == 0
    md = (out / "report.md").read_text()
    assert "| α | runs | high, in pre-training (3) | low, in pre-training (3) | unseen, in pre-training (6) | " \
           "unseen, outside pre-training (2) |" in md
    assert "| unseen, outside pre-training | zu | 20.0 | 52.5 | 20.0 |" in md
    gain = json.loads((out / "report.json").read_text())["gain_vs_untrained"]["emoji_seen"]
    assert gain["best_alpha"] == 0.5 and gain["pearson_r"] == pytest.approx(1.0)
    assert gain["points"]["zu"] == pytest.approx([0.65, 0.325])
    for name in ("emoji_seen_r10_heatmap.png", "emoji_seen_r10_change_heatmap.png", "emoji_seen_gain_vs_untrained.png",
                 "emoji_seen_map_vs_alpha.png"):
        assert (out / name).stat().st_size > 0


def test_batches_as_drawn_are_averaged_per_training_run(tmp_path):
    def batches(mono_steps, sw_share):
        return {"steps": 10, "monolingual_steps": mono_steps, "fallbacks": {"buffer_full": 2},
                "monolingual_share": {"en": 1.0, "de": 1.0, "sw": sw_share}}

    files = []
    for seed, (mono, share) in enumerate([(4, 0.5), (6, 0.7)]):
        doc = result_doc({"en": 0.5, "sw": 0.2}, text_map=0.2, rd=100.0)
        doc["meta"]["train"] = {"alpha": 0.5, "seed": seed, "batches": batches(mono, share)}
        for split in ("seen", "unseen"):  # two results of one run count once
            files.append(tmp_path / f"seed{seed}" / f"{split}.json")
            files[-1].parent.mkdir(exist_ok=True)
            files[-1].write_text(json.dumps({**doc, "meta": {**doc["meta"], "benchmark": split}}))
    assert report.main([str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out", str(tmp_path / "r"),
                        "--groups", "high=en,de;low=sw;unseen=yo"]) == 0
    row = json.loads((tmp_path / "r" / "report.json").read_text())["batches"]["0.5"]
    assert row["n"] == 2
    assert row["monolingual_steps"] == pytest.approx([0.5, 0.1414213], abs=1e-6)
    assert row["share"]["high"] == [1.0, 0.0] and "unseen" not in row["share"]
    assert row["share"]["low"] == pytest.approx([0.6, 0.1414213], abs=1e-6)
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| 0.5 | 2 | 50.0 ± 14.1 | 100.0 | 60.0 ± 14.1 |" in text


def test_the_gain_compares_alpha_zero_with_the_best_other_alpha_even_when_zero_is_best():
    def row(en, sw):
        return {"t2i_r@10": {"en": (en, 0.0), "sw": (sw, 0.0)}}

    table = {0.0: row(0.50, 0.20), 0.5: row(0.45, 0.22), 1.0: row(0.40, 0.21)}
    best, gains = report_data.alpha_gain(table)
    assert best == 0.5  # α = 0 has the best mean, but a gain against itself would be zero everywhere
    assert gains == pytest.approx({"en": -0.05, "sw": 0.02})
    # A text-only benchmark (a text-learning sweep scores the real XTD10 captions) has no image R@10 to gain in.
    assert report_data.alpha_gain({0.0: {"t2i_r@10": {}}, 1.0: {"t2i_r@10": {}}}) is None


def test_zero_shot_results_get_a_table_of_their_own_per_alpha_and_group(tmp_path):
    # An alpha sweep's run folders hold eval.xtd and eval.zeroshot results side by side; the report reads both.
    for alpha, seed, acc in ((0.0, 0, 0.40), (0.0, 1, 0.50), (1.0, 0, 0.20)):
        run = tmp_path / f"alpha{alpha:g}_seed{seed}" / "eval"
        run.mkdir(parents=True)
        train = {"alpha": alpha, "seed": seed}
        (run / "emoji_seen.json").write_text(json.dumps({**result_doc({"en": 0.5, "yo": 0.2}, 0.1, 50.0),
                                                         "meta": {"benchmark": "emoji_seen", "train": train}}))
        scores = {"en": {"acc1": acc, "acc5": 0.9, "mean_per_class_recall": acc},
                  "yo": {"acc1": acc / 2, "acc5": 0.5, "mean_per_class_recall": acc / 2}}
        (run / "zeroshot_emoji_seen.json").write_text(json.dumps({
            "results": [], "summary": {"zeroshot_classification": scores},
            "meta": {"benchmark": "emoji_seen", "task": "zeroshot_classification", "train": train}}))
    assert report.main([str(tmp_path), "--out", str(tmp_path / "r"), "--groups", "high=en;unseen=yo"]) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["zeroshot"]["emoji_seen"]["0.0"]["n"] == 2
    assert data["zeroshot"]["emoji_seen"]["0.0"]["groups"]["high"][0] == pytest.approx(0.45)
    assert data["zeroshot"]["emoji_seen"]["1.0"]["groups"]["unseen"][0] == pytest.approx(0.10)
    assert data["benchmarks"]["emoji_seen"]["0.0"]["n"] == 2  # the retrieval rows are unchanged by them
    text = (tmp_path / "r" / "report.md").read_text()
    assert "emoji_seen: zero-shot classification, top-1 accuracy" in text and "| 0 | 2 | 45.0 ± 7.1 |" in text


def test_a_result_named_twice_counts_once_and_an_alpha_outside_0_1_is_refused(tmp_path, capsys):
    run = tmp_path / "runs" / "a.json"
    run.parent.mkdir()
    run.write_text(json.dumps({**result_doc({"en": 0.5}, 0.1, 10.0),
                               "meta": {"benchmark": "xtd10", "train": {"alpha": 0.5, "seed": 0}}}))
    assert report.main([str(run), str(run), str(run.parent), "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["benchmarks"]["xtd10"]["0.5"]["n"] == 1
    for alpha in (float("nan"), 7):
        run.write_text(json.dumps({**result_doc({"en": 0.5}, 0.1, 10.0),
                                   "meta": {"benchmark": "xtd10", "train": {"alpha": alpha, "seed": 0}}}))
        with pytest.raises(SystemExit) as exit_info:
            report.main([str(run), "--out", str(tmp_path / "r2")])
        assert exit_info.value.code == 2 and "not a probability in [0, 1]" in capsys.readouterr().err


def test_captions_only_results_are_tabled_against_the_untrained_encoder(tmp_path, capsys):
    # A text-learning sweep scores the real XTD10 captions without images: the report gives each language's
    # caption → English R@1 per α (seed mean ± std) under the untrained encoder's, and the language that lost most.
    def doc(r1: dict[str, float], text_map: float, rd: float, train: dict | None) -> dict:
        return {"results": [], "meta": {"benchmark": "xtd10", **({"train": train} if train else {})},
                "summary": {"monolingual": {}, "multilingual_image": None,
                            "multilingual_text": {"map": text_map, "rank_distance": rd, "per_language": {}},
                            "crosslingual": {"r@1": {"en": {lang: 0.5 for lang in r1},
                                                     **{lang: {"en": r} for lang, r in r1.items()}}}}}

    (tmp_path / "untrained.json").write_text(json.dumps(doc({"de": 0.90, "ja": 0.20}, 0.18, 1780.0, None)))
    for alpha, seed, de, ja in ((0.0, 0, 0.92, 0.16), (0.0, 1, 0.90, 0.18), (1.0, 0, 0.91, 0.19),
                                (0.5, 0, 0.9001, 0.2)):
        run = tmp_path / "sweep" / f"alpha{alpha:g}_seed{seed}"
        run.mkdir(parents=True)
        (run / "xtd10_text.json").write_text(json.dumps(doc({"de": de, "ja": ja}, 0.5, 1200.0 + 100 * alpha,
                                                            {"alpha": alpha, "seed": seed})))
    out = tmp_path / "r"
    baseline = ["--baseline", str(tmp_path / "untrained.json")]
    assert report.main([str(tmp_path / "sweep"), "--out", str(out), *baseline]) == 0
    md = (out / "report.md").read_text()
    assert "| α | runs | de | ja | mean | worst change | txt→ml mAP | rank distance |" in md
    assert "| untrained | – | 90.0 | 20.0 | 55.0 | – | 18.0 | 1780.0 |" in md
    assert "| 0 | 2 | 91.0 ± 1.4 | 17.0 ± 1.4 | 54.0 | -3.0 (ja) | 50.0 | 1200.0 |" in md
    assert "| 1 | 1 | 91.0 | 19.0 | 55.0 | -1.0 (ja) | 50.0 | 1300.0 |" in md
    # A frozen encoder matches the untrained one up to float noise: no language is named as having lost.
    assert "| 0.5 | 1 | 90.0 | 20.0 | 55.0 | 0.0 | 50.0 | 1250.0 |" in md
    assert "text→image R@10" not in md  # no image retrieval table for captions alone
    data = json.loads((out / "report.json").read_text())
    assert data["baselines"]["xtd10"]["x2en_r@1"] == {"de": 0.90, "ja": 0.20}
    assert data["benchmarks"]["xtd10"]["0.0"]["x2en_r@1"]["ja"] == pytest.approx([0.17, 0.0141421], abs=1e-6)
    # A captions-only result whose recall is not a number is refused, naming the field.
    bad = doc({"de": 0.9}, 0.5, 1.0, {"alpha": 0.5, "seed": 0})
    bad["summary"]["crosslingual"]["r@1"]["de"]["en"] = "high"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "bad.json"), "--out", str(tmp_path / "r2")])
    assert exit_info.value.code == 2 and "crosslingual.r@1.de.en" in capsys.readouterr().err
