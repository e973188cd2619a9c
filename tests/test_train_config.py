"""Each training option is declared once and reaches the component that uses it unchanged."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torchvision.transforms as T
from PIL import Image

from data_recipes.synth_scenes import generate
from mclip_hbt.data.hybrid import HybridConfig
from mclip_hbt.data.loader import LoaderConfig
from mclip_hbt.data.shards import CaptionShardWriter
from mclip_hbt.options import OptionError, option_fields
from mclip_hbt.train.config import NESTED, TrainConfig, all_options, build_parser, parse_config

#: A value unlike the default for every option of the batcher, as flags.
HYBRID_FLAGS = {"alpha": "0.3", "lang_distribution": "temperature", "temperature": "3.5", "languages": "de,en",
                "max_buffered_samples": "300", "fallback_after": "0"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, train_samples=40, test_samples=4, image_size=16, shard_size=20, progress=False)
    return out / "train"


def _flags(values: dict[str, str]) -> list[str]:
    return [arg for name, value in values.items() for arg in ("--" + name.replace("_", "-"), value)]


def test_every_option_is_declared_once_with_a_flag_and_help():
    options = all_options()
    nested = {name for cls in NESTED.values() for name in option_fields(cls)}
    assert nested and nested <= set(options)
    assert not nested & {f.name for f in dataclasses.fields(TrainConfig)}  # no second home in TrainConfig
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    for name, (_, f, _) in options.items():
        assert flags[name].help == f.metadata["help"] and f.metadata["help"]
    # the defaults are the components' own
    for name, cls in NESTED.items():
        assert dataclasses.asdict(getattr(TrainConfig(), name)) == {f.name: f.default for f in dataclasses.fields(cls)}


def test_every_batcher_and_loader_option_reaches_its_component_unchanged(shards):
    args = ["--train-data", f"{shards}::{shards}", "--train-data-weights", "1::3", "--resampled",
            "--samples-per-epoch", "24", "--workers", "0", "--chunk-size", "5", "--shuffle-buffer", "7",
            "--seed", "11", "--text-pair-weight", "0.25", "--batch-size", "8", "--no-machine-translations",
            *_flags(HYBRID_FLAGS)]
    config = parse_config(args, num_processes=2)
    batcher = config.build_batcher(num_processes=2)
    assert dataclasses.asdict(batcher.config) == {"machine_translations": False, **{
        k: v.split(",") if k == "languages" else type(getattr(HybridConfig(), k))(v) for k, v in HYBRID_FLAGS.items()}}
    assert (batcher.seed, batcher.translation_pairs, batcher.batch_size) == (11, True, 4)
    stream = config.build_loader(T.ToTensor(), rank=1, num_processes=2, draft_size=16).dataset
    assert (stream.chunk_size, stream.num_workers, stream.shuffle_buffer, stream.resampled, stream.seed) == \
        (5, 0, 7, True, 11)
    assert (stream.samples_per_epoch, stream.rank, stream.world_size, stream.draft_size) == (24, 1, 2, 16)
    assert sorted({shard.weight for shard in stream.shards}) == [1.0, 3.0]


def test_saved_options_read_back_as_a_config_file_give_the_same_config(shards, tmp_path):
    config = parse_config(["--train-data", str(shards), "--lr", "1e-3", *_flags(HYBRID_FLAGS)])
    saved = tmp_path / "train_config.json"  # what the trainer writes beside a run
    saved.write_text(json.dumps(config.flat_options()))
    assert parse_config(["--config", str(saved)]) == config


@pytest.mark.parametrize("values, option", [
    ({"alpha": "1.5"}, "--alpha"),
    ({"fallback_after": "-1"}, "--fallback-after"),
    ({"lang_distribution": "zipf"}, "--lang-distribution"),
    ({"max_buffered_samples": "7"}, "--max-buffered-samples"),  # under one local batch: checked by the batcher
])
def test_a_components_own_check_names_the_flag(shards, capsys, values, option):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--train-data", str(shards), "--batch-size", "8", *_flags(values)])
    assert exit_info.value.code == 2
    assert f"{option}:" in capsys.readouterr().err


def test_a_yaml_value_of_the_wrong_type_is_refused_with_its_option(shards, tmp_path, capsys):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(f"train_data: {shards}\nalpha: [0.5]\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(config_file)])
    assert "--alpha: must be float" in capsys.readouterr().err
    with pytest.raises(OptionError, match="--lock-image: must be bool"):
        TrainConfig(data=LoaderConfig(train_data=str(shards)), lock_image="yes").validate()


def test_without_machine_translations_the_draws_count_human_captions_only(tmp_path):
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "JPEG")
    with CaptionShardWriter(tmp_path / "shards", max_count=10) as writer:
        for i in range(6):  # en by hand everywhere; de by hand on 2 samples, machine-translated on 4
            writer.write(f"s{i}", image.getvalue(), "jpg", {"en": ["a red square"], "de": ["ein rotes Quadrat"]},
                         mt=["de"] if i >= 2 else [])
    args = ["--train-data", str(tmp_path / "shards"), "--batch-size", "2", "--workers", "0"]
    assert parse_config(args).dataset_lang_counts() == {"en": 6, "de": 6}
    human = parse_config([*args, "--no-machine-translations", "--alpha", "1", "--languages", "de"])
    assert human.dataset_lang_counts() == {"en": 6, "de": 2}
    # the batcher drops the machine-translated captions it reads: only two samples have German left
    batcher = human.build_batcher(num_processes=1)
    batches = list(batcher(human.build_loader(T.ToTensor(), rank=0, num_processes=1)))
    assert [(b["keys"], b["langs"]) for b in batches] == [(["s0", "s1"], ["de", "de"])]
    assert batcher.faults == {"no_training_language": 4}
