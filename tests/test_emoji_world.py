"""The emoji world on the real CLDR files and the real font: names, languages, splits, profile, determinism."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from data_recipes import emoji_render, emoji_sources
from data_recipes import emoji_world as ew
from eval import xtd
from mclip_hbt.data.shards import iter_shard
from mclip_hbt.languages import canonical_lang
from mclip_hbt.paths import REPO_ROOT

TRAIN_SAMPLES = 1200
# A few languages besides the profile's, among them three outside XLM-R's pre-training.
EVAL_LANGUAGES = ["yo", "zu", "ig", "yue"]
#: Pictures of test_seen that the XTD evaluator test scores.
N_EVALUATED = 100


@pytest.fixture(scope="session")
def cldr_dir(shared_data) -> Path:
    folder = shared_data / "cldr-annotations" / "annotations"
    if not folder.is_dir():
        pytest.skip(f"no CLDR annotations at {folder}: the project's shared/data/cldr-annotations holds them")
    return folder


@pytest.fixture(scope="session")
def font_file(shared_data) -> Path:
    file = shared_data / "emoji-font" / "NotoColorEmoji.ttf"
    if not file.is_file():
        pytest.skip(f"no emoji font at {file}: the project's shared/data/emoji-font holds it")
    return file


@pytest.fixture(scope="session")
def annotations(cldr_dir):
    return emoji_sources.read_all_annotations(cldr_dir)


@pytest.fixture(scope="session")
def drawable(annotations, font_file) -> set[str]:
    everything = set().union(*(set(a) for a in annotations.values()))
    return {e for e in everything if emoji_render.renderable(str(font_file), e)}


@pytest.fixture(scope="session")
def used_cldr_dir(cldr_dir, tmp_path_factory) -> Path:
    """The real CLDR files of the languages the worlds generated here caption (the default profile's and
    EVAL_LANGUAGES), linked into a folder of their own: generate() reads every file of its folder (123),
    and a world depends on its languages' files only (the same bytes either way)."""
    needed = {*ew.PROFILES["default"], *EVAL_LANGUAGES}
    folder = tmp_path_factory.mktemp("cldr")
    for xml_file in sorted(cldr_dir.glob("*.xml")):
        try:
            lang = canonical_lang(xml_file.stem)
        except ValueError:
            continue
        if xml_file.stem != "root" and lang in needed:
            (folder / xml_file.name).symlink_to(xml_file)
    assert set(emoji_sources.read_all_annotations(folder)) == needed
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, used_cldr_dir, font_file) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emoji")
    summary = ew.generate(out, cldr=used_cldr_dir, font=font_file, train_samples=TRAIN_SAMPLES, test_samples=200,
                          eval_languages=EVAL_LANGUAGES, shard_size=500, seed=3, progress=False)
    return out, summary


# ------------------------------------------------------------------------------ the CLDR files
def test_every_cldr_language_is_read_with_its_own_code(annotations, drawable):
    # 123 files: 122 languages and CLDR's "root", which is no language.
    assert len(annotations) == 122 and "root" not in annotations
    assert all(canonical_lang(lang) == lang for lang in annotations)
    assert len(annotations["en"]) >= 1900
    enough = [lang for lang, names in annotations.items() if len(set(names) & drawable) >= 1000]
    assert 100 <= len(enough) <= 106
    assert {"yo", "zu", "ig", "sw", "am", "fil"} <= set(enough)


# Read off the XML files by eye: the short name (type="tts") of ten emoji in eight languages.
NAMES = {
    "en": ["dog", "cat", "bicycle", "hot beverage", "red apple", "deciduous tree", "house", "automobile", "books",
           "fire"],
    "de": ["Hund", "Katze", "Fahrrad", "Heißgetränk", "roter Apfel", "Laubbaum", "Haus", "Auto", "Bücherstapel",
           "Feuer"],
    "ja": ["イヌ", "ネコ", "自転車", "温かい飲み物", "赤リンゴ", "落葉樹", "家", "自動車", "本の山", "火"],
    "ru": ["собака", "кошка", "велосипед", "горячий напиток", "красное яблоко", "дерево", "дом", "автомобиль",
           "книги", "огонь"],
    "zh": ["狗", "猫", "自行车", "热饮", "红苹果", "落叶树", "房子", "汽车", "书", "火焰"],
    "sw": ["mbwa", "paka", "baisikeli", "kinywaji moto", "tufaha jekundu", "mti unaopukutika majani yake",
           "jengo la nyumba", "gari", "vitabu", "moto"],
    "am": ["ውሻ", "ድመት", "ብስክሌት", "የሚጠጣ ትኩስ ነገር", "ቀይ አፕል", "ባለጥላ ዛፍ", "የቤት ግንባታ", "አውቶሞቢል", "መጽሐፍት", "እሳት"],
    "yo": ["Ajá", "Olóńgbò", "Kẹ̀kẹ́", "Tii Gbigbona", "Apu Pupa", "Igi Igbo", "Ilé", "Ọko", "àwọn ìwé", "Iná"],
}
EMOJI = ["🐕", "🐈", "🚲", "☕", "🍎", "🌳", "🏠", "🚗", "📚", "🔥"]


@pytest.mark.parametrize("lang", sorted(NAMES))
def test_the_parser_returns_the_names_native_speakers_wrote(annotations, lang):
    assert [annotations[lang][e].name for e in EMOJI] == NAMES[lang]


def test_keywords_and_entities(annotations):
    assert annotations["en"]["🐕"].keywords == ("dog", "pet")
    assert annotations["sw"]["🐕"].keywords == ("mbwa", "mnyama kipenzi")
    assert annotations["de"]["&"].name == "Et-Zeichen"  # written &amp; in the file


def test_several_emoji_are_joined_with_the_languages_list_pattern():
    assert ew.join_names(["Hund", "Katze"], "de") == "Hund und Katze"
    assert ew.join_names(["Hund", "Katze", "Fahrrad"], "de") == "Hund, Katze und Fahrrad"
    assert ew.join_names(["イヌ", "ネコ"], "ja") == "イヌ、ネコ"
    assert ew.join_names(["ውሻ", "ድመት"], "am") == "ውሻ እና ድመት"
    assert ew.join_names(["dog"], "en") == "dog"


def test_every_drawable_emoji_renders_visible_pixels(font_file, drawable):
    assert len(drawable) > 1500
    for emoji in sorted(drawable):
        tile = emoji_render.render_emoji(str(font_file), emoji)
        assert tile.width > 20 and tile.height > 20, emoji
        assert tile.getchannel("A").getextrema()[1] == 255, emoji
    assert not emoji_render.renderable(str(font_file), "‾")  # CLDR names punctuation the font does not draw


def test_default_test_splits_have_distinct_english_captions(annotations, drawable):
    concepts = ew.choose_concepts(annotations, drawable, ew.PROFILES["default"], 1000, 0.2, seed=0)
    assert len(concepts.evaluated) >= 100
    assert not set(concepts.heldout) & set(concepts.train)
    assert abs(len(concepts.heldout) - 0.2 * (len(concepts.heldout) + len(concepts.seen))) <= 1
    for split in ew.TEST_SPLITS:
        pictures = ew.plan_test_split(ew.pool_of(concepts, split), 1000, split, 0, annotations["en"])
        english = [ew.test_caption(annotations["en"], p, "en") for p in pictures]
        assert len(pictures) == 1000 and len(set(english)) / 1000 >= 0.98, split
        assert all(p.emoji in ew.pool_of(concepts, split) for pic in pictures for p in pic.emoji)


def test_training_concepts_are_the_seen_ones_or_every_profile_named_one(annotations, drawable):
    seen = ew.choose_concepts(annotations, drawable, ew.PROFILES["default"], 1000, 0.2, seed=0)
    wide = ew.choose_concepts(annotations, drawable, ew.PROFILES["default"], 1000, 0.2, seed=0,
                              train_concepts="profile")
    assert seen.train == seen.seen and seen.heldout == wide.heldout and seen.seen == wide.seen
    assert set(wide.train) > set(seen.train) and not set(wide.train) & set(wide.heldout)
    profile_named = set.intersection(*(set(annotations[lang]) & drawable for lang in ew.PROFILES["default"]))
    assert set(wide.train) == profile_named - set(wide.heldout)
    with pytest.raises(ValueError, match="train_concepts"):
        ew.choose_concepts(annotations, drawable, ew.PROFILES["default"], 1000, 0.2, seed=0, train_concepts="all")


# ------------------------------------------------------------------------------ a generated world
def test_splits_are_line_aligned_in_every_evaluated_language(world):
    out, summary = world
    table = json.loads((out / ew.LANGUAGES_FILE).read_text(encoding="utf-8"))["languages"]
    langs = [row["lang"] for row in table]
    assert langs == [*ew.PROFILES["default"], *EVAL_LANGUAGES]
    for split in ew.TEST_SPLITS:
        names = (out / split / "test_image_names.txt").read_text(encoding="utf-8").splitlines()
        assert len(names) == 200 and all((out / split / "images" / n).is_file() for n in names)
        for lang in langs:
            lines = (out / split / f"test_1kcaptions_{lang}.txt").read_text(encoding="utf-8").splitlines()
            assert len(lines) == 200 and all(line.strip() for line in lines), (split, lang)
        assert summary[split]["distinct_english_fraction"] >= 0.98
    with Image.open(out / "test_unseen" / "images" / names[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_each_split_names_its_classes_and_the_classes_of_each_picture(world, annotations):
    out, _ = world
    for split in ew.TEST_SPLITS:
        table = json.loads((out / split / ew.CLASSES_FILE).read_text(encoding="utf-8"))
        captions = {lang: (out / split / f"test_1kcaptions_{lang}.txt").read_text(encoding="utf-8").splitlines()
                    for lang in ("en", "de", "yo")}
        assert len(table["labels"]) == 200 and len(set(table["classes"])) == len(table["classes"])
        for lang in captions:
            assert table["names"][lang] == [annotations[lang][e].name for e in table["classes"]]
            for picture, caption in zip(table["labels"], captions[lang]):  # the caption names its classes, in order
                assert caption == ew.join_names([table["names"][lang][c] for c in picture], lang)
        single = sum(len(picture) == 1 for picture in table["labels"])
        assert 0.3 * 200 < single < 0.7 * 200  # about half the pictures show one emoji (EMOJI_COUNT_WEIGHTS)


def test_languages_file_reports_groups_and_pretraining(world):
    out, _ = world
    rows = {row["lang"]: row for row in json.loads((out / ew.LANGUAGES_FILE).read_text(encoding="utf-8"))["languages"]}
    assert {lang for lang, r in rows.items() if r["group"] == "high"} == set(ew.HIGH_RESOURCE)
    assert {lang for lang, r in rows.items() if r["group"] == "low"} == set(ew.LOW_RESOURCE)
    assert {lang for lang, r in rows.items() if r["group"] == "unseen"} == set(EVAL_LANGUAGES)
    # Yoruba, Zulu, Igbo and Cantonese-as-a-code are outside XLM-R's 100 languages; Swahili and Amharic inside.
    assert [rows[lang]["in_pretraining"] for lang in ("yo", "zu", "ig", "yue", "sw", "am", "fil")] == \
        [False, False, False, False, True, True, True]
    assert rows["yo"]["name"] == "Yoruba" and rows["en"]["cc100_gib"] > rows["sw"]["cc100_gib"] > 0


def test_no_heldout_concept_in_any_training_shard(world, annotations, cldr_dir, font_file, drawable):
    out, _ = world
    concepts = ew.choose_concepts(annotations, drawable, ew.PROFILES["default"], 1000, 0.2, seed=3,
                                  eval_languages=EVAL_LANGUAGES)
    heldout = set(concepts.heldout)
    heldout_names = {annotations["en"][e].name for e in heldout}
    unseen_lines = set((out / "test_unseen" / "test_1kcaptions_en.txt").read_text(encoding="utf-8").splitlines())
    seen = 0
    for shard in sorted((out / "train").glob("*.tar")):
        for sample in iter_shard(shard):
            drawn = sample.record["source"].removeprefix("emoji_world:").split(" ")
            assert not heldout & set(drawn), sample.key
            assert sample.record["captions"]["en"][0] not in unseen_lines
            assert not any(name == sample.record["captions"]["en"][0] for name in heldout_names)
            seen += 1
    assert seen == TRAIN_SAMPLES


def test_training_captions_follow_the_profile(world):
    out, _ = world
    stats = json.loads((out / "train" / "dataset.json").read_text(encoding="utf-8"))
    langs = stats["languages"]
    for lang in ew.HIGH_RESOURCE:
        assert langs[lang]["samples"] == TRAIN_SAMPLES
    mean, sd = TRAIN_SAMPLES * ew.LOW_FRACTION, math.sqrt(TRAIN_SAMPLES * ew.LOW_FRACTION * (1 - ew.LOW_FRACTION))
    for lang in ew.LOW_RESOURCE:
        assert abs(langs[lang]["samples"] - mean) < 4.5 * sd, (lang, langs[lang])
    for lang in EVAL_LANGUAGES:
        assert lang not in langs
    assert stats["profile"]["unseen"] == EVAL_LANGUAGES


def test_rerun_is_a_no_op_and_other_settings_are_refused(world, cldr_dir, font_file, capsys):
    out, _ = world
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = ew.generate(out, cldr=cldr_dir, font=font_file, train_samples=TRAIN_SAMPLES, test_samples=200,
                        eval_languages=EVAL_LANGUAGES, shard_size=500, seed=3, progress=False)
    assert again["skipped"] and before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # The command's entry function in this process (a refusal by its own process is the next test's).
    with pytest.raises(SystemExit) as exit_info:
        ew.main(["--out", str(out), "--seed", "4", "--cldr", str(cldr_dir), "--font", str(font_file)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--overwrite" in err and "seed" in err
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_same_output_for_one_and_two_workers(tmp_path, used_cldr_dir, font_file):
    def files(workers: int) -> dict[str, bytes]:
        out = tmp_path / f"w{workers}"
        ew.generate(out, cldr=used_cldr_dir, font=font_file, train_samples=150, test_samples=40, eval_languages=["yo"],
                    shard_size=100, workers=workers, progress=False)
        # Whole files, except the shards (tar headers carry write times): their samples instead.
        contents = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                    if p.is_file() and p.name != ew.DONE_MARKER and p.suffix != ".tar"}
        for shard in sorted((out / "train").glob("*.tar")):
            for sample in iter_shard(shard):
                contents[f"{shard.name}/{sample.key}"] = sample.image + json.dumps(sample.record).encode()
        return contents
    one, two = files(1), files(2)
    assert one.keys() == two.keys() and len(one) > 40
    assert [name for name in one if one[name] != two[name]] == []


def test_download_path_against_local_files(tmp_path, cldr_dir, font_file):
    archive = tmp_path / "core.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for lang in ("en", "de"):
            z.write(cldr_dir / f"{lang}.xml", f"common/annotations/{lang}.xml")
        z.writestr("common/main/en.xml", "<ldml/>")
    cldr, font = emoji_sources.download(archive.as_uri(), font_file.as_uri(), tmp_path / "fetched")
    assert sorted(p.name for p in cldr.iterdir()) == ["de.xml", "en.xml"]
    assert font.read_bytes() == font_file.read_bytes()
    assert emoji_sources.read_all_annotations(cldr)["de"]["🐕"].name == "Hund"


def test_missing_data_is_one_message_saying_where_to_get_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_recipes.emoji_world", "--out", str(tmp_path / "o"),
                             "--cldr", str(tmp_path / "nothing")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2 and "core.zip" in result.stderr and "Traceback" not in result.stderr


def test_xtd_evaluator_scores_any_language_of_the_split(world, tmp_path):
    out, _ = world
    # A split holding a few languages with codes of every kind: ISO 639-1, ISO 639-3, CLDR's own; its
    # first 100 pictures (the reading and the scoring do not depend on the count; the encoding does).
    split = tmp_path / "split"
    split.mkdir()
    for name in ["test_image_names.txt", *(f"test_1kcaptions_{lang}.txt"
                                           for lang in ("en", "sw", "fil", "yo", "zu", "ig", "yue"))]:
        lines = (out / "test_seen" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (split / name).write_text("".join(lines[:N_EVALUATED]), encoding="utf-8")
    result_file = tmp_path / "emoji.json"
    # eval.xtd's entry function in this process (eval.xtd's own process is tested in tests/test_eval_xtd.py).
    assert xtd.main(["--captions", str(split), "--lang", "all", "--text-only", "--model",
                     "bundled:multilingual-e5-small", "--out", str(result_file), "--dataset", "emoji_seen",
                     "--no-progress"]) == 0
    doc = json.loads(result_file.read_text())
    assert doc["meta"]["n_images"] == N_EVALUATED
    recall = doc["summary"]["crosslingual"]["r@1"]
    assert set(recall) == {"en", "sw", "fil", "yo", "zu", "ig", "yue"}
    # The untrained encoder already matches Swahili names to English ones far above chance (1/100).
    assert recall["sw"]["en"] > 0.1
