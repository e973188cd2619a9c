"""Reading caption-shard samples (``mclip_hbt.data.shards`` format): tolerant tar reading, record validation,
image decoding, and the fault counts every reader keeps (docs/design.md §3).

Faults never stop a reader. Reasons: ``bad_tar`` (unreadable or truncated shard: the complete samples
before the damage are kept), ``bad_image`` (undecodable bytes), ``missing_image``, ``bad_json``
(unparsable ``KEY.json`` or wrong types), ``no_captions`` (no json, or no caption left) are skipped
samples; ``unknown_language`` counts samples that lost captions in a language code ``canonical_lang``
rejects (the sample keeps its other languages, and is skipped as ``no_captions`` only if none remain).
A :class:`FaultCounter` logs the first fault of each reason and counts the rest.
"""
from __future__ import annotations

import logging
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import torch
from PIL import Image
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from mclip_hbt.data.images import ImageError, open_image
from mclip_hbt.data.shards import IMAGE_EXTS
from mclip_hbt.data.urls import DEFAULT_STALL_S, open_url
from mclip_hbt.fileio import parse_json
from mclip_hbt.languages import canonical_lang

logger = logging.getLogger(__name__)

#: Fault reasons that drop a sample (``unknown_language`` only drops captions).
SKIP_REASONS = ("bad_tar", "bad_image", "missing_image", "bad_json", "no_captions")

class FaultCounter(Counter):
    """Per-reason fault counts: recorded by workers, summed by consumers from chunks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._warned: set[str] = set()

    def record(self, reason: str, where: str, detail: str = "") -> None:
        """Count one fault; log the first one of each reason (later ones are only counted)."""
        self[reason] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("data fault %s in %s%s (further %r faults in this worker are counted, not logged)",
                           reason, where, f": {detail}" if detail else "", reason)

    def drain(self) -> dict[str, int]:
        """Return the counts and reset them (what a chunk carries)."""
        counts = dict(self)
        self.clear()
        return counts

    def update_from(self, chunk: dict) -> None:
        """Add a chunk's ``faults``."""
        self.update(chunk.get("faults", {}))

    def skipped(self) -> int:
        return sum(self[r] for r in SKIP_REASONS)

    def summary(self) -> str:
        if not self:
            return "no data faults"
        parts = ", ".join(f"{reason}={count}" for reason, count in sorted(self.items()))
        return f"{self.skipped()} samples skipped ({parts})"



def _complete(sample: dict | None) -> bool:
    return sample is not None and "json" in sample and any(ext in sample for ext in IMAGE_EXTS)


def read_tar_samples(url: str, faults: FaultCounter, expected: int | None = None,
                     stall_s: float = DEFAULT_STALL_S) -> Iterator[dict]:
    """Group a tar's members into raw samples (``__key__``, ``__url__``, one entry per extension).

    Unlike webdataset's ``tarfile_to_samples`` this never lets a damaged shard leak a partial sample
    into the next shard, and it reports one ``bad_tar`` per damaged shard: an unreadable or truncated
    tar ends the shard, keeping the complete samples read so far.
    """
    current: dict | None = None
    count = 0
    try:
        with open_url(url, stall_s) as stream:
            for member in tar_file_iterator(stream):
                prefix, suffix = base_plus_ext(member["fname"])
                if prefix is None:
                    continue
                if current is None or prefix != current["__key__"]:
                    if current is not None:
                        count += 1
                        yield current
                    current = {"__key__": prefix, "__url__": url}
                current[suffix.lower()] = member["data"]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        faults.record("bad_tar", url, f"{type(exc).__name__}: {exc}")
        if _complete(current):  # its members were all read before the damage
            yield current
        return
    if current is not None:
        count += 1
        yield current
    if expected is not None and count < expected:
        faults.record("bad_tar", url, f"ended after {count} of {expected} samples (sizes.json)")


def decode_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Upright 8-bit RGB image (``mclip_hbt.data.images.open_image``, as the recipes use); raises ``ImageError``."""
    return open_image(data, draft_size)


def is_unicode_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_captions(raw_json: bytes, where: str, faults: FaultCounter) -> dict | None:
    """The ``KEY.json`` record checked: ``{"captions", "mt", "source"}`` with canonical language codes,
    or None (fault recorded) when unusable."""
    try:
        record = parse_json(raw_json)  # every parse failure, nesting too deep included, is a ValueError
        if not isinstance(record, dict):
            raise ValueError("KEY.json is not a JSON object")
        captions = record.get("captions") or {}
        mt = record.get("mt") or []
        if not isinstance(captions, dict) or not isinstance(mt, list):
            raise ValueError("'captions' must be an object and 'mt' a list")
    except ValueError as exc:
        faults.record("bad_json", where, str(exc))
        return None
    kept: dict[str, list[str]] = {}
    unknown = []
    for lang, texts in captions.items():
        texts = [texts] if isinstance(texts, str) else texts
        texts = [t for t in texts if isinstance(t, str) and t.strip()] if isinstance(texts, list) else []
        unicode = [t for t in texts if is_unicode_text(t)]
        if len(unicode) < len(texts):  # valid JSON can hold lone surrogates, which no tokenizer takes
            faults.record("bad_caption", where, f"{len(texts) - len(unicode)} caption(s) in {lang!r} are not "
                                                "Unicode text (lone surrogates)")
        texts = unicode
        if not texts:
            continue
        try:
            kept.setdefault(canonical_lang(lang), []).extend(texts)
        except (ValueError, AttributeError):
            unknown.append(lang)
    if unknown:
        faults.record("unknown_language", where, f"dropped captions in {unknown}")
    if not kept:
        faults.record("no_captions", where)
        return None
    mt_langs = set()
    for lang in mt:
        try:
            mt_langs.add(canonical_lang(lang))
        except (ValueError, AttributeError):
            pass  # an unknown code in mt has no captions left to flag
    source = record.get("source")
    return {"captions": kept, "mt": sorted(mt_langs & kept.keys()), "source": source if isinstance(source, str) else ""}


def parse_sample(raw: dict, faults: FaultCounter) -> tuple[dict, str] | None:
    """A raw tar sample's checked record (``parse_captions``) and image extension, or None (fault
    recorded): the per-sample checks of every reader of shards (training, ``data_recipes.translate``)."""
    where = f"{raw['__url__']}:{raw['__key__']}"
    if "json" not in raw:
        faults.record("no_captions", where, "no KEY.json")
        return None
    record = parse_captions(raw["json"], where, faults)
    if record is None:
        return None
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        faults.record("missing_image", where)
        return None
    return record, ext


def decode_sample(raw: dict, image_transform: Callable, faults: FaultCounter, draft_size: int | None = None,
                  augment_seed: str | None = None) -> dict | None:
    """Raw tar sample → ``{"key", "image", "captions", "mt"}``, or None (fault recorded).

    ``augment_seed`` makes the transform's random augmentation a function of the sample (and epoch)
    rather than of the worker's RNG, so a resumed run sees exactly the crops an unbroken run saw.
    """
    parsed = parse_sample(raw, faults)
    if parsed is None:
        return None
    record, ext = parsed
    try:
        image = decode_image(raw[ext], draft_size)
    except ImageError as exc:
        faults.record("bad_image", f"{raw['__url__']}:{raw['__key__']}", str(exc))
        return None
    if augment_seed is None:
        pixels = image_transform(image)
    else:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also seed every accelerator, far slower
            torch.default_generator.manual_seed(zlib.crc32(augment_seed.encode()))
            pixels = image_transform(image)
    return {"key": raw["__key__"], "image": pixels, "captions": record["captions"], "mt": record["mt"]}


