"""The main job, end to end on one machine with no hub: data → offline encoder → hybrid training → evaluation.

    python demo.py                    # `make demo`: one run at alpha = 0.5 on the emoji world, runs/demo/
    python demo.py run --world synth  # the same on synth_scenes (hand-written grammars, 11 languages)
    python demo.py sweep              # `make sweep`: alpha in {0, .25, .5, .75, 1} x seeds {0, 1, 2}

Worlds (both offline, both kept beside ``--out`` in ``OUT/../data/`` and shared by every run there):

- ``emoji`` (default, ``data_recipes.emoji_world``): Noto emoji pictures named by native speakers in
  the CLDR files, 104 evaluated languages — high-resource (every image), low-resource (5 % of images)
  and about 84 unseen, 20 of them outside the encoder's pre-training; a seen-concept and an
  unseen-concept test split. Trained with ``configs/e5-small-effnet-lite0-emoji.yaml``: the frozen
  bundled multilingual-e5-small (only its projection head trains, so the demo cannot make it worse on
  real text) and the ImageNet EfficientNet-Lite0 with its top layers unlocked. ``run`` scores the
  demo languages (the ten high-resource ones, five low-resource, four unseen: two inside, two outside
  the encoder's pre-training; ``--eval-languages all`` for every one); ``sweep`` scores all 104 on the
  seen-concept split and the demo languages on the unseen-concept split, and pools the demo languages.
- ``synth`` (``data_recipes.synth_scenes``): hand-written grammars in the 11 XTD10 languages, trained
  with ``configs/e5-small-synth.yaml`` (a small ViT from scratch, the encoder's top block unlocked).

Then ``eval.xtd`` on the world's test splits and on the real XTD10 captions (``--text-only``, beside
the untrained encoder), and ``eval.report``. Text-encoder outputs are cached in
``OUT/../cache/text_features`` (``mclip_hbt.retrieval.text_cache``): every run with the frozen encoder, and the
untrained encoder itself, encodes each caption once. Every stage leaves its output in place and is
skipped when re-run; an interrupted training resumes from its last checkpoint; data asked for with
other settings than the data already there is refused, before any work.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from data_recipes import emoji_world, synth_scenes
from data_recipes.worlds import SettingsMismatch
from eval.report_data import groups_from_world
from eval.run_table import results_table
from mclip_hbt.data.hybrid import HybridConfig
from mclip_hbt.fileio import OutputError, write_json_atomic
from mclip_hbt.languages import XTD_LANGS, parse_lang_list
from mclip_hbt.offline.bundled_e5 import BUNDLED_E5, bundled_model_path
from mclip_hbt.options import OptionError
from mclip_hbt.paths import REPO_ROOT, shared_data_dir
from mclip_hbt.processes import ChildProcesses


@dataclass(frozen=True)
class World:
    config: Path
    #: the same world with a text encoder that learns (``--setting text``); None where there is none
    text_config: Path | None
    #: benchmark name → test split folder under the world's data folder
    splits: dict[str, str]
    #: steps of `demo.py run` when --steps is not given (None: the config's, which every sweep run trains)
    demo_steps: int | None = None


WORLDS = {
    # The demo trains 300 steps, the sweep's runs the config's 200: at 200 steps α = 0.5 leaves the high-resource
    # languages at R@10 0.48 on test_seen (seeds 0-2: 0.476 ± 0.002), under the demo's 0.5 bar; 300 steps gave 0.59
    # (seed 0), where a higher lr (3e-3) at 200 steps gave 0.46.
    "emoji": World(REPO_ROOT / "configs" / "e5-small-effnet-lite0-emoji.yaml",
                   REPO_ROOT / "configs" / "e5-small-effnet-lite0-emoji-text.yaml",
                   {"emoji_seen": "test_seen", "emoji_unseen": "test_unseen"}, demo_steps=300),
    "synth": World(REPO_ROOT / "configs" / "e5-small-synth.yaml", None, {"synth_scenes": "test"}),
}
#: What `demo.py run` scores beside every high-resource language (the accuracy bar is on them): the first
#: five low-resource ones of the profile, and four unseen, two inside the encoder's pre-training (ha with
#: 0.3 GiB of CC-100) and two outside it. 19 languages, not all 104, so that a fresh clone's demo fits in
#: 20 minutes on 2 cores: encoding each language's test captions is most of its evaluation (docs/results.md).
DEMO_LOW = emoji_world.LOW_RESOURCE[:5]
#: What a run folder was trained with (config, data, alpha, seed, steps, extra train.py options).
DEMO_SETTINGS = "demo_settings.json"
DEMO_UNSEEN = ("hi", "ha", "yo", "zu")
#: Every stage process demo.py runs: a SIGTERM to demo.py reaches the stage running then.
STAGES = ChildProcesses()


def run(cmd: list[str], log: Path | None = None) -> None:
    """Run one stage; with ``log``, its output is appended there (runs going at once would interleave)."""
    print("+", " ".join(cmd) + (f"  > {log}" if log else ""), flush=True)
    if log is None:
        STAGES.run(cmd, cwd=REPO_ROOT)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        STAGES.run(cmd, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)


def stage_inputs(out: Path, world: str, train_samples: int) -> Path:
    """The world's data beside ``out`` (shared by the demo and every sweep run) and the bundled encoder."""
    data_dir = out.parent / "data" / world
    if world == "emoji":
        emoji_world.generate(data_dir, train_samples=train_samples, test_samples=1000, image_size=64, seed=0,
                             workers=min(2, os.cpu_count() or 1))
    else:
        synth_scenes.generate(data_dir, train_samples=train_samples, test_samples=1000, image_size=64, seed=0)
    bundled_model_path()
    return data_dir


def stage_train(run_dir: Path, data_dir: Path, config: Path, alpha: float, seed: int, steps: int | None,
                train_args: list[str], log: Path | None = None, keep_checkpoints: int | None = None) -> Path:
    """Train one run into ``run_dir``; a run train.py began there is kept or resumed only when asked for with the same
    settings (``run_dir/demo_settings.json``; not ``keep_checkpoints``, which changes no number), else refused."""
    model_dir = run_dir / "model"
    settings = {"config": str(config.resolve()), "train_data": str((data_dir / "train").resolve()), "alpha": alpha,
                "seed": seed, "steps": steps, "train_args": train_args}  # paths resolved: one folder, one spelling
    record, began = run_dir / DEMO_SETTINGS, (run_dir / "train_config.json").is_file() or model_dir.is_dir()
    if record.is_file() and _load(record) != settings and began:  # a record of options train.py refused binds nothing
        raise SystemExit(f"demo.py: error: {run_dir} holds a run made with other settings ({_load(record)}, not "
                         f"{settings}); choose another --out, or delete {run_dir} to train it again")
    if (model_dir / "config.json").is_file():
        if not record.is_file():
            raise SystemExit(f"demo.py: error: {run_dir} holds a model that demo.py did not record the settings of; "
                             "choose another --out, or delete it to train again")
        print(f"[demo] {model_dir} exists with these settings, training skipped", flush=True)
        return model_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, settings)
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config), "--train-data",
           str(data_dir / "train"), "--alpha", str(alpha), "--seed", str(seed), "--output-dir", str(run_dir),
           "--resume", "auto"]
    cmd += ["--max-steps", str(steps)] if steps is not None else []
    cmd += ["--keep-checkpoints", str(keep_checkpoints)] if keep_checkpoints else []
    run(cmd + train_args, log)
    return model_dir


def stage_eval(model: str, out: Path, langs: list[str], text_cache: Path, *, pool: list[str] | None = None,
               captions: Path | None = None, images: Path | None = None, dataset: str = "xtd10",
               log: Path | None = None) -> Path:
    """``eval.xtd`` on ``langs``, pooling ``pool`` (default: all of them); an existing result is kept
    when it scored exactly those."""
    pool = langs if pool is None else pool
    if out.is_file():
        meta = _load(out).get("meta", {})
        scored = meta.get("languages")
        if scored == langs and meta.get("pool_languages") == pool:
            print(f"[demo] {out} exists, evaluation skipped", flush=True)
            return out
        print(f"[demo] {out} scores other languages ({len(scored or [])} and {len(meta.get('pool_languages') or [])} "
              f"pooled, not the {len(langs)} and {len(pool)} asked); evaluating again", flush=True)
    cmd = [sys.executable, "-m", "eval.xtd", "--lang", ",".join(langs), "--pool-lang", ",".join(pool),
           "--model", model, "--out", str(out), "--dataset", dataset, "--text-cache", str(text_cache)]
    cmd += ["--captions", str(captions)] if captions else []
    cmd += ["--images", str(images), "--plot", str(out.with_suffix(".png"))] if images else ["--text-only"]
    run(cmd, log)
    return out


def world_languages(data_dir: Path, world: str, which: str) -> list[str]:
    """The languages a run scores: ``all`` the world has, ``demo`` (see DEMO_UNSEEN) or a list."""
    if world == "synth":
        return list(XTD_LANGS)
    table = json.loads((data_dir / emoji_world.LANGUAGES_FILE).read_text())["languages"]
    known = [row["lang"] for row in table]
    if which == "all":
        return known
    if which == "demo":
        return [row["lang"] for row in table
                if row["group"] == "high" or row["lang"] in DEMO_LOW or row["lang"] in DEMO_UNSEEN]
    asked = which.split(",")
    missing = [code for code in asked if code not in known]
    if missing:
        raise SystemExit(f"demo.py: error: --eval-languages: {', '.join(missing)} not in {data_dir} "
                         f"(it has {', '.join(known)})")
    return list(dict.fromkeys(["en", *asked]))


def scored_splits(world: str, langs: list[str],
                  other_split_langs: list[str] | None) -> list[tuple[str, str, list[str]]]:
    """(benchmark, split folder, languages) of each test split: the first in ``langs``, the others in
    ``other_split_langs`` when given."""
    return [(bench, split, langs if i == 0 or other_split_langs is None else other_split_langs)
            for i, (bench, split) in enumerate(WORLDS[world].splits.items())]


def evaluate_run(run_dir: Path, model_dir: Path, data_dir: Path, world: str, langs: list[str], text_cache: Path,
                 real_xtd: bool, pool: list[str] | None = None, log: Path | None = None,
                 other_split_langs: list[str] | None = None) -> dict[str, Path]:
    """Every test split of the world in ``langs``; with ``other_split_langs``, the splits after the first
    in those languages only."""
    splits = scored_splits(world, langs, other_split_langs)
    results = {bench: stage_eval(str(model_dir), run_dir / "eval" / f"{bench}.json", split_langs, text_cache,
                                 pool=pool, captions=data_dir / split, images=data_dir / split / "images",
                                 dataset=bench, log=log)
               for bench, split, split_langs in splits}
    if world == "emoji":  # zero-shot classification among each language's concept names, on the same splits
        for bench, split, split_langs in splits:
            results[f"zeroshot_{bench}"] = stage_zeroshot(str(model_dir), run_dir / "eval" / f"zeroshot_{bench}.json",
                                                          split_langs, data_dir / split, text_cache, log)
    if real_xtd:
        results["xtd10_text"] = stage_eval(str(model_dir), run_dir / "eval" / "xtd10_text.json", list(XTD_LANGS),
                                           text_cache, log=log)
    return results


def stage_zeroshot(model: str, out: Path, langs: list[str], split: Path, text_cache: Path,
                   log: Path | None = None) -> Path:
    """``eval.zeroshot`` on ``langs``; an existing result is kept when it scored exactly those."""
    if out.is_file() and _load(out).get("meta", {}).get("languages") == langs:
        print(f"[demo] {out} exists, zero-shot classification skipped", flush=True)
        return out
    run([sys.executable, "-m", "eval.zeroshot", "--lang", ",".join(langs), "--model", model, "--split", str(split),
         "--out", str(out), "--text-cache", str(text_cache)], log)
    return out


def untrained_baselines(out: Path, data_dir: Path, world: str, langs: list[str], text_cache: Path,
                        real_xtd: bool, world_splits: bool, pool: list[str] | None = None,
                        other_split_langs: list[str] | None = None) -> dict[str, Path]:
    """The untrained encoder, text-only: caption X → English R@1 on XTD10 and, with ``world_splits``, on each
    of the world's test splits (which also fills the text cache that every run with the frozen encoder reads),
    the splits after the first in ``other_split_langs`` only when given (as ``evaluate_run`` scores them)."""
    folder = out.parent / "baselines"
    splits = scored_splits(world, langs, other_split_langs) if world_splits else []
    results = {bench: stage_eval(BUNDLED_E5, folder / f"untrained_e5_{bench}_text.json", split_langs, text_cache,
                                 pool=pool, captions=data_dir / split, dataset=bench)
               for bench, split, split_langs in splits}
    if real_xtd:
        results["xtd10_text"] = stage_eval(BUNDLED_E5, folder / "untrained_e5_xtd10_text.json", list(XTD_LANGS),
                                           text_cache)
    return results


def synth_groups() -> dict[str, list[str]]:
    """high / low / unseen languages of synth_scenes' default training profile."""
    _, fractions = synth_scenes.resolve_profile("default")
    return {"high": [lang for lang, p in fractions.items() if p == 1.0],
            "low": [lang for lang, p in fractions.items() if 0.0 < p < 1.0],
            "unseen": [lang for lang, p in fractions.items() if p == 0.0]}


def group_table(world: str, data_dir: Path) -> dict[str, list[str]]:
    return groups_from_world(data_dir / emoji_world.LANGUAGES_FILE) if world == "emoji" else synth_groups()


def report_group_args(world: str, data_dir: Path) -> list[str]:
    """eval.report's grouping flags for a world: its languages.json, or synth_scenes' profile groups."""
    if world == "emoji":
        return ["--world", str(data_dir / emoji_world.LANGUAGES_FILE)]
    return ["--groups", ";".join(f"{group}={','.join(langs)}" for group, langs in synth_groups().items() if langs)]


def demo(args: argparse.Namespace, data_dir: Path) -> None:
    out, world = args.out, args.world
    text_cache = out.parent / "cache" / "text_features"
    langs = world_languages(data_dir, world, args.eval_languages)
    real_xtd = (shared_data_dir() / "xtd10").is_dir()
    model_dir = stage_train(out, data_dir, setting_config(args), args.alpha, args.seed,
                            args.steps or WORLDS[world].demo_steps, args.train_args)
    results = evaluate_run(out, model_dir, data_dir, world, langs, text_cache, real_xtd)
    baselines = untrained_baselines(out, data_dir, world, langs, text_cache, real_xtd, world_splits=False)
    run([sys.executable, "-m", "eval.report", str(out / "eval"), "--out", str(out / "report"),
         *report_group_args(world, data_dir)])
    table = results_table({k: _load(v) for k, v in results.items()}, {k: _load(v) for k, v in baselines.items()},
                          group_table(world, data_dir))
    print("\n" + table + "\n", flush=True)
    (out / "results_table.txt").write_text(table + "\n")
    print(f"[demo] model: {model_dir}\n[demo] report: {out / 'report' / 'report.md'}", flush=True)


def setting_config(args: argparse.Namespace) -> Path:
    """The training config of ``--setting``: the frozen encoder, or the one that learns."""
    world = WORLDS[args.world]
    return world.text_config if args.setting == "text" else world.config


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def sweep(args: argparse.Namespace, data_dir: Path) -> None:
    out, world = args.out, args.world
    text_cache = out.parent / "cache" / "text_features"
    langs = world_languages(data_dir, world, args.eval_languages)
    # Every language scored alone; the pools (whose cost grows with the square of their size) hold the demo's.
    pool = [lang for lang in world_languages(data_dir, world, "demo") if lang in langs]
    # Each run's real-text retrieval against the untrained encoder's (a frozen encoder reads it from the cache).
    real_xtd = (shared_data_dir() / "xtd10").is_dir()
    # The untrained encoder first, with every core: it fills the text cache, which the frozen runs then only read.
    baselines = untrained_baselines(out, data_dir, world, langs, text_cache, real_xtd=real_xtd, world_splits=True,
                                    pool=pool, other_split_langs=pool)
    # Seed-major, so that a sweep stopped early holds whole alpha curves.
    todo = [(alpha, seed) for seed in args.seeds for alpha in args.alphas]
    if args.jobs > 1:  # the runs' processes split the cores (inherited by every stage they start)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))

    def train_and_evaluate(alpha: float, seed: int) -> None:
        run_dir = out / f"alpha{alpha:g}_seed{seed}"
        log = run_dir / "sweep.log" if args.jobs > 1 else None
        model_dir = stage_train(run_dir, data_dir, setting_config(args), alpha, seed, args.steps, args.train_args,
                                log, keep_checkpoints=1)  # a checkpoint holds the model and the batcher's buffer
        # The seen-concept split in every language; the unseen-concept one in the pooled languages only: at
        # 104 languages each split's cross-lingual matrix is a large part of a run (docs/results.md).
        evaluate_run(run_dir, model_dir, data_dir, world, langs, text_cache, real_xtd=real_xtd, pool=pool, log=log,
                     other_split_langs=pool)

    failed = []
    with ThreadPoolExecutor(args.jobs) as executor:
        futures = {executor.submit(train_and_evaluate, alpha, seed): (alpha, seed) for alpha, seed in todo}
        for done, future in enumerate(as_completed(futures), 1):
            alpha, seed = futures[future]
            error = future.exception()
            if error is not None:
                failed.append(f"alpha {alpha:g} seed {seed} ({error})")
            print(f"[sweep] {done}/{len(todo)}: alpha {alpha:g} seed {seed} "
                  f"{'failed' if error else 'done'}", flush=True)
    STAGES.check()  # stopped: the runs' failures are the stop, not faults to list
    if failed:  # every other run finished; re-running the sweep redoes only these
        raise SystemExit("demo.py sweep: these runs failed, see their sweep.log or the output above: "
                         + "; ".join(failed))
    report = [sys.executable, "-m", "eval.report", str(out), "--out", str(out / "report")]
    report += [arg for path in baselines.values() for arg in ("--baseline", str(path))]
    run(report + report_group_args(world, data_dir))
    print((out / "report" / "report.md").read_text(), flush=True)


def _eval_languages(text: str) -> str:
    """``demo``, ``all`` or comma-separated language codes (canonicalised, e.g. tl → fil)."""
    if text in ("demo", "all"):
        return text
    try:
        return ",".join(parse_lang_list(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _alpha(text: str) -> float:
    """A value train.py's --alpha takes (the batcher's HybridConfig checks it)."""
    try:
        return HybridConfig(alpha=float(text)).alpha
    except OptionError as err:
        raise argparse.ArgumentTypeError(f"alpha {err.message}") from None


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


def _train_args(text: str) -> list[str]:
    """train.py options, checked by train.py's own parser now rather than minutes later in a run."""
    from mclip_hbt.train.config import build_parser as train_parser

    args = shlex.split(text)
    try:
        _, unknown = train_parser().parse_known_args(args)
    except SystemExit:
        raise argparse.ArgumentTypeError(f"train.py refuses {text!r} (its message is above)") from None
    if unknown:
        raise argparse.ArgumentTypeError(f"not train.py options: {' '.join(unknown)}")
    return args


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
                                 ("sweep", "alpha × seed runs (one checkpoint each), then eval.report", "runs/sweep")):
        p = sub.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--out", type=Path, default=Path(out), help="output folder (the data goes beside it, in data/)")
        p.add_argument("--world", choices=sorted(WORLDS), default="emoji",
                       help="emoji: real CLDR names in 104 languages; synth: hand-written grammars in 11")
        p.add_argument("--train-samples", type=_positive_int, default=20000, help="training images of the world")
        p.add_argument("--eval-languages", type=_eval_languages, default="demo" if name == "run" else "all",
                       help="languages scored on the emoji world's test splits: demo (every high-resource "
                            "one, five low-resource, four unseen), all (104), or comma-separated codes; a sweep "
                            "pools the demo languages (multilingual pools, cross-lingual targets)")
        p.add_argument("--steps", type=_positive_int, default=None,
                       help="optimizer steps per run (default: the config's; `run` on the emoji world: 300)")
        p.add_argument("--setting", choices=("frozen", "text"), default="frozen",
                       help="frozen: the text encoder frozen under a rotation (configs/e5-small-effnet-lite0-emoji"
                            ".yaml); text: LoRA adapters on every block of it learn "
                            "(configs/e5-small-effnet-lite0-emoji-text.yaml), and every run is also scored on the "
                            "real XTD10 captions against the untrained encoder")
        p.add_argument("--train-args", type=_train_args, default=[],
                       help="extra train.py options for every run, as one string, e.g. "
                            "'--text-lora-rank 8 --text-distill-weight 0.5' (recorded with the run; last, so they win)")
        if name == "run":
            p.add_argument("--alpha", type=_alpha, default=0.5, help="probability of a monolingual step")
            p.add_argument("--seed", type=int, default=0, help="training seed")
        else:
            p.add_argument("--alphas", type=_alphas, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="alphas to train")
            p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds per alpha")
            p.add_argument("--jobs", type=_positive_int, default=1,
                           help="runs trained at once, each with cores / jobs threads and its output in "
                                "RUN/sweep.log (small models on a few cores use the cores better that way)")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "sweep", "-h", "--help"):
        argv = ["run", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():  # the data goes beside it: OUT/../data
        parser.error(f"--out: {args.out} is a file; name a folder (its data goes beside it, in data/)")
    if args.setting == "text" and WORLDS[args.world].text_config is None:
        parser.error(f"--setting text: the {args.world} world has no text-learning config; use --world emoji")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with STAGES.forwarding_signals():
        run_command(parser, args)


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        data_dir = stage_inputs(args.out, args.world, args.train_samples)
    except OutputError as err:  # the user's own files where the data goes: refused, before anything is written
        parser.error(str(err))
    except SettingsMismatch as err:  # raised before anything is written
        parser.error(f"--train-samples: {err.out} holds the demo's {args.world} data, made with other settings "
                     f"({err.listed}); pass the --train-samples it was made with to use it, or delete that folder "
                     "(and the runs trained on it) to make new data")
    (demo if args.command == "run" else sweep)(args, data_dir)


if __name__ == "__main__":
    main()
