"""Where the emoji world's data comes from: finding, fetching and reading the Unicode CLDR annotations
(each emoji's short name and keywords per language) and the Noto Color Emoji font."""
from __future__ import annotations

import io
import shutil
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mclip_hbt.languages import canonical_lang
from mclip_hbt.paths import shared_data_dir

CLDR_SYSTEM_DIR = Path("/usr/share/unicode/cldr/common/annotations")
FONT_SYSTEM_FILE = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CLDR_URL = "https://unicode.org/Public/cldr/41/core.zip"
FONT_URL = "https://github.com/googlefonts/noto-emoji/raw/v2.042/fonts/NotoColorEmoji.ttf"
WHERE_TO_GET = (
    "get the CLDR annotations from CLDR's core.zip ({cldr}, folder common/annotations) or Debian's "
    "unicode-cldr-core package, and the font from the noto-emoji release ({font}) or Debian's "
    "fonts-noto-color-emoji; or pass --download to fetch both").format(cldr=CLDR_URL, font=FONT_URL)


class EmojiDataError(ValueError):
    """The CLDR annotations or the font cannot be found or read; the message says where to get them."""


def locate_cldr(path: str | Path | None = None) -> Path:
    """The folder of CLDR ``annotations/*.xml``: ``path``, else the shared data, else Debian's."""
    candidates = [Path(path)] if path else [shared_data_dir() / "cldr-annotations" / "annotations", CLDR_SYSTEM_DIR]
    for folder in candidates:
        if (folder / "en.xml").is_file():
            return folder
        if (folder / "annotations" / "en.xml").is_file():
            return folder / "annotations"
    raise EmojiDataError(f"no CLDR annotations (en.xml) in {', '.join(map(str, candidates))}; {WHERE_TO_GET}")


def locate_font(path: str | Path | None = None) -> Path:
    """The Noto Color Emoji font file: ``path``, else the shared data, else Debian's."""
    candidates = [Path(path)] if path else [shared_data_dir() / "emoji-font" / "NotoColorEmoji.ttf", FONT_SYSTEM_FILE]
    for file in candidates:
        if file.is_file():
            return file
    raise EmojiDataError(f"no emoji font at {', '.join(map(str, candidates))}; {WHERE_TO_GET}")


def download(cldr_url: str, font_url: str, dest: Path) -> tuple[Path, Path]:
    """Fetch CLDR's core.zip (keeping ``common/annotations``) and the font into ``dest``; reused when present."""
    cldr_dir, font_file = dest / "cldr-annotations" / "annotations", dest / "emoji-font" / "NotoColorEmoji.ttf"
    if not (cldr_dir / "en.xml").is_file():
        with urllib.request.urlopen(cldr_url, timeout=120) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
        members = [m for m in archive.namelist() if m.startswith("common/annotations/") and m.endswith(".xml")]
        if not members:
            raise EmojiDataError(f"{cldr_url} holds no common/annotations/*.xml; is it CLDR's core.zip?")
        staging = cldr_dir.with_name(cldr_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for member in members:
            (staging / Path(member).name).write_bytes(archive.read(member))
        staging.rename(cldr_dir)
    if not font_file.is_file():
        font_file.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(font_url, timeout=120) as response:
            data = response.read()
        tmp = font_file.with_name(font_file.name + ".tmp")
        tmp.write_bytes(data)
        tmp.rename(font_file)
    return cldr_dir, font_file


@dataclass(frozen=True)
class Annotation:
    name: str  # the CLDR short name (type="tts")
    keywords: tuple[str, ...]


def read_annotations(xml_file: Path) -> dict[str, Annotation]:
    """``{emoji: Annotation}`` of one CLDR annotations file (a real XML parser: entities decoded)."""
    try:
        root = ET.parse(xml_file).getroot()
    except (ET.ParseError, OSError) as err:
        raise EmojiDataError(f"cannot read {xml_file}: {err}") from err
    names: dict[str, str] = {}
    keywords: dict[str, tuple[str, ...]] = {}
    for node in root.iter("annotation"):
        emoji, text = node.get("cp"), (node.text or "").strip()
        if not emoji or not text or text == "↑↑↑":  # "↑↑↑": inherited from the parent locale, no name here
            continue
        if node.get("type") == "tts":
            names[emoji] = text
        else:
            keywords[emoji] = tuple(k.strip() for k in text.split("|") if k.strip())
    return {e: Annotation(n, keywords.get(e) or (n,)) for e, n in names.items()}


def read_all_annotations(cldr_dir: Path) -> dict[str, dict[str, Annotation]]:
    """Every language's annotations, keyed by the project's language code (``root`` is no language)."""
    out: dict[str, dict[str, Annotation]] = {}
    for xml_file in sorted(cldr_dir.glob("*.xml")):
        if xml_file.stem == "root":
            continue
        try:
            lang = canonical_lang(xml_file.stem)
        except ValueError:
            continue  # a locale file this project has no code for; listed nowhere, used nowhere
        out.setdefault(lang, {}).update(read_annotations(xml_file))
    return out
