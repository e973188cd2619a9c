"""Language codes used across the project: ISO 639-1, with XTD10's ``jp`` accepted as ``ja``."""
from __future__ import annotations

from collections.abc import Iterable

#: The 11 XTD10 languages, in the order XTD10 tables use.
XTD_LANGS: tuple[str, ...] = ("en", "de", "es", "fr", "it", "ja", "ko", "pl", "ru", "tr", "zh")

#: Codes people write that mean an ISO 639-1 code.
ALIASES: dict[str, str] = {"jp": "ja", "cz": "cs", "cn": "zh", "kr": "ko"}

#: Every language the project knows by name (a caption in any other code is a data fault).
KNOWN_LANGS: frozenset[str] = frozenset(XTD_LANGS) | {"cs", "nl", "pt", "sv", "ar", "hi", "vi", "id", "th", "uk", "fi", "hu", "ro", "el", "he", "da", "no", "bg", "hr", "sk", "sl", "lt", "lv", "et", "fa", "bn", "ms", "ca"}


def canonical_lang(code: str) -> str:
    """Return the ISO 639-1 form of ``code`` (``jp`` → ``ja``); raise ``ValueError`` when unknown."""
    norm = code.strip().lower().replace("_", "-").split("-")[0]
    norm = ALIASES.get(norm, norm)
    if norm not in KNOWN_LANGS:
        raise ValueError(f"unknown language code {code!r}; use ISO 639-1 codes such as {', '.join(XTD_LANGS)}")
    return norm


def parse_lang_list(spec: str | Iterable[str], default: Iterable[str] = XTD_LANGS) -> list[str]:
    """Parse ``"all"``, ``"en,de,jp"`` or a list into canonical codes, keeping order, dropping repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s for s in (i.strip() for i in items) if s]
    if items == ["all"]:
        items = list(default)
    out: list[str] = []
    for item in items:
        code = canonical_lang(item)
        if code not in out:
            out.append(code)
    return out
