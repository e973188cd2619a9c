"""Encode many texts quickly: each distinct text once, in batches of similar token length, so almost nothing is
padding."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm


def encode_in_length_order(texts: Sequence[str], tokenize_fn: Callable[[list[str]], Mapping[str, torch.Tensor]],
                           encode_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch_size: int = 256,
                           progress: bool = True) -> torch.Tensor:
    """Embed ``texts`` and return the embeddings in the ORIGINAL order, shape [len(texts), D].

    A text that occurs more than once is encoded once. ``tokenize_fn`` turns a list of texts into right-padded
    [N, L] tensors that include ``attention_mask`` (e.g. ``TextTower.tokenize``); it is called once on all the
    distinct texts. Batches are then cut from them sorted by token count, longest first (so the peak memory
    shows at once), and trimmed to their own longest text before ``encode_fn`` (e.g. ``TextTower.forward``) runs
    under ``torch.inference_mode``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts:
        raise ValueError("no texts to encode")
    row_of = {text: row for row, text in enumerate(dict.fromkeys(texts))}
    distinct = list(row_of)
    tokens = tokenize_fn(distinct)
    lengths = tokens["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    out: torch.Tensor | None = None
    with torch.inference_mode(), tqdm(total=len(distinct), desc="encoding", unit="text", disable=not progress) as bar:
        for start in range(0, len(distinct), batch_size):
            index = order[start:start + batch_size]
            width = int(lengths[index[0]])
            batch = {k: v[index, :width] for k, v in tokens.items() if isinstance(v, torch.Tensor) and v.dim() == 2}
            emb = encode_fn(batch)
            if out is None:
                out = emb.new_empty((len(distinct), emb.shape[1]))
            out[index] = emb
            bar.update(len(index))
    if len(distinct) == len(texts):
        return out
    return out[torch.tensor([row_of[text] for text in texts])]
