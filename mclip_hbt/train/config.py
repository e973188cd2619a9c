"""Training options: one dataclass, read from YAML, overridden by ``--kebab-case`` flags, checked before any work.

Every option is declared once, with its default, ``--help`` text and checks, on the dataclass of the component
that uses it: the loader's on ``LoaderConfig`` (nested here as ``data``), the batcher's on ``HybridConfig``
(``hybrid``), the rest here. Flags and YAML keys are flat (``--alpha``, ``alpha:``) whichever dataclass
declares them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mclip_hbt.data.hybrid import HybridBatcher, HybridConfig
from mclip_hbt.data.loader import ChunkLoader, LoaderConfig, build_loader
from mclip_hbt.data.shard_plan import epoch_length, expand_shards
from mclip_hbt.model.clip import CONFIG_NAME, PRESETS, MultilingualCLIPConfig
from mclip_hbt.model.loss import LOSS_KINDS
from mclip_hbt.options import OptionError, check_value, option, option_fields, scalar_type
from mclip_hbt.train.text_learning import TextLearningConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
#: A training config is a page of options; anything larger (a device, a data file) is refused before it is read.
MAX_CONFIG_BYTES = 1 << 20
#: Options a resumed run may change: where it writes and reads, reporting, checkpoint cadence, its length and how
#: fast it computes the same steps.
RUN_ONLY_OPTIONS = frozenset({"output_dir", "resume", "allow_changed_options", "log_every", "report_to",
                              "checkpoint_every", "keep_checkpoints", "max_steps", "max_nonfinite_steps", "compile",
                              "grad_checkpointing", "channels_last", "text_length_groups", "benchmark_data"})
#: Component configs nested in TrainConfig, whose option fields are flags and YAML keys of their own.
NESTED = {"data": LoaderConfig, "hybrid": HybridConfig, "text_learning": TextLearningConfig}


@dataclass
class TrainConfig:
    # model
    model: str = option("tiny", "Preset name (tiny, e5-small-vit-b32, xlmr-base-vit-b32, xlmr-large-vit-h14) or a "
                        "saved model directory.")
    model_overrides: dict | None = option(None, "Model config fields to override, as YAML/JSON (e.g. "
                                          "'{vision_pretrained: ckpt.pt}').", yaml=True)
    lock_image: bool = option(False, "LiT: freeze the image tower (see --image-unlocked-groups).")
    image_unlocked_groups: int = option(0, "With --lock-image, leave this many top layer groups of the image tower "
                                        "trainable.")
    text_unlocked_layers: int = option(-1, "Freeze the text encoder except its top N blocks; -1 trains all of it.")
    freeze_word_embeddings: bool = option(False, "Freeze the text encoder's token embedding matrix (most of its "
                                          "parameters).")
    text_length_groups: int = option(1, "Run the text encoder in N length-sorted groups per batch: less padding, fewer "
                                     "FLOPs (helps on CPUs; 1 = one pass).")
    grad_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.")
    channels_last: bool = option(False, "Keep the image tower's weights and the pixels channels-last (NHWC): faster "
                                 "convolutions on CPUs and tensor cores (docs/results.md).")
    compile: bool = option(False, "torch.compile the model (dynamic shapes: captions are padded per batch).")
    # data: train_data, train_data_weights, resampled, samples_per_epoch, workers, chunk_size, shuffle_buffer
    data: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)
    # hybrid batches (docs/design.md §2): alpha, lang_distribution, temperature, languages, max_buffered_samples,
    # fallback_after
    hybrid: HybridConfig = dataclasses.field(default_factory=HybridConfig)
    # learning without forgetting (mclip_hbt.train.text_learning): text_lr, text_lora_*, text_distill_*
    text_learning: TextLearningConfig = dataclasses.field(default_factory=TextLearningConfig)
    text_pair_weight: float = option(0.0, "Weight lambda of the text–text InfoNCE between a caption and its "
                                     "translation (0 = off; > 0 also makes the batcher draw the translations).")
    # loss and optimisation
    loss: str = option("clip", "Contrastive loss: clip (symmetric InfoNCE) or siglip (sigmoid).", choices=LOSS_KINDS)
    batch_size: int = option(64, "Global batch size (all processes together); each process gets batch_size / "
                             "num_processes.")
    max_steps: int = option(1000, "Optimizer steps to train.")
    lr: float = option(5e-4, "Peak learning rate (AdamW).")
    weight_decay: float = option(0.1, "AdamW weight decay (not applied to biases, norms, logit scale/bias).")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.98, "AdamW beta2.")
    eps: float = option(1e-6, "AdamW epsilon.")
    warmup_steps: int = option(100, "Linear warmup steps before the cosine decay.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this value (0 = off).")
    mixed_precision: str | None = option(None, "accelerate mixed precision: no, bf16 or fp16 (default: what "
                                         "`accelerate launch --mixed_precision` or the accelerate config file says, "
                                         "else no).", choices=MIXED_PRECISION)
    max_nonfinite_steps: int = option(5, "Stop after this many consecutive steps with a non-finite loss (each is "
                                      "skipped).")
    seed: int = option(0, "Seed of the hybrid-batch draws, data order and initialisation.")
    # output
    output_dir: str = option("runs/train", "Where checkpoints, logs and the final model go.")
    log_every: int = option(10, "Log metrics every N steps.")
    report_to: str = option("tensorboard", "accelerate tracker(s): tensorboard, wandb, all or none.")
    checkpoint_every: int = option(200, "Save a resumable checkpoint every N steps (0 = only at the end or on "
                                   "SIGTERM).")
    keep_checkpoints: int = option(2, "Keep the newest N checkpoints.")
    resume: str = option("none", "Resume: 'auto' (newest complete checkpoint in output_dir, if any), a checkpoint "
                         "folder (OUTPUT_DIR/checkpoints/step_N), or 'none'. Options that change what is trained "
                         "must be those of the checkpoint's run.")
    allow_changed_options: bool = option(False, "Resume even though options that change what is trained (batch "
                                                "size, alpha, data, seed, learning rates, ...) differ from the "
                                                "checkpoint's; train_meta.json records each segment's options.")
    benchmark_data: str | None = option(None, "Folder holding the benchmarks' files (xtd10/, xflickrco/, multi30k/) "
                                        "whose test images the run watches for: train_meta.json lists those it "
                                        "trained on, and the evaluators flag them (default: $MCLIP_HBT_DATA or "
                                        "../shared/data).")

    def dataset_lang_counts(self) -> dict[str, int] | None:
        """Per-language sample counts from the dataset.json beside each source's shards (for the draws), human
        captions only with ``--no-machine-translations``; None when a source has none. Raises ``OptionError`` for
        a dataset.json that cannot be read."""
        counts: dict[str, int] = {}
        shards = expand_shards(self.data.train_data, stall_s=self.data.remote_timeout)
        for stats_file in sorted({Path(s.url).parent / "dataset.json" for s in shards}):
            if not stats_file.is_file():
                return None
            try:
                for lang, c in json.loads(stats_file.read_text())["languages"].items():
                    machine = 0 if self.hybrid.machine_translations or not c["mt_captions"] else int(c["mt_samples"])
                    counts[lang] = counts.get(lang, 0) + int(c["samples"]) - machine
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise OptionError("train_data", f"cannot read per-language counts from {stats_file} "
                                                f"({type(err).__name__}: {err}); rebuild the shards with their "
                                                "recipe") from None
        return counts

    def build_batcher(self, num_processes: int) -> HybridBatcher:
        """This process's hybrid batcher (its checks raise ``OptionError``)."""
        return HybridBatcher(self.hybrid, self.batch_size // num_processes, num_processes, self.dataset_lang_counts(),
                             seed=self.seed, translation_pairs=self.text_pair_weight > 0)

    def build_loader(self, image_transform: Callable, rank: int, num_processes: int, draft_size: int | None = None,
                     pin_memory: bool = False) -> ChunkLoader:
        """This process's share of the training shards, in chunks for the batcher."""
        return build_loader(self.data, image_transform, seed=self.seed, rank=rank, world_size=num_processes,
                            draft_size=draft_size, pin_memory=pin_memory)

    def trained_options(self) -> dict[str, Any]:
        """The options that change what a run trains (everything but where it writes, how often it logs and
        checkpoints, how long it runs and how fast it computes), as plain JSON values."""
        values = {k: v for k, v in self.flat_options().items() if k not in RUN_ONLY_OPTIONS}
        return json.loads(json.dumps(values, default=str))

    def flat_options(self) -> dict[str, Any]:
        """Every option by its flag's name, nested components flattened: what ``--config`` reads back."""
        values = {name: getattr(self, name) for name in option_fields(TrainConfig)}
        for name, cls in NESTED.items():
            values.update({sub: getattr(getattr(self, name), sub) for sub in option_fields(cls)})
        return values

    def validate(self, num_processes: int = 1) -> None:
        """Raise ``OptionError`` naming the option for any value that would fail later (the checks that need more
        than one component's values, and the batcher's own, run by building it).

        Everything here is checked before a model is built, so a bad value costs seconds, not a model load.
        """
        for name, (f, hint) in option_fields(TrainConfig).items():
            check_value(name, getattr(self, name), hint, f)
        if self.model_overrides:
            known = {f.name for f in dataclasses.fields(MultilingualCLIPConfig)}
            unknown = sorted(set(self.model_overrides) - known)
            if unknown:
                raise OptionError("model_overrides", f"unknown model config field(s) {', '.join(map(str, unknown))}; "
                                                     f"known: {', '.join(sorted(known))}")
            if (Path(self.model) / CONFIG_NAME).is_file():
                raise OptionError("model_overrides", f"cannot be applied to the saved model {self.model}")
            if self.model in PRESETS:
                try:
                    MultilingualCLIPConfig.from_dict({**PRESETS[self.model], **self.model_overrides})
                except (TypeError, ValueError) as err:
                    raise OptionError("model_overrides", str(err)) from None
        if not str(self.output_dir).strip():
            raise OptionError("output_dir", "is empty; name the run's folder (the working directory is not one)")
        if self.benchmark_data is not None and not Path(self.benchmark_data).is_dir():
            raise OptionError("benchmark_data", f"not a folder: {self.benchmark_data}")
        data = self.data
        if not data.train_data:
            raise OptionError("train_data", "no training shards given")
        shards = expand_shards(data.train_data, data.train_data_weights, data.remote_timeout)
        missing = [s.url for s in shards if "://" not in s.url and not Path(s.url).is_file()]
        if missing:
            raise OptionError("train_data", f"{len(missing)} shard file(s) missing, e.g. {missing[:3]}; build shards "
                                            "with python -m data_recipes.synth_scenes or python -m "
                                            "data_recipes.from_captions")
        epoch_length(shards, resampled=data.resampled, samples_per_epoch=data.samples_per_epoch,
                     world_size=num_processes, weighted=data.train_data_weights is not None)
        if self.batch_size < num_processes or self.batch_size % num_processes:
            raise OptionError("batch_size", f"{self.batch_size} cannot be split evenly over {num_processes} "
                                            "processes")
        self.build_batcher(num_processes)
        for name in ("max_steps", "text_length_groups", "max_nonfinite_steps", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise OptionError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "warmup_steps", "weight_decay", "grad_clip", "text_pair_weight", "checkpoint_every", "eps",
                     "image_unlocked_groups"):
            if getattr(self, name) < 0:
                raise OptionError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise OptionError(name, f"must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise OptionError("seed", f"must be in [0, 2**32), got {self.seed}")
        if self.text_unlocked_layers < -1:
            raise OptionError("text_unlocked_layers", "must be -1 (train all) or >= 0")
        if self.text_learning.text_lora_rank and (self.text_unlocked_layers != -1 or self.freeze_word_embeddings):
            raise OptionError("text_lora_rank", "LoRA trains the adapters only and freezes the rest of the encoder: "
                                                "leave --text-unlocked-layers at -1 and --freeze-word-embeddings off")
        if self.resume not in ("auto", "none") and not Path(self.resume).is_dir():
            raise OptionError("resume", f"no checkpoint folder at {self.resume}; give 'auto', 'none' or a folder "
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


def all_options() -> dict[str, tuple[str | None, dataclasses.Field, Any]]:
    """Every option in declaration order, nested ones where their component sits: name → (the TrainConfig field
    that holds it, or None for TrainConfig's own; field; resolved annotation)."""
    out: dict[str, tuple[str | None, dataclasses.Field, Any]] = {}
    own = option_fields(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in NESTED:
            for name, (sub, hint) in option_fields(NESTED[f.name]).items():
                if name in own or name in out:
                    raise TypeError(f"option {name} of {NESTED[f.name].__name__} clashes with another option")
                out[name] = (f.name, sub, hint)
        else:
            out[f.name] = (None, *own[f.name])
    return out


def _converter(f: dataclasses.Field, hint: Any) -> Callable[[str], Any]:
    """How a flag's (or a YAML file's string) value becomes the field's type."""
    kind = scalar_type(hint)
    return yaml_mapping if f.metadata.get("yaml") or kind is dict else kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a MultilingualCLIP with hybrid batches (monolingual with probability alpha, "
                    "cross-lingual otherwise). Run as `accelerate launch train.py --config configs/NAME.yaml "
                    "[--option value ...]` or `python train.py ...` on one device. Flags override the YAML file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with any of the options below (keys in snake_case).")
    for name, (_, f, hint) in all_options().items():
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "default": argparse.SUPPRESS}
        if scalar_type(hint) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _converter(f, hint)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    return parser


def build_config(values: dict[str, Any], num_processes: int = 1) -> TrainConfig:
    """A checked TrainConfig from flat option values (flags and YAML keys); ``OptionError`` names a bad one."""
    options = all_options()
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {name: {} for name in NESTED}
    for name, value in values.items():
        holder, f, hint = options[name]
        check_value(name, value, hint, f)
        (nested[holder] if holder else own)[name] = value
    config = TrainConfig(**own, **{name: cls(**nested[name]) for name, cls in NESTED.items()})
    config.validate(num_processes)
    return config


def parse_config(argv: list[str] | None = None, num_processes: int = 1) -> TrainConfig:
    """YAML file, then flags; refuse bad values with a message naming the option (exit code 2)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        path = Path(config_file)
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:  # /dev/zero, a FIFO, a data file
            parser.error(f"--config: {config_file} is not a YAML file of at most {MAX_CONFIG_BYTES // 1024} KiB")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            parser.error(f"--config: cannot read {config_file}: {err}")
        if not isinstance(values, dict):
            parser.error(f"--config: {config_file} must hold a mapping of option: value")
        options = all_options()
        unknown = sorted(set(map(str, values)) - set(options))
        if unknown:
            parser.error(f"--config: unknown option(s) in {config_file}: {', '.join(unknown)}")
        for name, value in values.items():  # YAML reads 1e-3 as a string: convert it as the flag would
            if isinstance(value, str) and scalar_type(options[name][2]) in (int, float):
                try:
                    values[name] = scalar_type(options[name][2])(value)
                except ValueError:
                    parser.error(f"--config: {name} in {config_file} must be a number, got {value!r}")
    values.update(args)
    try:
        return build_config(values, num_processes)
    except OptionError as err:
        parser.error(str(err))
