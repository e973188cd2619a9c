"""Language codes used across the project.

A code is ISO 639-1 where the language has one, otherwise CLDR's own code (ISO 639-2/3, e.g. ``fil``,
``yue``, ``ceb``). Any code CLDR knows is accepted, whatever form it is written in: ISO 639-3 and
deprecated codes go through CLDR's alias table (``yor`` → ``yo``, ``iw`` → ``he``, ``tl`` → ``fil``),
and XTD10's ``jp`` is ``ja``. A code CLDR does not know (``xx``) is refused.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from babel import Locale
from babel.core import get_global

#: The 11 XTD10 languages, in the order XTD10 tables use.
XTD_LANGS: tuple[str, ...] = ("en", "de", "es", "fr", "it", "ja", "ko", "pl", "ru", "tr", "zh")

#: Codes people write that are not language codes at all (country codes, XTD10's ``jp``).
ALIASES: dict[str, str] = {"jp": "ja", "cz": "cs", "cn": "zh", "kr": "ko"}


@lru_cache(maxsize=1)
def _cldr_tables() -> tuple[dict[str, str], frozenset[str]]:
    """CLDR's language aliases (primary subtag → primary subtag) and every language code it names."""
    aliases = {alias: target.replace("-", "_").split("_")[0]
               for alias, target in get_global("language_aliases").items() if "_" not in alias}
    return aliases, frozenset(Locale("en").languages)


def canonical_lang(code: str) -> str:
    """Return the project's form of ``code`` (``jp`` → ``ja``, ``yor`` → ``yo``); raise ``ValueError`` when unknown."""
    norm = code.strip().lower().replace("_", "-").split("-")[0]
    aliases, known = _cldr_tables()
    norm = ALIASES.get(norm) or aliases.get(norm, norm)
    if norm not in known:
        raise ValueError(f"unknown language code {code!r}; use ISO 639-1 codes such as {', '.join(XTD_LANGS)}, "
                         "or ISO 639-3 / CLDR codes (yue, fil, ceb) for languages without one")
    return norm


def language_name(code: str) -> str:
    """The English name of a language code (``yo`` → ``Yoruba``), for tables and plots."""
    return Locale("en").languages.get(canonical_lang(code), code)


def parse_lang_list(spec: str | Iterable[str], default: Iterable[str] = XTD_LANGS) -> list[str]:
    """Parse ``"all"``, ``"en,de,jp"`` or a list into canonical codes, keeping order, dropping repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    strange = [i for i in items if not isinstance(i, str)]
    if strange:  # a YAML list of numbers, say
        raise ValueError(f"language codes are text, like 'de' or 'jp'; got {strange[0]!r}")
    items = [s for s in (i.strip() for i in items) if s]
    if items == ["all"]:
        items = list(default)
    out: list[str] = []
    for item in items:
        code = canonical_lang(item)
        if code not in out:
            out.append(code)
    return out


#: XLM-R's pre-training corpus CC-100, GiB of uncompressed text per language (all rows of a language
#: summed: romanized, Traditional-script and Zawgyi-encoded rows into their base code). Source: Conneau
#: et al. 2020, arXiv 1911.02116, Appendix A Table 6, as transcribed in github.com/mayhewsw/
#: multilingual-data-stats (cc-100/cc-100.csv); the 100 language names match fairseq's
#: examples/xlmr/README.md. multilingual-e5 (the bundled encoder) starts from Multilingual-MiniLM with
#: XLM-R's vocabulary and names these languages as the ones it supports. CC-100 writes Filipino as ``tl``.
XLMR_CC100_GIB: dict[str, float] = {
    "af": 1.3, "am": 0.8, "ar": 28.0, "as": 0.1, "az": 6.5, "be": 4.3, "bg": 57.5, "bn": 8.9, "br": 0.1,
    "bs": 0.1, "ca": 10.1, "cs": 16.3, "cy": 0.8, "da": 45.6, "de": 66.6, "el": 46.9, "en": 300.8, "eo": 0.9,
    "es": 53.3, "et": 6.1, "eu": 2.0, "fa": 111.6, "fi": 54.3, "fr": 56.8, "fy": 0.2, "ga": 0.5, "gd": 0.1,
    "gl": 2.9, "gu": 1.9, "ha": 0.3, "he": 31.6, "hi": 20.7, "hr": 20.5, "hu": 58.4, "hy": 5.5, "id": 148.3,
    "is": 3.2, "it": 30.2, "ja": 69.3, "jv": 0.2, "ka": 9.1, "kk": 6.4, "km": 1.5, "kn": 3.3, "ko": 54.2,
    "ku": 0.4, "ky": 1.2, "la": 2.5, "lo": 0.6, "lt": 13.7, "lv": 8.8, "mg": 0.2, "mk": 4.8, "ml": 7.6,
    "mn": 3.0, "mr": 2.8, "ms": 8.5, "my": 2.0, "ne": 3.8, "nl": 29.3, "no": 49.0, "om": 0.1, "or": 0.6,
    "pa": 0.8, "pl": 44.6, "ps": 0.7, "pt": 49.1, "ro": 61.4, "ru": 278.0, "sa": 0.3, "sd": 0.4, "si": 3.6,
    "sk": 23.2, "sl": 10.3, "so": 0.4, "sq": 5.4, "sr": 9.1, "su": 0.1, "sv": 85.0, "sw": 1.6, "ta": 12.5,
    "te": 5.0, "th": 71.7, "fil": 3.1, "tr": 20.9, "ug": 0.4, "uk": 84.6, "ur": 6.2, "uz": 0.7, "vi": 137.3,
    "xh": 0.1, "yi": 0.3, "zh": 63.5,
}
PRETRAINING_SOURCE = ("XLM-R CC-100 (arXiv 1911.02116, Table 6, via github.com/mayhewsw/multilingual-data-stats "
                      "cc-100/cc-100.csv)")


def pretraining_status(code: str) -> dict:
    """Whether XLM-R's pre-training corpus holds the language, and how much of it (GiB), for reports."""
    size = XLMR_CC100_GIB.get(canonical_lang(code))
    return {"in_pretraining": size is not None, "cc100_gib": size}
