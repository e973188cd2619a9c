"""A trained model as the folders other tools load: open_clip's ``local-dir:`` and a plain Hugging Face text encoder
(the command line is ``python -m mclip_hbt.export``).

A ``MultilingualCLIP`` is open_clip's ``CustomTextCLIP`` with a Hugging Face text tower: the image tower is
open_clip's own, the text encoder an ``AutoModel``, our mean (CLS) pooling its ``mean_pooler``
(``cls_last_hidden_state_pooler``), our linear or MLP projection its ``hf_proj_type`` (an orthogonal
projection is written out as the linear map it is). Padding every caption to ``context_length``, as
open_clip does, gives the same embeddings as our padding to the longest caption (pooling ignores pads).

The text prefix (``"query: "`` of the E5 encoders) travels inside the exported tokenizers, prepended by
their normaliser: open_clip's ``HFTokenizer`` has no prefix option, and without it most recalls change.

open_clip 3.x reads ``text_cfg.hf_model_name`` with ``AutoConfig.from_pretrained``, which resolves a
relative path against the working directory, not the model folder; the export therefore names its own
folder by absolute path, and ``relink`` rewrites that path once the folder has moved.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import normalizers
from transformers import AutoTokenizer

from mclip_hbt.fileio import atomic_directory, write_json_atomic, write_text_atomic
from mclip_hbt.model.clip import MultilingualCLIP, resolve_vision_cfg
from mclip_hbt.offline.hf_files import save_tokenizer

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
#: The projection from the text encoder's pooled output into the shared space, beside a transformers export.
TEXT_PROJECTION_WEIGHTS = "text_projection.safetensors"
#: How a transformers export is used: pooling, prefix (already in the tokenizer) and the projection file.
TEXT_ENCODER_CARD = "mclip_hbt_text_encoder.json"
POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}
#: Beside an open_clip export: what to do when it was moved, since open_clip's own error (a Hugging Face "repo
#: id" complaint about the old path) cannot say it.
EXPORT_README = "README.md"
MOVED_EXPORT_HELP = """# An open_clip export of an mclip_hbt model

Load it with `open_clip.create_model_and_transforms("local-dir:THIS_FOLDER")` and
`open_clip.get_tokenizer("local-dir:THIS_FOLDER")`; the text prefix (E5's "query: ") is inside the tokenizer.

open_clip reads `text_cfg.hf_model_name` in `open_clip_config.json` as a path from the working directory, so it
holds this folder's absolute path: {folder}

**Moved or copied this folder?** open_clip then fails with a Hugging Face "repo id" error naming the old path.
Point the export at its new place:

    python -m mclip_hbt.export relink NEW_PLACE
"""


class ExportError(ValueError):
    """A model that cannot be written in the asked layout; the message says why."""


def save_tokenizer_with_prefix(model: MultilingualCLIP, directory: Path) -> None:
    """The model's tokenizer in ``directory``, its normaliser prepending the text prefix: ``tokenizer(text)``
    there gives the ids that ``model.tokenize([text])`` gives."""
    save_tokenizer(model.text.tokenizer, directory)
    if not model.text.prefix:
        return
    tokenizer = AutoTokenizer.from_pretrained(directory)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"the tokenizer ({type(tokenizer).__name__}) has no fast backend to carry the text prefix "
                          f"{model.text.prefix!r}")
    steps = [normalizers.Prepend(model.text.prefix)] + ([backend.normalizer] if backend.normalizer else [])
    backend.normalizer = normalizers.Sequence(steps)
    save_tokenizer(tokenizer, directory)


def _projection_weights(model: MultilingualCLIP) -> dict[str, torch.Tensor]:
    """The text projection as open_clip's ``text.proj`` keys (an orthogonal one as its matrix)."""
    proj, kind = model.text_projection, model.config.projection
    if kind in ("linear", "orthogonal"):
        return {"weight": proj.weight}
    if kind == "mlp":
        return {"0.weight": proj[0].weight, "2.weight": proj[2].weight}
    return {}


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copies (safetensors stores neither channels-last strides nor autograd)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def open_clip_state_dict(model: MultilingualCLIP) -> dict[str, torch.Tensor]:
    """Our weights under the names open_clip's ``CustomTextCLIP`` with an HF text tower gives them."""
    weights = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    weights.update({f"text.transformer.{k}": v for k, v in model.text.transformer.state_dict().items()})
    weights.update({f"text.proj.{k}": v for k, v in _projection_weights(model).items()})
    weights["logit_scale"] = model.logit_scale
    if model.logit_bias is not None:
        weights["logit_bias"] = model.logit_bias
    return _plain(weights)


def open_clip_config(model: MultilingualCLIP, folder: Path) -> dict:
    """``open_clip_config.json`` for an export living at ``folder`` (its HF text config and tokenizer are there)."""
    embed_dim, vision_cfg = resolve_vision_cfg(model.config)
    where = str(folder.resolve())
    text_cfg = {"hf_model_name": where, "hf_tokenizer_name": where,
                "hf_proj_type": {"linear": "linear", "orthogonal": "linear", "mlp": "mlp"}.get(model.config.projection),
                "hf_pooler_type": POOLERS[model.config.pooling], "context_length": model.text.max_length}
    model_cfg = {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg, "custom_text": True}
    if model.logit_bias is not None:
        model_cfg["init_logit_bias"] = float(model.logit_bias)
    return {"model_cfg": model_cfg, "preprocess_cfg": dataclasses.asdict(model.preprocess_cfg)}


def export_open_clip(model: MultilingualCLIP, out: str | Path) -> Path:
    """A folder ``open_clip.create_model_and_transforms("local-dir:OUT")`` and ``get_tokenizer`` load offline."""
    out = Path(out)
    with atomic_directory(out) as staging:
        model.text.transformer.config.save_pretrained(staging)  # what open_clip's AutoConfig call reads
        save_tokenizer_with_prefix(model, staging)
        save_file(open_clip_state_dict(model), str(staging / OPEN_CLIP_WEIGHTS))
        write_json_atomic(staging / OPEN_CLIP_CONFIG, open_clip_config(model, out))
        write_text_atomic(staging / EXPORT_README, MOVED_EXPORT_HELP.format(folder=out.resolve()))
    return out


def export_transformers(model: MultilingualCLIP, out: str | Path) -> Path:
    """A plain Hugging Face text-encoder folder (``AutoModel``/``AutoTokenizer``, the prefix in the tokenizer),
    with the projection into the shared image–text space and how to pool beside it."""
    out = Path(out)
    with atomic_directory(out) as staging:
        model.text.transformer.save_pretrained(staging)
        save_tokenizer_with_prefix(model, staging)
        save_file(_plain(_projection_weights(model)), str(staging / TEXT_PROJECTION_WEIGHTS))
        write_json_atomic(staging / TEXT_ENCODER_CARD, {
            "pooling": model.config.pooling, "prefix_in_tokenizer": model.text.prefix,
            "projection": model.config.projection, "projection_weights": TEXT_PROJECTION_WEIGHTS,
            "embed_dim": resolve_vision_cfg(model.config)[0],
            "usage": "mean of the last hidden state over the attention mask (cls: its first token), then "
                     "projection_weights (a Linear without bias, or Linear-GELU-Linear for mlp), then L2 norm; "
                     "the tokenizer already prepends prefix_in_tokenizer: do not add it again"})
        write_sentence_transformers_modules(model, staging)
    return out


#: sentence-transformers' classic module layout (``sentence_transformers.models.*``), which its releases since
#: 2.x read: the folder loads as ``SentenceTransformer(OUT)`` and encodes into the image–text space.
_ST_IDENTITY, _ST_GELU = "torch.nn.modules.linear.Identity", "torch.nn.modules.activation.GELU"


def write_sentence_transformers_modules(model: MultilingualCLIP, folder: Path) -> None:
    """Transformer (this folder) → Pooling → the projection as Dense layer(s) → Normalize."""
    width, pooling = model.text.width, model.config.pooling
    modules = [("", "Transformer")]
    (folder / "1_Pooling").mkdir()
    write_json_atomic(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})
    modules.append(("1_Pooling", "Pooling"))
    proj, kind = model.text_projection, model.config.projection
    layers = ([(proj, _ST_IDENTITY)] if kind in ("linear", "orthogonal")
              else [(proj[0], _ST_GELU), (proj[2], _ST_IDENTITY)] if kind == "mlp" else [])
    for linear, activation in layers:
        name = f"{len(modules)}_Dense"
        (folder / name).mkdir()
        write_json_atomic(folder / name / "config.json", {
            "in_features": linear.in_features, "out_features": linear.out_features, "bias": False,
            "activation_function": activation})
        save_file(_plain({"linear.weight": linear.weight}), str(folder / name / "model.safetensors"))
        modules.append((name, "Dense"))
    name = f"{len(modules)}_Normalize"
    (folder / name).mkdir()
    modules.append((name, "Normalize"))
    write_json_atomic(folder / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(modules)])
    write_json_atomic(folder / "sentence_bert_config.json", {"max_seq_length": model.text.max_length,
                                                              "do_lower_case": False})
    write_json_atomic(folder / "config_sentence_transformers.json", {
        "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})


def relink(folder: str | Path) -> Path:
    """Point a moved open_clip export's ``hf_model_name``/``hf_tokenizer_name`` at where it is now."""
    folder = Path(folder)
    config_file = folder / OPEN_CLIP_CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        text_cfg = config["model_cfg"]["text_cfg"]
        if not isinstance(text_cfg, dict):
            raise TypeError(f"model_cfg.text_cfg is {type(text_cfg).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{config_file} is not an open_clip export's config ({type(err).__name__}: {err})") from None
    text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(folder.resolve())
    try:
        write_json_atomic(config_file, config)
        write_text_atomic(folder / EXPORT_README, MOVED_EXPORT_HELP.format(folder=folder.resolve()))
    except OSError as err:
        raise ExportError(f"cannot rewrite {config_file} ({err.strerror or err}); make the folder writable, or copy "
                          "it somewhere writable and relink the copy") from None
    return folder


EXPORTS = {"open_clip": export_open_clip, "transformers": export_transformers}
