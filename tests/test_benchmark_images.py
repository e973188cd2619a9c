"""Benchmark test images are recognised by what they are, however a file or a shard key spells them."""
from __future__ import annotations

import pytest

from mclip_hbt.data.benchmark_images import BenchmarkImages, BenchmarkSightings, image_id, overlap


@pytest.mark.parametrize("name, expected", [
    ("COCO_train2014_000000061844.jpg", "coco:61844"),
    ("COCO_val2014_000000391895.jpg", "coco:391895"),
    ("000000061844.jpg", "coco:61844"),  # COCO 2017's name of the same image
    ("train2014_COCO_train2014_000000061844", "coco:61844"),  # from_captions' key for train2014/COCO_...jpg
    ("1007129816.jpg", "flickr30k:1007129816"),
    ("flickr30k-images_97234558", "flickr30k:97234558"),
    ("emoji_train_0010000", None),  # a zero-padded counter is not a Flickr id
    ("000012345", None),  # img2dataset's keys
    ("holiday_12.jpg", None),
    ("a.jpg", None),
])
def test_image_id(name, expected):
    assert image_id(name) == expected


def test_sightings_keep_only_benchmark_images_and_survive_a_checkpoint():
    benchmarks = BenchmarkImages("root", names={"xtd10": {"coco:61844": "COCO_train2014_000000061844.jpg"}},
                                 unavailable={"xflickrco": "no files"})
    sightings = BenchmarkSightings(benchmarks)
    sightings.observe(["000000061844", "COCO_train2014_000000000009", "holiday_0001"])
    restored = BenchmarkSightings(benchmarks)
    restored.load_state_dict(sightings.state_dict())
    summary = restored.summary(restored.seen)
    assert summary == {"root": "root", "checked": {"xtd10": 1}, "not_checked": {"xflickrco": "no files"},
                       "trained_on": {"xtd10": ["COCO_train2014_000000061844.jpg"]}}

    test_split = ["COCO_train2014_000000061844.jpg", "COCO_val2014_000000000042.jpg"]
    assert overlap(test_split, "xtd10", summary) == {
        "known": True, "test_images": 2, "trained_on": 1, "examples": ["COCO_train2014_000000061844.jpg"], "note": ""}
    unknown = overlap(test_split, "xflickrco", summary)
    assert not unknown["known"] and "could not check xflickrco (no files)" in unknown["note"]
    assert not overlap(test_split, "xtd10", None)["known"]  # a model with no record is never reported clean
    assert overlap(["emoji_seen_0000001.jpg"], "emoji-seen", None)["trained_on"] == 0  # fresh renders
