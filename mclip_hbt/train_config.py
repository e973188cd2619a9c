"""Training options: one dataclass, read from YAML, overridden by ``--kebab-case`` flags, checked before any work.

Every field's ``help`` is what ``train.py --help`` prints, so the dataclass is the documentation.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import expand_shards
from .languages import canonical_lang


def _opt(default: Any, help: str, **kw) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # model
    model: str = _opt("tiny", "Preset name (tiny, e5-small-vit-b32, xlmr-base-vit-b32, xlmr-large-vit-h14) or a saved model directory.")
    model_overrides: dict = _opt(None, "Model config fields to override, as YAML/JSON (e.g. '{vision_pretrained: ckpt.pt}').", yaml=True)
    lock_image: bool = _opt(False, "LiT: freeze the image tower (see --image-unlocked-groups).")
    image_unlocked_groups: int = _opt(0, "With --lock-image, leave this many top layer groups of the image tower trainable.")
    text_unlocked_layers: int = _opt(-1, "Freeze the text encoder except its top N blocks; -1 trains all of it.")
    freeze_word_embeddings: bool = _opt(False, "Freeze the text encoder's token embedding matrix (most of its parameters).")
    text_length_groups: int = _opt(1, "Run the text encoder in N length-sorted groups per batch: less padding, fewer FLOPs (helps on CPUs; 1 = one pass).")
    grad_checkpointing: bool = _opt(False, "Recompute activations in the backward pass to save memory.")
    compile: bool = _opt(False, "torch.compile the model (dynamic shapes: captions are padded per batch).")
    # data
    train_data: str = _opt(None, "Training shards: brace patterns or directories; several sources joined by '::'.")
    train_data_weights: str = _opt(None, "Sampling weights of the '::' sources, e.g. '1::0.5' (resampled mode).")
    resampled: bool = _opt(False, "Draw shards with replacement (infinite stream; recommended for multi-node runs).")
    samples_per_epoch: int = _opt(None, "With --resampled: samples per rank per epoch (default: the shards' total / ranks).")
    workers: int = _opt(2, "DataLoader worker processes per rank (0 = decode in the main process).")
    chunk_size: int = _opt(32, "Samples per chunk that a worker hands to the hybrid batcher.")
    shuffle_buffer: int = _opt(1000, "Sample shuffle buffer per worker.")
    # hybrid batches (DESIGN.md §2)
    alpha: float = _opt(0.5, "Probability that a step is monolingual (all captions in one language); 1-alpha: cross-lingual.")
    lang_distribution: str = _opt("uniform", "How languages are drawn: uniform, proportional (to sample counts) or temperature.", choices=("uniform", "proportional", "temperature"))
    temperature: float = _opt(2.0, "Temperature tau for --lang-distribution temperature: p ∝ n^(1/tau).")
    languages: str = _opt(None, "Comma-separated languages to train on (default: every language in the shards).")
    text_pair_weight: float = _opt(0.0, "Weight lambda of the text–text InfoNCE between a caption and its translation (0 = off).")
    max_buffered_samples: int = _opt(512, "Ceiling on samples waiting in the hybrid batcher per process (they are saved in checkpoints).")
    fallback_after: int = _opt(64, "Chunks to read while filling a monolingual batch before falling back (logged).")
    # loss and optimisation
    loss: str = _opt("clip", "Contrastive loss: clip (symmetric InfoNCE) or siglip (sigmoid).", choices=("clip", "siglip"))
    batch_size: int = _opt(64, "Global batch size (all processes together); each process gets batch_size / num_processes.")
    max_steps: int = _opt(1000, "Optimizer steps to train.")
    lr: float = _opt(5e-4, "Peak learning rate (AdamW).")
    weight_decay: float = _opt(0.1, "AdamW weight decay (not applied to biases, norms, logit scale/bias).")
    beta1: float = _opt(0.9, "AdamW beta1.")
    beta2: float = _opt(0.98, "AdamW beta2.")
    eps: float = _opt(1e-6, "AdamW epsilon.")
    warmup_steps: int = _opt(100, "Linear warmup steps before the cosine decay.")
    grad_clip: float = _opt(1.0, "Clip the global gradient norm to this value (0 = off).")
    mixed_precision: str = _opt("no", "accelerate mixed precision: no, bf16 or fp16.", choices=("no", "bf16", "fp16"))
    max_nonfinite_steps: int = _opt(5, "Stop after this many consecutive steps with a non-finite loss (each is skipped).")
    seed: int = _opt(0, "Seed of the hybrid-batch draws, data order and initialisation.")
    # output
    output_dir: str = _opt("runs/train", "Where checkpoints, logs and the final model go.")
    log_every: int = _opt(10, "Log metrics every N steps.")
    report_to: str = _opt("tensorboard", "accelerate tracker(s): tensorboard, wandb, all or none.")
    checkpoint_every: int = _opt(200, "Save a resumable checkpoint every N steps (0 = only at the end or on SIGTERM).")
    keep_checkpoints: int = _opt(2, "Keep the newest N checkpoints.")
    resume: str = _opt("none", "Resume: 'auto' (newest checkpoint in output_dir, if any), a checkpoint directory, or 'none'.")

    @property
    def language_list(self) -> list[str] | None:
        return [canonical_lang(x) for x in self.languages.split(",") if x.strip()] if self.languages else None

    def validate(self, num_processes: int = 1) -> None:
        """Raise ``ValueError`` naming the option for any value that would fail later."""
        def bad(option: str, why: str):
            raise ValueError(f"--{option.replace('_', '-')}: {why}")

        if not 0.0 <= self.alpha <= 1.0:
            bad("alpha", f"must be in [0, 1], got {self.alpha}")
        if self.lang_distribution == "temperature" and self.temperature <= 0:
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
        except ValueError as err:
            bad("train_data_weights" if "weight" in str(err) else "train_data", str(err))
        missing = [s.url for s in shards if "://" not in s.url and not Path(s.url).is_file()]
        if missing:
            bad("train_data", f"{len(missing)} shard file(s) missing, e.g. {missing[:3]}; build shards with "
                              "python -m data_recipes.synth_scenes or python -m data_recipes.from_captions")
        if self.train_data_weights and not self.resampled:
            bad("train_data_weights", "source weights need --resampled (as in open_clip)")
        if self.batch_size < num_processes or self.batch_size % num_processes:
            bad("batch_size", f"{self.batch_size} cannot be split evenly over {num_processes} processes")
        for name in ("max_steps", "text_length_groups", "chunk_size", "max_buffered_samples", "fallback_after", "max_nonfinite_steps", "log_every"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("lr", "warmup_steps", "weight_decay", "grad_clip", "text_pair_weight", "checkpoint_every", "workers"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.keep_checkpoints < 1:
            bad("keep_checkpoints", "must be >= 1")
        if self.text_unlocked_layers < -1:
            bad("text_unlocked_layers", "must be -1 (train all) or >= 0")


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
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.metadata.get("yaml"):
            kwargs["type"] = yaml.safe_load
        else:
            kwargs["type"] = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
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
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            parser.error(f"--config: unknown option(s) in {config_file}: {', '.join(unknown)}")
    values.update(args)
    config = TrainConfig(**values)
    try:
        config.validate(num_processes)
    except ValueError as err:
        parser.error(str(err))
    return config
