"""Training options: one dataclass, read from YAML, overridden by ``--kebab-case`` flags, checked before any work.

Every field's ``help`` is what ``train.py --help`` prints, so the dataclass is the documentation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import DataOptionError, epoch_length, expand_shards
from .languages import canonical_lang
from .model import CONFIG_NAME, MultilingualCLIPConfig

#: The option each ``build_loader`` parameter comes from, for messages that name it.
_DATA_OPTIONS = {"urls": "train_data", "weights": "train_data_weights", "samples_per_epoch": "samples_per_epoch"}
#: What each field type accepts (bool is an int in Python, so it is refused separately).
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}


def _opt(default: Any, help: str, **kw) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # model
    model: str = _opt("tiny", "Preset name (tiny, e5-small-vit-b32, xlmr-base-vit-b32, xlmr-large-vit-h14) or a saved "
                      "model directory.")
    model_overrides: dict = _opt(None, "Model config fields to override, as YAML/JSON (e.g. '{vision_pretrained: "
                                 "ckpt.pt}').", yaml=True)
    lock_image: bool = _opt(False, "LiT: freeze the image tower (see --image-unlocked-groups).")
    image_unlocked_groups: int = _opt(0, "With --lock-image, leave this many top layer groups of the image tower "
                                      "trainable.")
    text_unlocked_layers: int = _opt(-1, "Freeze the text encoder except its top N blocks; -1 trains all of it.")
    freeze_word_embeddings: bool = _opt(False, "Freeze the text encoder's token embedding matrix (most of its "
                                        "parameters).")
    text_length_groups: int = _opt(1, "Run the text encoder in N length-sorted groups per batch: less padding, fewer "
                                   "FLOPs (helps on CPUs; 1 = one pass).")
    grad_checkpointing: bool = _opt(False, "Recompute activations in the backward pass to save memory.")
    channels_last: bool = _opt(False, "Keep the image tower's weights and the pixels channels-last (NHWC): faster "
                               "convolutions on CPUs and tensor cores (EfficientNet-Lite0's forward and backward take "
                               "about a quarter less time on this project's 2-core CPU).")
    compile: bool = _opt(False, "torch.compile the model (dynamic shapes: captions are padded per batch).")
    # data
    train_data: str = _opt(None, "Training shards: brace patterns or directories; several sources joined by '::'.")
    train_data_weights: str = _opt(None, "Sampling weights of the '::' sources, e.g. '1::0.5' (resampled mode).")
    resampled: bool = _opt(False, "Draw shards with replacement (infinite stream; recommended for multi-node runs).")
    samples_per_epoch: int = _opt(None, "With --resampled: samples per rank per epoch (default: the shards' total / "
                                  "ranks).")
    workers: int = _opt(2, "DataLoader worker processes per rank (0 = decode in the main process).")
    chunk_size: int = _opt(32, "Samples per chunk that a worker hands to the hybrid batcher.")
    shuffle_buffer: int = _opt(1000, "Sample shuffle buffer per worker.")
    # hybrid batches (docs/design.md §2)
    alpha: float = _opt(0.5, "Probability that a step is monolingual (all captions in one language); 1-alpha: "
                        "cross-lingual.")
    lang_distribution: str = _opt("uniform", "How languages are drawn: uniform, proportional (to sample counts) or "
                                  "temperature.", choices=("uniform", "proportional", "temperature"))
    temperature: float = _opt(2.0, "Temperature tau for --lang-distribution temperature: p ∝ n^(1/tau).")
    languages: str = _opt(None, "Comma-separated languages to train on (default: every language in the shards).")
    text_pair_weight: float = _opt(0.0, "Weight lambda of the text–text InfoNCE between a caption and its translation "
                                   "(0 = off).")
    max_buffered_samples: int = _opt(512, "Ceiling on samples waiting in the hybrid batcher per process (they are "
                                     "saved in checkpoints).")
    fallback_after: int = _opt(64, "Chunks to read while filling a monolingual batch before falling back (logged).")
    # loss and optimisation
    loss: str = _opt("clip", "Contrastive loss: clip (symmetric InfoNCE) or siglip (sigmoid).",
                     choices=("clip", "siglip"))
    batch_size: int = _opt(64, "Global batch size (all processes together); each process gets batch_size / "
                           "num_processes.")
    max_steps: int = _opt(1000, "Optimizer steps to train.")
    lr: float = _opt(5e-4, "Peak learning rate (AdamW).")
    weight_decay: float = _opt(0.1, "AdamW weight decay (not applied to biases, norms, logit scale/bias).")
    beta1: float = _opt(0.9, "AdamW beta1.")
    beta2: float = _opt(0.98, "AdamW beta2.")
    eps: float = _opt(1e-6, "AdamW epsilon.")
    warmup_steps: int = _opt(100, "Linear warmup steps before the cosine decay.")
    grad_clip: float = _opt(1.0, "Clip the global gradient norm to this value (0 = off).")
    mixed_precision: str = _opt("no", "accelerate mixed precision: no, bf16 or fp16.", choices=("no", "bf16", "fp16"))
    max_nonfinite_steps: int = _opt(5, "Stop after this many consecutive steps with a non-finite loss (each is "
                                    "skipped).")
    seed: int = _opt(0, "Seed of the hybrid-batch draws, data order and initialisation.")
    # output
    output_dir: str = _opt("runs/train", "Where checkpoints, logs and the final model go.")
    log_every: int = _opt(10, "Log metrics every N steps.")
    report_to: str = _opt("tensorboard", "accelerate tracker(s): tensorboard, wandb, all or none.")
    checkpoint_every: int = _opt(200, "Save a resumable checkpoint every N steps (0 = only at the end or on SIGTERM).")
    keep_checkpoints: int = _opt(2, "Keep the newest N checkpoints.")
    resume: str = _opt("none", "Resume: 'auto' (newest complete checkpoint in output_dir, if any), a checkpoint folder "
                       "(OUTPUT_DIR/checkpoints/step_N), or 'none'.")

    @property
    def language_list(self) -> list[str] | None:
        return [canonical_lang(x) for x in self.languages.split(",") if x.strip()] if self.languages else None

    def dataset_lang_counts(self) -> dict[str, int] | None:
        """Per-language sample counts from the dataset.json beside each source's shards (for the draws);
        None when a source has none. Raises ``ValueError`` for a dataset.json that cannot be read."""
        counts: dict[str, int] = {}
        for stats_file in sorted({Path(s.url).parent / "dataset.json" for s in expand_shards(self.train_data)}):
            if not stats_file.is_file():
                return None
            try:
                for lang, c in json.loads(stats_file.read_text())["languages"].items():
                    counts[lang] = counts.get(lang, 0) + int(c["samples"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"cannot read per-language counts from {stats_file} ({type(err).__name__}: {err}); "
                                 "rebuild the shards with their recipe") from None
        return counts

    def validate(self, num_processes: int = 1) -> None:
        """Raise ``ValueError`` naming the option for any value that would fail later.

        Everything here is checked before a model is built, so a bad value costs seconds, not a model load.
        """
        def bad(option: str, why: str):
            raise ValueError(f"--{option.replace('_', '-')}: {why}")

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            if not isinstance(value, _FIELD_TYPES[f.type]) or (isinstance(value, bool) and f.type != "bool"):
                bad(f.name, f"must be of type {f.type}, got {value!r}")
            if f.type == "float" and not math.isfinite(value):
                bad(f.name, f"must be a finite number, got {value}")
            if "choices" in f.metadata and value not in f.metadata["choices"]:
                bad(f.name, f"must be one of {', '.join(f.metadata['choices'])}, got {value!r}")

        if self.model_overrides:
            known = {f.name for f in dataclasses.fields(MultilingualCLIPConfig)}
            unknown = sorted(set(self.model_overrides) - known)
            if unknown:
                bad("model_overrides", f"unknown model config field(s) {', '.join(map(str, unknown))}; "
                                       f"known: {', '.join(sorted(known))}")
            if (Path(self.model) / CONFIG_NAME).is_file():
                bad("model_overrides", f"cannot be applied to the saved model {self.model}")
        if not 0.0 <= self.alpha <= 1.0:
            bad("alpha", f"must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            bad("temperature", f"must be > 0, got {self.temperature}")
        if self.languages:
            try:
                self.language_list
            except ValueError as err:
                bad("languages", str(err))
        if not self.train_data:
            bad("train_data", "no training shards given")
        try:
            shards = expand_shards(self.train_data, self.train_data_weights)
        except DataOptionError as err:
            bad(_DATA_OPTIONS[err.option], str(err))
        except ValueError as err:  # a pattern webdataset cannot expand
            bad("train_data", str(err))
        missing = [s.url for s in shards if "://" not in s.url and not Path(s.url).is_file()]
        if missing:
            bad("train_data", f"{len(missing)} shard file(s) missing, e.g. {missing[:3]}; build shards with "
                              "python -m data_recipes.synth_scenes or python -m data_recipes.from_captions")
        try:
            epoch_length(shards, resampled=self.resampled, samples_per_epoch=self.samples_per_epoch,
                         world_size=num_processes, weighted=self.train_data_weights is not None)
        except DataOptionError as err:
            bad(_DATA_OPTIONS[err.option], str(err))
        try:
            lang_counts = self.dataset_lang_counts()
        except ValueError as err:
            bad("train_data", str(err))
        if self.language_list and lang_counts is not None:
            absent = [lang for lang in self.language_list if lang_counts.get(lang, 0) <= 0]
            if absent:
                bad("languages", f"no samples in {', '.join(absent)} in these shards (their dataset.json "
                                 f"counts {', '.join(sorted(lang_counts)) or 'no language'})")
        if num_processes > 1 and lang_counts is None and (self.lang_distribution != "uniform" or not self.languages):
            bad("train_data", "a distributed run draws languages from the per-language counts in dataset.json beside "
                              "the shards, and these have none: rebuild them with their recipe, or pass --languages "
                              "with --lang-distribution uniform")
        if self.batch_size < num_processes or self.batch_size % num_processes:
            bad("batch_size", f"{self.batch_size} cannot be split evenly over {num_processes} processes")
        for name in ("max_steps", "text_length_groups", "chunk_size", "max_buffered_samples", "fallback_after",
                     "max_nonfinite_steps", "log_every"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("lr", "warmup_steps", "weight_decay", "grad_clip", "text_pair_weight", "checkpoint_every",
                     "workers", "shuffle_buffer", "eps", "image_unlocked_groups"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, f"must be in [0, 1), got {getattr(self, name)}")
        if self.max_buffered_samples < self.batch_size // num_processes:
            bad("max_buffered_samples", f"must hold at least one local batch ({self.batch_size // num_processes} "
                                        f"samples), got {self.max_buffered_samples}")
        if not 0 <= self.seed < 2**32:
            bad("seed", f"must be in [0, 2**32), got {self.seed}")
        if self.keep_checkpoints < 1:
            bad("keep_checkpoints", "must be >= 1")
        if self.text_unlocked_layers < -1:
            bad("text_unlocked_layers", "must be -1 (train all) or >= 0")
        if self.resume not in ("auto", "none") and not Path(self.resume).is_dir():
            bad("resume", f"no checkpoint folder at {self.resume}; give 'auto', 'none' or a folder "
                          "OUTPUT_DIR/checkpoints/step_N")


def yaml_mapping(text: str) -> dict:
    """A ``--model-overrides`` value: a YAML/JSON mapping (argparse turns the error into a usage message)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON ({' '.join(str(err).split())}); "
                                         "write a mapping such as '{vision_pretrained: ckpt.pt}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a mapping such as '{{vision_pretrained: ckpt.pt}}', got {text!r}")
    return value


def _converter(f: dataclasses.Field):
    """How a flag's (or a YAML file's string) value becomes the field's type."""
    if f.metadata.get("yaml"):
        return yaml_mapping
    return {"int": int, "float": float}.get(f.type, str)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a MultilingualCLIP with hybrid batches (monolingual with probability alpha, "
                    "cross-lingual otherwise). Run as `accelerate launch train.py --config configs/NAME.yaml "
                    "[--option value ...]` or `python train.py ...` on one device. Flags override the YAML file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with any of the options below (keys in snake_case).")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "default": argparse.SUPPRESS}
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _converter(f)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)
    return parser


def parse_config(argv: list[str] | None = None, num_processes: int = 1) -> TrainConfig:
    """YAML file, then flags; refuse bad values with a message naming the option (exit code 2)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        try:
            values = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            parser.error(f"--config: cannot read {config_file}: {err}")
        if not isinstance(values, dict):
            parser.error(f"--config: {config_file} must hold a mapping of option: value")
        fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(map(str, values)) - set(fields))
        if unknown:
            parser.error(f"--config: unknown option(s) in {config_file}: {', '.join(unknown)}")
        for name, value in values.items():  # YAML reads 1e-3 as a string: convert it as the flag would
            if isinstance(value, str) and fields[name].type in ("int", "float"):
                try:
                    values[name] = _converter(fields[name])(value)
                except ValueError:
                    parser.error(f"--config: {name} in {config_file} must be a number, got {value!r}")
    values.update(args)
    config = TrainConfig(**values)
    try:
        config.validate(num_processes)
    except ValueError as err:
        parser.error(str(err))
    return config
