"""open_clip's own training loader reads our shards: every sample, its KEY.txt caption, in the environment
open_clip_train 3.x needs (webdataset 0.2.86 and pandas, docs/formats.md). With webdataset 1.x its tar grouping
fails (KeyError: 'fname'), and pandas is not among open_clip's own requirements."""
from __future__ import annotations

import json
import subprocess
import sys

from bench.common import openclip_env
from data_recipes.synth_scenes import generate
from mclip_hbt.paths import REPO_ROOT

READ_ALL = """
import argparse, json, sys
import open_clip, webdataset
from open_clip_train.data import get_wds_dataset
options = argparse.Namespace(train_data=sys.argv[1], val_data=None, train_num_samples=int(sys.argv[2]),
                             dataset_resampled=False, train_data_upsampling_factors=None, seed=0, workers=1,
                             world_size=1, batch_size=8)
tokenizer = open_clip.get_tokenizer("ViT-B-32")
data = get_wds_dataset(options, open_clip.image_transform(32, is_train=True), is_train=True, tokenizer=tokenizer)
seen = sum(len(images) for images, texts in data.dataloader)
print(json.dumps({"samples": seen, "webdataset": webdataset.__version__}))
"""


def test_open_clip_train_reads_every_sample_of_our_shards(tmp_path):
    generate(tmp_path / "synth", train_samples=48, test_samples=1, image_size=32, shard_size=16, progress=False)
    shards = f"{tmp_path / 'synth' / 'train'}/synth-{{000000..000002}}.tar"
    assert sorted(p.name for p in (tmp_path / "synth" / "train").glob("*.tar")) == \
        [f"synth-{i:06d}.tar" for i in range(3)]
    proc = subprocess.run([sys.executable, "-c", READ_ALL, shards, "48"], env=openclip_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"samples": 48, "webdataset": "0.2.86"}
