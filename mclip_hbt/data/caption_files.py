"""Read caption files: plain or gzipped UTF-8 text, one caption per line, line-aligned with an image list.

Exactness rule: a line is returned exactly as written except for its line terminator (``\\n`` or
``\\r\\n``) and a UTF-8 byte-order mark at the start of the file. Leading and trailing spaces are
kept, because they are part of what the source published (a few XTD10 and Multi30K lines have them).
A missing final newline is tolerated.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

from mclip_hbt.languages import canonical_lang


class CaptionFileError(ValueError):
    """A caption file cannot be used as given (unreadable, wrong length, unknown language)."""


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a UTF-8 text file (``.gz`` read through gzip), without their line terminators."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        # newline="" keeps "\r" so only real terminators are removed, never a "\r" inside a line.
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionFileError(f"cannot read {path}: {e}") from e
    lines = text.split("\n")
    if lines[-1] == "":  # a final newline ends the last line; it does not start another one
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_aligned_captions(image_list_file: str | os.PathLike,
                          files_by_lang: dict[str, list[str | os.PathLike]]) -> list[tuple[str, dict[str, list[str]]]]:
    """Join an image list with line-aligned caption files.

    ``files_by_lang`` maps a language code (``jp`` is read as ``ja``) to one or more files; line ``i``
    of every file captions image ``i``, so a language given several files (Multi30K task 2 has five)
    gets several captions per image, in file order. Returns ``[(image_name, {lang: [captions]})]``
    in image-list order; raises :class:`CaptionFileError` when a file's line count differs from the
    image list's.
    """
    images = [name.strip() for name in read_lines(image_list_file)]
    captions: list[dict[str, list[str]]] = [{} for _ in images]
    for lang, files in files_by_lang.items():
        try:
            code = canonical_lang(lang)
        except ValueError as e:
            raise CaptionFileError(str(e)) from e
        for file in files:
            lines = read_lines(file)
            if len(lines) != len(images):
                raise CaptionFileError(f"{file} has {len(lines)} lines but the image list {image_list_file} "
                                       f"has {len(images)}; the files must be line-aligned")
            for caps, line in zip(captions, lines):
                caps.setdefault(code, []).append(line)
    return list(zip(images, captions))
