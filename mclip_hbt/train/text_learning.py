"""Letting the text encoder learn without forgetting what it knew.

A multilingual encoder fine-tuned on captions of one picture world quickly loses what made it multilingual (its
caption X → English retrieval on real text), and nothing in the training loss warns of it. Three levers, each an
option of ``train.py`` and each usable with the others:

- a learning rate of its own for the text encoder's trainable weights (``--text-lr``), below the head's;
- LoRA adapters on the encoder through ``peft`` (``--text-lora-rank``): the encoder's own weights stay frozen, the
  low-rank updates train, and ``merge_lora`` folds them into the weights when the model is saved, so exports and
  evaluators see a plain encoder;
- a preservation term (``--text-distill-weight``): the frozen initial encoder is the teacher, and the distance
  between its pooled features and the trained encoder's on the batch's own captions joins the loss.

The text–text term on translation pairs (``--text-pair-weight``, on the loss) is the fourth lever; on the emoji
world its pairs are CLDR names written by people, not machine translations.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mclip_hbt.model.clip import MultilingualCLIP
from mclip_hbt.model.text_tower import TextTower
from mclip_hbt.options import OptionError, option

DISTILL_LOSSES = ("cosine", "l2")


@dataclass
class TextLearningConfig:
    """How the text encoder trains; each field is a ``train.py`` option."""

    text_lr: float | None = option(None, "Peak learning rate of the text encoder's trainable weights (its unlocked "
                                         "blocks or LoRA adapters); the projection head and image tower keep --lr "
                                         "(default: --lr for all).")
    text_lora_rank: int = option(0, "Train LoRA adapters of this rank on the text encoder instead of its weights "
                                    "(peft), merged into the weights when the model is saved; 0 = off.")
    text_lora_alpha: float = option(16.0, "LoRA scale alpha: the adapters' update is scaled by alpha / rank.")
    text_lora_dropout: float = option(0.0, "Dropout on the LoRA adapters' input.")
    text_lora_targets: str = option("query,value", "Comma-separated names of the encoder's linear layers that get "
                                                   "adapters (BERT / XLM-R: query, key, value, dense).")
    text_distill_weight: float = option(0.0, "Weight of the preservation term: the distance between the trained and "
                                             "the frozen initial encoder's pooled features of the batch's captions "
                                             "(0 = off).")
    text_distill_loss: str = option("cosine", "Distance of the preservation term: cosine (1 - cos) or l2 (squared "
                                              "distance of the L2-normalised features).", choices=DISTILL_LOSSES)

    def __post_init__(self) -> None:
        if self.text_lr is not None and self.text_lr < 0:
            raise OptionError("text_lr", f"must be >= 0, got {self.text_lr}")
        for name in ("text_lora_rank", "text_lora_alpha", "text_distill_weight"):
            if getattr(self, name) < 0:
                raise OptionError(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.text_lora_dropout < 1.0:
            raise OptionError("text_lora_dropout", f"must be in [0, 1), got {self.text_lora_dropout}")
        if self.text_lora_rank and not self.lora_targets():
            raise OptionError("text_lora_targets", "name at least one linear layer, e.g. 'query,value'")
        if self.text_distill_loss not in DISTILL_LOSSES:
            raise OptionError("text_distill_loss", f"must be one of {', '.join(DISTILL_LOSSES)}")

    def lora_targets(self) -> list[str]:
        return [name.strip() for name in self.text_lora_targets.split(",") if name.strip()]


def add_lora(text: TextTower, config: TextLearningConfig) -> None:
    """Wrap the encoder in peft LoRA adapters: only they train from now on. OptionError when a target names no layer."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.text_lora_rank, lora_alpha=config.text_lora_alpha,
                      lora_dropout=config.text_lora_dropout, target_modules=config.lora_targets(), bias="none")
    try:
        text.transformer = get_peft_model(text.transformer, lora)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise OptionError("text_lora_targets", f"{err}; the encoder's linear layers are named "
                                               f"{', '.join(sorted(linear_layer_names(text)))}") from None


def linear_layer_names(text: TextTower) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in text.transformer.named_modules()
            if isinstance(module, torch.nn.Linear)}


def merge_lora(model: MultilingualCLIP) -> None:
    """Fold trained LoRA adapters into the encoder's weights (a plain ``transformers`` model again); no-op without."""
    from peft import PeftModel

    if isinstance(model.text.transformer, PeftModel):
        model.text.transformer = model.text.transformer.merge_and_unload()


def text_encoder_parameters(model: MultilingualCLIP) -> set[int]:
    """The ids of the text encoder's parameters (not the projection head's), for a learning rate of their own."""
    return {id(p) for p in model.text.transformer.parameters()}


class TextTeacher:
    """The text encoder as it was before training, frozen: what the preservation term keeps the student near."""

    def __init__(self, text: TextTower, config: TextLearningConfig):
        from peft import PeftModel

        transformer = copy.deepcopy(text.transformer)
        if isinstance(transformer, PeftModel):  # untrained adapters change nothing (LoRA's B starts at zero)
            transformer = transformer.merge_and_unload()
        self.tower = TextTower(transformer, text.tokenizer, pooling=text.pooling, prefix=text.prefix,
                               max_length=text.max_length)
        self.tower.length_groups = text.length_groups
        self.tower.requires_grad_(False).eval()
        self.weight, self.kind = config.text_distill_weight, config.text_distill_loss

    def to(self, device: torch.device) -> "TextTeacher":
        self.tower.to(device)
        return self

    def loss(self, student_pooled: torch.Tensor, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The distance of the student's pooled features from the teacher's on the same tokens, averaged."""
        with torch.no_grad():
            teacher = F.normalize(self.tower(tokens).float(), dim=-1)
        student = F.normalize(student_pooled.float(), dim=-1)
        if self.kind == "cosine":
            return (1.0 - (student * teacher).sum(-1)).mean()
        return (student - teacher).pow(2).sum(-1).mean()
