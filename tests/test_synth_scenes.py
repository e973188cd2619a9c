"""The synthetic scene benchmark: resource profile, XTD-style test split, caption grammar, determinism."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_recipes.scene_grammar import (
    Description,
    Group,
    Placed,
    ko_has_batchim,
    render_caption,
    tr_genitive,
    tr_locative,
)
from data_recipes.synth_scenes import PROFILES, generate, resolve_profile
from data_recipes.synth_scenes import main as synth_main
from mclip_hbt.data.shards import iter_shard
from mclip_hbt.languages import XTD_LANGS
from mclip_hbt.paths import REPO_ROOT

TRAIN_SAMPLES = 2000


@pytest.fixture(scope="module")
def synth_world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, train_samples=TRAIN_SAMPLES, test_samples=1000, image_size=32, shard_size=500,
                       seed=7, progress=False)
    return out, summary


# ------------------------------------------------------------------------------ resource profile
def test_dataset_json_shows_the_default_resource_profile(synth_world):
    out, _ = synth_world
    stats = json.loads((out / "train" / "dataset.json").read_text(encoding="utf-8"))
    profile = PROFILES["default"]
    assert stats["num_samples"] == TRAIN_SAMPLES and stats["num_shards"] == TRAIN_SAMPLES // 500
    assert stats["profile"]["name"] == "default"
    assert stats["profile"]["fractions"] == {lang: profile.get(lang, 0.0) for lang in XTD_LANGS}
    assert stats["generator"]["seed"] == 7 and stats["generator"]["image_size"] == 32
    langs = stats["languages"]
    for lang in ("en", "de", "fr", "es", "zh"):
        assert langs[lang]["samples"] == TRAIN_SAMPLES
        assert langs[lang]["captions"] == 2 * TRAIN_SAMPLES  # two templates, never the same text twice
    mean, sd = TRAIN_SAMPLES * 0.05, math.sqrt(TRAIN_SAMPLES * 0.05 * 0.95)
    for lang in ("it", "pl", "tr"):
        assert abs(langs[lang]["samples"] - mean) < 4.5 * sd, (lang, langs[lang])
    for lang in ("ru", "ko", "ja"):
        assert lang not in langs


def test_shards_hold_captions_for_the_profile_languages(synth_world):
    out, _ = synth_world
    samples = list(iter_shard(out / "train" / "synth-000000.tar"))
    assert len(samples) == 500 and {s.image_ext for s in samples} == {"jpg"}
    for record in (s.record for s in samples):
        assert {"en", "de", "fr", "es", "zh"} <= record["captions"].keys()
        assert not {"ru", "ko", "ja"} & record["captions"].keys()
        assert record["mt"] == [] and record["source"] == "synth_scenes"


def test_profiles_are_validated():
    assert resolve_profile('{"en": 1, "jp": 0.5}')[1]["ja"] == 0.5
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_profile("nonexistent")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_profile({"en": 1.0, "de": 2})
    with pytest.raises(ValueError, match="at least one language"):
        resolve_profile({"en": 0.5})


# ------------------------------------------------------------------------------------ test split
def test_test_split_is_laid_out_like_xtd10(synth_world):
    out, summary = synth_world
    test = out / "test"
    names = (test / "test_image_names.txt").read_text(encoding="utf-8").splitlines()
    assert len(names) == 1000 and names[0] == "synth_test_000000.jpg"
    for lang in XTD_LANGS:
        lines = (test / f"test_1kcaptions_{lang}.txt").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(names) and all(line.strip() for line in lines)
    for name in names[:50]:
        with Image.open(test / "images" / name) as img:
            assert img.format == "JPEG" and img.size == (32, 32)
    assert len(list((test / "images").iterdir())) == len(names)
    assert summary["test"]["num_images"] == 1000


def test_test_captions_almost_always_describe_one_image(synth_world):
    out, summary = synth_world
    assert summary["test"]["unique_description_fraction"] >= 0.98
    # A caption is a function of (scene, template), so unique scenes give unique texts.
    en = (out / "test" / "test_1kcaptions_en.txt").read_text(encoding="utf-8").splitlines()
    assert len(set(en)) / len(en) >= summary["test"]["unique_description_fraction"]


# ---------------------------------------------------------------------------------- determinism
def _split_bytes(out: Path) -> dict[str, bytes]:
    """Caption files, test images and every shard sample (tar headers carry write times, so not whole tars)."""
    files = sorted((out / "test").glob("*.txt")) + sorted((out / "test" / "images").iterdir())
    contents = {f.name: f.read_bytes() for f in files}
    for shard in sorted((out / "train").glob("*.tar")):
        for sample in iter_shard(shard):
            contents[f"{shard.name}/{sample.key}.jpg"] = sample.image
            contents[f"{shard.name}/{sample.key}.json"] = json.dumps(sample.record).encode()
    return contents


def test_same_seed_same_output_other_seed_other_output(tmp_path):
    args = dict(train_samples=40, test_samples=10, image_size=32, shard_size=20, progress=False)
    generate(tmp_path / "a", seed=1, **args)
    generate(tmp_path / "b", seed=1, **args)
    generate(tmp_path / "c", seed=2, **args)
    a, b, c = (_split_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg") or k.startswith("test_1kcaptions"))


def test_rerun_on_a_finished_folder_is_a_no_op(tmp_path):
    args = dict(train_samples=30, test_samples=5, image_size=32, progress=False)
    assert generate(tmp_path, **args)["skipped"] is False
    shard = tmp_path / "train" / "synth-000000.tar"
    stamp = shard.stat().st_mtime_ns
    assert generate(tmp_path, **args)["skipped"] is True
    assert shard.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        generate(tmp_path, **{**args, "seed": 3})
    assert generate(tmp_path, **{**args, "seed": 3}, overwrite=True)["skipped"] is False


@pytest.mark.slow
def test_workers_write_the_same_dataset_as_one_process(tmp_path):
    args = dict(train_samples=150, test_samples=20, image_size=32, shard_size=100, seed=5, progress=False)
    generate(tmp_path / "one", workers=1, **args)
    generate(tmp_path / "two", workers=2, **args)
    assert _split_bytes(tmp_path / "one") == _split_bytes(tmp_path / "two")


# ------------------------------------------------------------------------------------------ CLI
def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_recipes.synth_scenes", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_a_dataset_and_prints_language_counts(tmp_path):
    result = _cli("--out", str(tmp_path), "--train-samples", "20", "--test-samples", "4", "--image-size", "32",
                  "--profile", '{"en": 1, "ko": 0.5}', "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "ko" in result.stdout and "en" in result.stdout
    stats = json.loads((tmp_path / "train" / "dataset.json").read_text(encoding="utf-8"))
    assert stats["profile"]["fractions"]["ko"] == 0.5 and "de" not in stats["languages"]


@pytest.mark.parametrize("argv, option", [
    (["--train-samples", "0"], "--train-samples"),
    (["--profile", "nonexistent"], "--profile"),
    (["--profile-file", "/nonexistent/profile.json"], "--profile-file"),
])
def test_cli_refuses_bad_arguments_before_work(tmp_path, capsys, argv, option):
    # The command's entry function in this process (its own process is run by the test above): exit
    # status 2 and the option named, any other exception fails the test as a traceback would.
    with pytest.raises(SystemExit) as exit_info:
        synth_main(["--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- grammar
def _one(shape, colour="red", size="small", count=1, cell=4, background="white"):
    return Description(background, (Placed(Group(shape, colour, size, count), cell=cell),))


def _related(group, relation, anchor, background="white"):
    return Description(background, (Placed(group, relation=relation, anchor=anchor),))


RED_CIRCLE = Group("circle", "red", "small", 1)
TWO_BLUE_SQUARES = Group("square", "blue", "large", 2)
BLUE_STAR = Group("star", "blue", "large", 1)
TWO_BLUE_STARS = Group("star", "blue", "large", 2)
FIVE_RED_CIRCLES = Group("circle", "red", "small", 5)

# (language, description, template, expected caption)
CAPTIONS = [
    ("en", _one("circle"), 0, "A small red circle in the centre on a white background."),
    ("en", _one("cross", count=3, cell=0), 2,
     "There are three small red crosses in the top left; the background is white."),
    ("en", _related(RED_CIRCLE, "left_of", TWO_BLUE_SQUARES), 1,
     "A white background with a small red circle to the left of two large blue squares."),
    # German: ein + mixed declension by gender, accusative after zeigen, dative after mit / von / über
    ("de", _one("circle"), 0, "Ein kleiner roter Kreis in der Mitte auf weißem Hintergrund."),
    ("de", _one("ellipse"), 0, "Eine kleine rote Ellipse in der Mitte auf weißem Hintergrund."),
    ("de", _one("square"), 0, "Ein kleines rotes Quadrat in der Mitte auf weißem Hintergrund."),
    ("de", _one("star", "blue", "large", cell=0, background="black"), 1,
     "Das Bild zeigt einen großen blauen Stern oben links auf schwarzem Hintergrund."),
    ("de", _one("heart"), 2, "Weißer Hintergrund mit einem kleinen roten Herzen in der Mitte."),
    ("de", _one("ellipse", "purple", count=2), 2,
     "Weißer Hintergrund mit zwei kleinen violetten Ellipsen in der Mitte."),
    ("de", _related(RED_CIRCLE, "left_of", TWO_BLUE_SQUARES), 0,
     "Ein kleiner roter Kreis links von zwei großen blauen Quadraten auf weißem Hintergrund."),
    ("de", _related(RED_CIRCLE, "above", BLUE_STAR), 3,
     "Über einem großen blauen Stern ist ein kleiner roter Kreis; der Hintergrund ist weiß."),
    ("de", _one("star", "yellow", count=3, cell=7), 3,
     "Unten sind drei kleine gelbe Sterne; der Hintergrund ist weiß."),
    # French: gender/number agreement, size before and colour after the noun, d' elision
    ("fr", _one("circle"), 0, "Un petit cercle rouge au centre, sur fond blanc."),
    ("fr", _one("star"), 0, "Une petite étoile rouge au centre, sur fond blanc."),
    ("fr", _one("circle", count=2), 0, "Deux petits cercles rouges au centre, sur fond blanc."),
    ("fr", _one("cross", "white", "large", count=3, background="blue"), 2,
     "Il y a trois grandes croix blanches au centre ; le fond est bleu."),
    ("fr", _related(RED_CIRCLE, "above", BLUE_STAR), 1,
     "Un fond blanc avec un petit cercle rouge au-dessus d'une grande étoile bleue."),
    # Spanish
    ("es", _one("circle"), 0, "Un círculo rojo pequeño en el centro, sobre fondo blanco."),
    ("es", _one("star"), 0, "Una estrella roja pequeña en el centro, sobre fondo blanco."),
    ("es", _one("cross", "blue", "large", count=5), 2,
     "Hay cinco cruces azules grandes en el centro; el fondo es blanco."),
    ("es", _related(BLUE_STAR, "below", RED_CIRCLE), 1,
     "Un fondo blanco con una estrella azul grande debajo de un círculo rojo pequeño."),
    # Italian: uno before s+consonant, c'è / ci sono
    ("it", _one("circle"), 0, "Un piccolo cerchio rosso al centro, su sfondo bianco."),
    ("it", _one("star"), 1, "Uno sfondo bianco con una piccola stella rossa al centro."),
    ("it", _one("circle", count=2), 2, "Al centro ci sono due piccoli cerchi rossi; lo sfondo è bianco."),
    ("it", _one("cross", "white", "large", background="green"), 2,
     "Al centro c'è una grande croce bianca; lo sfondo è verde."),
    # Russian: 2-4 + genitive singular (adjective genitive plural, nominative plural with feminine
    # nouns), 5 + genitive plural, слева от + genitive, над + instrumental, с + instrumental
    ("ru", _one("circle"), 0, "Маленький красный круг в центре на белом фоне."),
    ("ru", _one("star"), 0, "Маленькая красная звезда в центре на белом фоне."),
    ("ru", _one("circle", count=2), 0, "Два маленьких красных круга в центре на белом фоне."),
    ("ru", _one("star", count=2), 0, "Две маленькие красные звезды в центре на белом фоне."),
    ("ru", _one("circle", count=5, background="blue"), 0, "Пять маленьких красных кругов в центре на синем фоне."),
    ("ru", _one("heart", count=5), 1, "Белый фон с пятью маленькими красными сердцами в центре."),
    ("ru", _related(RED_CIRCLE, "left_of", TWO_BLUE_SQUARES), 2,
     "Слева от двух больших синих квадратов — маленький красный круг; фон белый."),
    ("ru", _related(RED_CIRCLE, "above", BLUE_STAR), 0,
     "Маленький красный круг над большой синей звездой на белом фоне."),
    # Polish: dwa/dwie + nominative plural, pięć + genitive plural (and a singular verb),
    # na lewo od + genitive, nad + instrumental, z + instrumental
    ("pl", _one("circle"), 0, "Małe czerwone koło pośrodku, na białym tle."),
    ("pl", _one("circle", count=2), 0, "Dwa małe czerwone koła pośrodku, na białym tle."),
    ("pl", _one("circle", count=5), 2, "Pośrodku jest pięć małych czerwonych kół; tło jest białe."),
    ("pl", _one("star", "blue", "large", count=3), 2, "Pośrodku są trzy duże niebieskie gwiazdy; tło jest białe."),
    ("pl", _one("square", background="blue"), 1, "Niebieskie tło z małym czerwonym kwadratem pośrodku."),
    ("pl", _related(RED_CIRCLE, "above", TWO_BLUE_STARS), 0,
     "Małe czerwone koło nad dwiema dużymi niebieskimi gwiazdami, na białym tle."),
    ("pl", _related(TWO_BLUE_SQUARES, "left_of", FIVE_RED_CIRCLES), 0,
     "Dwa duże niebieskie kwadraty na lewo od pięciu małych czerwonych kół, na białym tle."),
    # Turkish: no plural after numerals, locative and genitive harmony, dotted capital İ
    ("tr", _one("circle", count=2), 0, "Beyaz arka planda ortada iki küçük kırmızı daire."),
    ("tr", _one("star", cell=0, background="black"), 1, "Sol üstte küçük kırmızı bir yıldız var; arka plan siyah."),
    ("tr", _related(BLUE_STAR, "below", Group("heart", "red", "large", 2)), 1,
     "İki büyük kırmızı kalbin altında büyük mavi bir yıldız var; arka plan beyaz."),
    ("tr", _related(RED_CIRCLE, "left_of", TWO_BLUE_SQUARES), 2,
     "Beyaz zeminli bir resimde iki büyük mavi karenin solunda küçük kırmızı bir daire bulunuyor."),
    # Chinese: 两 before a classifier, 颗 for stars
    ("zh", _one("circle", count=2), 0, "白色背景上，中间有两个红色的小圆。"),
    ("zh", _one("star", "yellow", "large", cell=2), 1, "右上方有一颗黄色的大星星，背景是白色的。"),
    # Japanese: が + native counter つ or 個, の before a counted anchor
    ("ja", _one("circle", count=2), 0, "中央に小さな赤い丸が二つあります。背景は白です。"),
    ("ja", _related(RED_CIRCLE, "left_of", TWO_BLUE_SQUARES), 1,
     "背景は白で、二つの大きな青い四角の左に小さな赤い丸が1個ある。"),
    # Korean: 이/가 and 을/를 by batchim, native numerals with 개
    ("ko", _one("circle", count=2), 0, "가운데에 작은 빨간 원 두 개가 있습니다. 배경은 흰색입니다."),
    ("ko", _one("circle"), 0, "가운데에 작은 빨간 원이 있습니다. 배경은 흰색입니다."),
    ("ko", _one("heart", "blue", "large"), 1, "배경은 흰색이고, 가운데에 큰 파란 하트가 있습니다."),
    ("ko", _one("heart", count=3, cell=3), 2, "흰색 배경에 왼쪽에는 작은 빨간 하트 세 개를 그린 그림입니다."),
    ("ko", _one("star"), 2, "흰색 배경에 가운데에는 작은 빨간 별을 그린 그림입니다."),
]


@pytest.mark.parametrize("lang, desc, template, expected", CAPTIONS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CAPTIONS)])
def test_caption_grammar(lang, desc, template, expected):
    assert render_caption(lang, desc, template) == expected


@pytest.mark.parametrize("word, expected", [
    ("sol", "solda"), ("orta", "ortada"), ("üst", "üstte"), ("ev", "evde"), ("kitap", "kitapta"),
    ("göz", "gözde"), ("sepet", "sepette"), ("sol alt", "sol altta"),
])
def test_turkish_locative_harmony(word, expected):
    assert tr_locative(word) == expected


@pytest.mark.parametrize("stem, harmony, expected", [
    ("daire", None, "dairenin"), ("yıldız", None, "yıldızın"), ("üçgen", None, "üçgenin"), ("kutu", None, "kutunun"),
    ("göz", None, "gözün"), ("kalb", "e", "kalbin"),
])
def test_turkish_genitive_harmony(stem, harmony, expected):
    assert tr_genitive(stem, harmony) == expected


@pytest.mark.parametrize("word, expected", [("원", True), ("개", False), ("하트", False), ("별", True), ("배경", True)])
def test_korean_batchim(word, expected):
    assert ko_has_batchim(word) is expected
