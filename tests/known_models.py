"""Models whose answers are known: every picture of one colour, and every name of that colour in any language,
embed as the same one-hot vector (or, ``constant``, every embedding is the same)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from mclip_hbt.retrieval.models import RetrievalModel

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128)]
NAMES = {"en": ["red", "green", "blue", "yellow", "cyan", "magenta", "grey"],
         "de": ["rot", "grün", "blau", "gelb", "cyan", "magenta", "grau"],
         "yo": ["pupa", "ewé", "búlúù", "ofeefee", "àwọ̀ omi", "àlùkò", "eérú"]}


def colour_model(constant: bool = False) -> RetrievalModel:
    """Image and text features identical per class: a picture embeds as the one-hot of its colour (the nearest to
    its top-left pixel), a name as the one-hot of its colour in any language."""
    index = {name: i for names in NAMES.values() for i, name in enumerate(names)}

    def one_hot(i: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(i), len(COLOURS)) if constant else F.one_hot(i, len(COLOURS)).float()

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([[index[t]] for t in texts]),
                "attention_mask": torch.ones(len(texts), 1, dtype=torch.long)}

    def preprocess(image: Image.Image) -> torch.Tensor:
        pixel = torch.tensor(image.getpixel((0, 0)), dtype=torch.float)
        return (torch.tensor(COLOURS, dtype=torch.float) - pixel).norm(dim=1).argmin()

    return RetrievalModel(name="colours", pretrained="none", module=torch.nn.Identity(), tokenize=tokenize,
                          text_features=lambda tokens: one_hot(tokens["input_ids"][:, 0]),
                          image_features=one_hot, preprocess=preprocess)
