"""The text tower: any Hugging Face encoder + its tokenizer, pooled into one vector per caption."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from open_clip.hf_model import ClsPooler, MeanPooler
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from mclip_hbt.offline.bundled_e5 import resolve_model_name
from mclip_hbt.offline.hub import load_or_explain

POOLINGS = ("mean", "cls")
#: Characters kept per token of max_length before tokenising: far more than a token covers, so only a caption whose
#: first max_length tokens span more (thousands of spaces, say) tokenises otherwise than whole.
MAX_CHARS_PER_TOKEN = 64


def _make_pooler(pooling: str) -> nn.Module:
    if pooling == "mean":
        return MeanPooler()
    if pooling == "cls":  # the first token's hidden state, not BERT's separately trained pooler head
        return ClsPooler(use_pooler_output=False)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


class TextTower(nn.Module):
    """A Hugging Face ``AutoModel`` encoder with its tokenizer, a pooling rule and an optional prefix."""

    def __init__(self, transformer: nn.Module, tokenizer: PreTrainedTokenizerBase, pooling: str = "mean",
                 prefix: str = "", max_length: int = 77):
        super().__init__()
        positions = getattr(transformer.config, "max_position_embeddings", None)
        if positions is not None and max_length > usable_positions(transformer.config):
            raise ValueError(f"max_length {max_length} is beyond the {usable_positions(transformer.config)} positions "
                             f"of the text encoder ({transformer.config.model_type}); use at most that")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.pooler = _make_pooler(pooling)
        self.prefix = prefix
        self.max_length = max_length
        #: Run the encoder in this many length-sorted groups per batch (less padding; 1 = one pass).
        self.length_groups = 1

    @classmethod
    def from_name(cls, name_or_path: str, *, pretrained: bool = True, config_overrides: Mapping | None = None,
                  pooling: str = "mean", prefix: str = "", max_length: int = 77) -> "TextTower":
        """Load a hub name, a local directory or ``bundled:NAME``; ``pretrained=False`` gives random weights."""
        path = load_or_explain(lambda: resolve_model_name(name_or_path), "bundled model", name_or_path)
        tokenizer = load_or_explain(lambda: AutoTokenizer.from_pretrained(path), "tokenizer", name_or_path)
        config = load_or_explain(lambda: AutoConfig.from_pretrained(path, **dict(config_overrides or {})),
                                 "text encoder config", name_or_path)
        if pretrained:
            transformer = load_or_explain(
                lambda: AutoModel.from_pretrained(path, config=config, **_model_kwargs(config)),
                "text encoder", name_or_path)
        else:
            transformer = cls.transformer_from_config(config)
        return cls(transformer, tokenizer, pooling=pooling, prefix=prefix, max_length=max_length)

    @staticmethod
    def transformer_from_config(config) -> nn.Module:
        """A randomly initialised encoder for ``config`` (a ``PretrainedConfig`` or its dict)."""
        if isinstance(config, Mapping):
            config = dict(config)
            config = AutoConfig.for_model(config.pop("model_type"), **config)
        return AutoModel.from_config(config, **_model_kwargs(config))

    @property
    def width(self) -> int:
        return self.transformer.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> BatchEncoding:
        """Tokenize captions (prefix added), padded to the longest caption of this batch, truncated at
        ``max_length``."""
        if isinstance(texts, str):
            texts = [texts]
        # Cut before tokenising: the tokenizer reads a whole string before truncating to max_length tokens, so a
        # megabyte caption would cost seconds and gigabytes for the same tokens as its first few thousand characters.
        limit = self.max_length * MAX_CHARS_PER_TOKEN
        texts = [self.prefix + t[:limit] for t in texts]
        return self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                              return_tensors="pt", return_token_type_ids=False)

    def forward(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
        if self.length_groups <= 1 or input_ids.shape[0] < 2 * self.length_groups:
            return self._pooled(input_ids, attention_mask)
        # A contrastive batch cannot be regrouped by length, but its text forward can: rows sorted by
        # length, run in groups each trimmed to its own longest row (right padding only, so positions
        # and pooled values are unchanged), then put back in batch order.
        lengths = attention_mask.sum(1)
        order = lengths.argsort()
        pooled = []
        for rows in order.tensor_split(self.length_groups):
            width = int(lengths[rows].max())
            pooled.append(self._pooled(input_ids[rows, :width], attention_mask[rows, :width]))
        return torch.cat(pooled)[order.argsort()]

    def _pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return self.pooler(out, attention_mask.to(out.last_hidden_state.dtype))

    def encoder_layers(self) -> nn.ModuleList:
        """The stack of transformer blocks (the ModuleList whose length is the model's layer count)."""
        n = self.transformer.config.num_hidden_layers
        for module in self.transformer.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return module
        raise ValueError(f"cannot find the layer list of {type(self.transformer).__name__}")

    def lock(self, unlocked_layers: int = 0, freeze_embeddings: bool = True) -> None:
        """Freeze the encoder except its top ``unlocked_layers`` blocks (and its embeddings unless asked)."""
        layers = self.encoder_layers()
        if not 0 <= unlocked_layers <= len(layers):
            raise ValueError(f"unlocked_layers must be in [0, {len(layers)}], got {unlocked_layers}")
        for p in self.transformer.parameters():
            p.requires_grad = False
        for layer in list(layers)[len(layers) - unlocked_layers:]:
            for p in layer.parameters():
                p.requires_grad = True
        if not freeze_embeddings:
            for p in self.transformer.get_input_embeddings().parameters():
                p.requires_grad = True

    def freeze_word_embeddings(self) -> None:
        """Freeze the token embedding matrix (most of a multilingual encoder's parameters)."""
        for p in self.transformer.get_input_embeddings().parameters():
            p.requires_grad = False


def usable_positions(config) -> int:
    """How many tokens an encoder takes: its position table, less RoBERTa-style models' padding offset."""
    offset = config.pad_token_id + 1 if config.model_type in _POOLER_MODEL_TYPES - {"bert"} else 0
    return config.max_position_embeddings - offset


# Encoders whose AutoModel class adds a pooler head by default; pooling here is ours, so skip it.
_POOLER_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "camembert"}


def _model_kwargs(config) -> dict:
    kwargs = {"attn_implementation": "sdpa"}
    if config.model_type in _POOLER_MODEL_TYPES:
        kwargs["add_pooling_layer"] = False
    return kwargs
