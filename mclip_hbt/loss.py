"""Contrastive losses for hybrid-batch training: CLIP InfoNCE, SigLIP, and the text–text term.

All three follow open_clip's distributed semantics (``ClipLoss(local_loss=True,
gather_with_grad=True)`` and ``SigLipLoss(dist_impl="gather")``): each rank scores its *local*
rows against the features gathered from every rank, and the gather keeps gradients. Under DDP,
which averages gradients over ranks, this gives exactly the gradient of the single-process loss on
the whole global batch; the value a rank returns is its share, and the mean of the ranks' values is
the global-batch loss.

Conventions, as in open_clip: features come normalised, ``logit_scale`` is the already
exponentiated scale (``model.logit_scale.exp()``), ``logit_bias`` is added as is. Every rank must
hold the same local batch size (the gathered labels are offset by ``rank * local_batch``);
:class:`ContrastiveLoss` checks this with one small collective per call.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

LOSS_KINDS = ("clip", "siglip")


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``features`` from every rank along dim 0, in rank order, keeping gradients.

    The backward pass sends each rank the sum of all ranks' gradients for its rows. Identity in a
    single process.
    """
    _, world = _world()
    if world == 1:
        return features
    with warnings.catch_warnings():
        # torch marks this autograd gather deprecated in favour of a private API; it is still the
        # public one that works on both gloo and NCCL (open_clip uses it too).
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather",
                                category=FutureWarning)
        return torch.cat(dist_fn.all_gather(features), dim=0)


def check_equal_local_batches(local_batch: int, device: torch.device) -> None:
    """Raise ``ValueError`` unless every rank holds ``local_batch`` rows (no-op in a single process)."""
    _, world = _world()
    if world == 1:
        return
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local_batch], dtype=torch.long, device=device))
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(f"contrastive loss needs equal local batch sizes on every rank, got {sizes}")


def _info_nce_rows(queries: torch.Tensor, all_keys: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor,
                   logit_bias: torch.Tensor | None, valid_keys: torch.Tensor | None,
                   valid_queries: torch.Tensor | None) -> torch.Tensor:
    """Summed cross-entropy of local ``queries`` against ``all_keys`` (positives at ``labels``)."""
    logits = logit_scale * queries @ all_keys.T
    if logit_bias is not None:
        logits = logits + logit_bias
    if valid_keys is not None:
        logits = logits.masked_fill(~valid_keys[None, :], float("-inf"))
        # An invalid query's own key is masked, so its row could be all -inf (NaN even when
        # weighted by zero); give it finite logits and drop it from the sum instead.
        logits = torch.where(valid_queries[:, None], logits, torch.zeros_like(logits))
    per_row = F.cross_entropy(logits, labels, reduction="none")
    if valid_queries is not None:
        per_row = torch.where(valid_queries, per_row, torch.zeros_like(per_row))
    return per_row.sum()


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
                       logit_bias: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned ``a`` and ``b`` (row i of ``a`` matches row i of ``b``).

    ``mask`` (bool, [local batch]) marks the rows that take part: the others are neither queries
    nor candidates, and their feature values are ignored. The global loss is the mean over the
    taking-part rows of all ranks; each rank returns ``world * (its rows' sum) / (global count)``
    so that averaging gradients over ranks (DDP) reproduces it exactly.
    """
    rank, world = _world()
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
    if mask is None:
        valid_all = valid_local = None
        count = torch.tensor(float(all_a.shape[0]), device=a.device)
    else:
        valid_local = mask.to(device=a.device, dtype=torch.bool)
        valid_all = gather_with_grad(valid_local.to(a.dtype)) > 0
        count = valid_all.sum().clamp(min=1).float()  # no rows anywhere: the sums are 0, so is the loss
    total = (_info_nce_rows(a, all_b, labels, logit_scale, logit_bias, valid_all, valid_local)
             + _info_nce_rows(b, all_a, labels, logit_scale, logit_bias, valid_all, valid_local))
    return total / 2 * world / count


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; equals open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``."""
    return symmetric_info_nce(image_features, text_features, logit_scale, logit_bias)


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss; equals open_clip's ``SigLipLoss`` (any ``dist_impl``).

    Local images against the texts of all ranks, summed, divided by the local batch size.
    """
    rank, _ = _world()
    all_text = gather_with_grad(text_features)
    local = image_features.shape[0]
    logits = logit_scale * image_features @ all_text.T + logit_bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(local, device=logits.device)
    signs[rows, rows + rank * local] = 1.0
    return -F.logsigmoid(signs * logits).sum() / local


def text_pair_loss(text_features: torch.Tensor, pair_features: torch.Tensor, pair_mask: torch.Tensor,
                   logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between captions and their translations (rows with ``pair_mask`` only)."""
    return symmetric_info_nce(text_features, pair_features, logit_scale, mask=pair_mask)


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

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, pair_features: torch.Tensor | None = None,
                pair_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_equal_local_batches(image_features.shape[0], image_features.device)
        if self.kind == "siglip":
            if logit_bias is None:
                raise ValueError("the sigmoid loss needs a logit_bias (create the model with init_logit_bias)")
            contrastive = siglip_loss(image_features, text_features, logit_scale, logit_bias)
        else:
            contrastive = clip_loss(image_features, text_features, logit_scale, logit_bias)
        out = {"contrastive_loss": contrastive, "loss": contrastive}
        if self.text_pair_weight > 0:
            if pair_features is None or pair_mask is None:
                raise ValueError("text_pair_weight > 0 needs pair_features and pair_mask")
            pair = text_pair_loss(text_features, pair_features, pair_mask, logit_scale)
            out["text_pair_loss"] = pair
            out["loss"] = contrastive + self.text_pair_weight * pair
        return out
