"""The main job, end to end on one machine with no hub: data → offline encoder → hybrid training → evaluation.

    python demo.py                    # `make demo`: one run at alpha = 0.5, report in runs/demo/
    python demo.py sweep --alphas 0,0.25,0.5,0.75,1 --seeds 0,1,2 --steps 300    # `make sweep`

Stages: synthetic shards (``data_recipes.synth_scenes``, default resource profile: en de fr es zh
high-resource, it pl tr low-resource, ru ko ja unseen), the bundled multilingual-e5-small encoder,
``train.py`` with ``configs/e5-small-synth.yaml`` (e5-small text tower + a small open_clip ViT
trained from scratch), ``eval.xtd`` on the synthetic XTD-style test split (11 languages, every
setting) and on the real XTD10 captions (``--text-only``, beside the untrained encoder), and
``eval.report``. Every stage leaves its output in place and is skipped when re-run; an
interrupted training resumes from its last checkpoint. The synthetic data is kept beside ``--out``
(``OUT/../data/synth``) and shared by every run there, so a run asking for another
``--train-samples`` than the data there was made with is refused, before any work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from data_recipes.synth_scenes import generate
from data_recipes.worlds import SettingsMismatch
from eval.report import default_groups
from mclip_hbt.bundled import BUNDLED_E5, bundled_model_path
from mclip_hbt.paths import REPO_ROOT, shared_data_dir

CONFIG = REPO_ROOT / "configs" / "e5-small-synth.yaml"


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)


def stage_inputs(out: Path, train_samples: int) -> Path:
    """The synthetic shards beside ``out`` (shared by the demo and every sweep run) and the bundled encoder."""
    data_dir = out.parent / "data" / "synth"
    generate(data_dir, train_samples=train_samples, test_samples=1000, image_size=64, seed=0)
    bundled_model_path()
    return data_dir


def stage_train(run_dir: Path, data_dir: Path, alpha: float, seed: int, steps: int | None) -> Path:
    model_dir = run_dir / "model"
    if (model_dir / "config.json").is_file():
        print(f"[demo] {model_dir} exists, training skipped", flush=True)
        return model_dir
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(CONFIG), "--train-data",
           str(data_dir / "train"), "--alpha", str(alpha), "--seed", str(seed), "--output-dir", str(run_dir),
           "--resume", "auto"]
    if steps is not None:
        cmd += ["--max-steps", str(steps)]
    run(cmd)
    return model_dir


def stage_eval(model: str, out: Path, *, captions: Path | None = None, images: Path | None = None,
               dataset: str = "xtd10") -> Path:
    if out.is_file():
        print(f"[demo] {out} exists, evaluation skipped", flush=True)
        return out
    cmd = [sys.executable, "-m", "eval.xtd", "--lang", "all", "--model", model, "--out", str(out),
           "--plot", str(out.with_suffix(".png")), "--dataset", dataset]
    cmd += ["--captions", str(captions)] if captions else []
    cmd += ["--images", str(images)] if images else ["--text-only"]
    run(cmd)
    return out


def evaluate_run(run_dir: Path, model_dir: Path, data_dir: Path, real_xtd: bool) -> dict[str, Path]:
    results = {"synth": stage_eval(str(model_dir), run_dir / "eval" / "synth_xtd.json",
                                   captions=data_dir / "test", images=data_dir / "test" / "images",
                                   dataset="synth_scenes")}
    if real_xtd:
        results["xtd10_text"] = stage_eval(str(model_dir), run_dir / "eval" / "xtd10_text.json")
    return results


def print_table(synth: dict, xtd_trained: dict | None, xtd_untrained: dict | None) -> str:
    """Per-language rows grouped high-resource / low-resource / unseen (the training profile)."""
    mono = synth["summary"]["monolingual"]
    header = f"{'group':<8}{'lang':<6}{'t2i R@1':>9}{'t2i R@10':>10}{'i2t R@10':>10}"
    if xtd_trained:
        header += f"{'XTD10 X→en R@1':>17}{'untrained':>11}"
    lines = ["Synthetic XTD-style test (1000 images; chance R@10 = 0.01)"
             + (" and real XTD10 captions (text-only)" if xtd_trained else ""), header, "-" * len(header)]
    for group, langs in default_groups().items():
        vals = []
        for lang in langs:
            m = mono[lang]
            vals.append(m["t2i_r@10"])
            row = f"{group:<8}{lang:<6}{m['t2i_r@1']:>9.3f}{m['t2i_r@10']:>10.3f}{m['i2t_r@10']:>10.3f}"
            if xtd_trained and lang != "en":
                row += (f"{xtd_trained['summary']['crosslingual']['r@1'][lang]['en']:>17.3f}"
                        f"{xtd_untrained['summary']['crosslingual']['r@1'][lang]['en']:>11.3f}")
            lines.append(row)
        lines.append(f"{group:<8}{'mean':<6}{'':>9}{sum(vals) / len(vals):>10.3f}")
    mi, mt = synth["summary"]["multilingual_image"], synth["summary"]["multilingual_text"]
    lines.append(f"multilingual image→caption pool: mAP {mi['map']:.3f}, R@10 {mi['r@10']:.3f}, "
                 f"rank distance {mi['rank_distance']:.1f}")
    lines.append(f"multilingual caption pool: mAP {mt['map']:.3f}, rank distance {mt['rank_distance']:.1f}")
    if xtd_trained:
        for name, res in (("trained", xtd_trained), ("untrained", xtd_untrained)):
            t = res["summary"]["multilingual_text"]
            lines.append(f"real XTD10 caption pool ({name}): mAP {t['map']:.3f}, "
                         f"rank distance {t['rank_distance']:.0f}")
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    return table


def demo(args: argparse.Namespace, data_dir: Path) -> None:
    out = args.out
    model_dir = stage_train(out, data_dir, args.alpha, args.seed, args.steps)
    results = evaluate_run(out, model_dir, data_dir, real_xtd=(shared_data_dir() / "xtd10").is_dir())
    untrained = None
    if "xtd10_text" in results:
        untrained = stage_eval(BUNDLED_E5, out.parent / "baselines" / "untrained_e5_xtd10_text.json")
    run([sys.executable, "-m", "eval.report", str(out / "eval"), "--out", str(out / "report")])
    table = print_table(_load(results["synth"]), _load(results.get("xtd10_text")), _load(untrained))
    (out / "results_table.txt").write_text(table + "\n")
    print(f"[demo] model: {model_dir}\n[demo] report: {out / 'report' / 'report.md'}", flush=True)


def _load(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path else None


def sweep(args: argparse.Namespace, data_dir: Path) -> None:
    out = args.out
    for alpha in args.alphas:
        for seed in args.seeds:
            run_dir = out / f"alpha{alpha:g}_seed{seed}"
            model_dir = stage_train(run_dir, data_dir, alpha, seed, args.steps)
            evaluate_run(run_dir, model_dir, data_dir, real_xtd=False)
    run([sys.executable, "-m", "eval.report", str(out), "--out", str(out / "report")])
    print((out / "report" / "report.md").read_text(), flush=True)


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"alpha must be in [0, 1], got {text}")
    return value


def _alphas(text: str) -> list[float]:
    values = [_alpha(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give comma-separated values in [0, 1], e.g. 0,0.5,1")
    return values


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError("give comma-separated integers, e.g. 0,1,2")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python demo.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for name, help_text, out in (("run", "one hybrid-batch run and its full evaluation (the default)", "runs/demo"),
                                 ("sweep", "train and evaluate every alpha × seed, then eval.report", "runs/sweep")):
        p = sub.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--out", type=Path, default=Path(out), help="output folder (the data goes beside it, in data/)")
        p.add_argument("--train-samples", type=_positive_int, default=20000, help="synthetic training images")
        p.add_argument("--steps", type=_positive_int, default=None,
                       help="optimizer steps per run (default: the config's)")
        if name == "run":
            p.add_argument("--alpha", type=_alpha, default=0.5, help="probability of a monolingual step")
            p.add_argument("--seed", type=int, default=0, help="training seed")
        else:
            p.add_argument("--alphas", type=_alphas, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="alphas to train")
            p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds per alpha")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "sweep", "-h", "--help"):
        argv = ["run", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        data_dir = stage_inputs(args.out, args.train_samples)
    except SettingsMismatch as err:  # raised before anything is written
        parser.error(f"--train-samples: {err.out} holds the demo's synthetic data, made with other settings "
                     f"({err.listed}); pass the --train-samples it was made with to use it, or delete that folder "
                     "(and the runs trained on it) to make new data")
    (demo if args.command == "run" else sweep)(args, data_dir)


if __name__ == "__main__":
    main()
