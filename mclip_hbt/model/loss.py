"""The training objective: open_clip's image–text losses plus the masked text–text term, which is ours.

The image–text term is open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)`` or ``SigLipLoss``:
each rank scores its *local* rows against the features gathered from every rank, and the gather keeps
gradients. Under DDP, which averages gradients over ranks, this gives exactly the gradient of the
single-process loss on the whole global batch. The text–text term (a caption against its translation)
follows the same semantics but must skip the rows that have no translation, which open_clip's losses
cannot; it is written here.

Conventions, as in open_clip: features come normalised, ``logit_scale`` is the already exponentiated scale
(``model.logit_scale.exp()``), ``logit_bias`` is added as is. Every rank must hold the same local batch size
(the gathered labels are offset by ``rank * local_batch``); :class:`ContrastiveLoss` checks this with one
small collective per call.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from mclip_hbt.runtime import process_group_rank_world

LOSS_KINDS = ("clip", "siglip")


#: torch marks its autograd all_gather deprecated in favour of a private API; it is still the public one that
#: works on both gloo and NCCL, and open_clip's losses call it too.
_DEPRECATED_GATHER = r"torch\.distributed\.nn\.functional\.all_gather"


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``features`` from every rank along dim 0, in rank order, keeping gradients.

    The backward pass sends each rank the sum of all ranks' gradients for its rows. Identity in a
    single process.
    """
    _, world = process_group_rank_world()
    if world == 1:
        return features
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED_GATHER, category=FutureWarning)
        return torch.cat(dist_fn.all_gather(features), dim=0)


def check_equal_local_batches(local_batch: int, device: torch.device) -> None:
    """Raise ``ValueError`` unless every rank holds ``local_batch`` rows (no-op in a single process)."""
    _, world = process_group_rank_world()
    if world == 1:
        return
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local_batch], dtype=torch.long, device=device))
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(f"contrastive loss needs equal local batch sizes on every rank, got {sizes}")


def _masked_info_nce_rows(queries: torch.Tensor, all_keys: torch.Tensor, labels: torch.Tensor,
                          logit_scale: torch.Tensor, valid_keys: torch.Tensor,
                          valid_queries: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the valid local ``queries`` against the valid ``all_keys`` (positives at ``labels``)."""
    logits = (logit_scale * queries @ all_keys.T).masked_fill(~valid_keys[None, :], float("-inf"))
    # An invalid query's own key is masked, so its row could be all -inf (NaN even when weighted by
    # zero); give it finite logits and drop it from the sum instead.
    logits = torch.where(valid_queries[:, None], logits, torch.zeros_like(logits))
    per_row = F.cross_entropy(logits, labels, reduction="none")
    return torch.where(valid_queries, per_row, torch.zeros_like(per_row)).sum()


def text_pair_loss(text_features: torch.Tensor, pair_features: torch.Tensor, pair_mask: torch.Tensor,
                   logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between captions and their translations, over the rows with ``pair_mask`` only.

    The other rows are neither queries nor candidates, and their feature values are ignored. The global
    loss is the mean over the paired rows of all ranks; each rank returns ``world * (its rows' sum) /
    (global count)`` so that averaging gradients over ranks (DDP) reproduces it exactly.
    """
    rank, world = process_group_rank_world()
    all_text, all_pairs = gather_with_grad(text_features), gather_with_grad(pair_features)
    labels = torch.arange(text_features.shape[0], device=text_features.device) + rank * text_features.shape[0]
    valid_local = pair_mask.to(device=text_features.device, dtype=torch.bool)
    valid_all = gather_with_grad(valid_local.to(text_features.dtype)) > 0
    count = valid_all.sum().clamp(min=1).float()  # no pairs anywhere: the sums are 0, so is the loss
    total = (_masked_info_nce_rows(text_features, all_pairs, labels, logit_scale, valid_all, valid_local)
             + _masked_info_nce_rows(pair_features, all_text, labels, logit_scale, valid_all, valid_local))
    return total / 2 * world / count


class ContrastiveLoss(nn.Module):
    """The training objective: image–text loss (``"clip"`` or ``"siglip"``) + λ · text–text InfoNCE.

    ``forward`` returns ``{"loss", "contrastive_loss"}`` and, when λ > 0, ``"text_pair_loss"``
    (unweighted). Text pairs reuse the image–text ``logit_scale``. For the text–text term pass
    ``pair_features`` [local batch, dim] and ``pair_mask`` [local batch] (False where a caption has
    no translation; those rows' features may be anything, e.g. zeros).
    """

    def __init__(self, kind: str = "clip", text_pair_weight: float = 0.0):
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
        if text_pair_weight < 0:
            raise ValueError(f"text_pair_weight must be >= 0, got {text_pair_weight}")
        self.kind = kind
        self.text_pair_weight = text_pair_weight
        rank, world = process_group_rank_world()
        self.image_text = (SigLipLoss(rank=rank, world_size=world) if kind == "siglip" else
                           ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, pair_features: torch.Tensor | None = None,
                pair_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_equal_local_batches(image_features.shape[0], image_features.device)
        if self.kind == "siglip" and logit_bias is None:
            raise ValueError("the sigmoid loss needs a logit_bias (create the model with init_logit_bias)")
        # logit_bias only when there is one: open_clip's ClipLoss takes it from 2.24's successors on
        bias = {} if logit_bias is None else {"logit_bias": logit_bias}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATED_GATHER, category=FutureWarning)
            contrastive = self.image_text(image_features, text_features, logit_scale, **bias)
        out = {"contrastive_loss": contrastive, "loss": contrastive}
        if self.text_pair_weight > 0:
            if pair_features is None or pair_mask is None:
                raise ValueError("text_pair_weight > 0 needs pair_features and pair_mask")
            pair = text_pair_loss(text_features, pair_features, pair_mask, logit_scale)
            out["text_pair_loss"] = pair
            out["loss"] = contrastive + self.text_pair_weight * pair
        return out
