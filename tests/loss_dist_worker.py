"""The 2-process half of tests/test_loss.py, in a module of its own so that the spawned workers
import only torch and mclip_hbt.model.loss (open_clip alone takes seconds to import)."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mclip_hbt.model.loss import ContrastiveLoss

GLOBAL_BATCH, WORLD = 8, 2


def random_features(n: int, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, dim, generator=g), dim=-1),
            F.normalize(torch.randn(n, dim, generator=g), dim=-1))


class TinyTowers(torch.nn.Module):
    """Two linear 'towers', a log-space logit scale and a bias: enough to check every gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(6, 4)
        self.text = torch.nn.Linear(5, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-2.0))

    def forward(self, pixels, tokens, pair_tokens):
        return (F.normalize(self.image(pixels), dim=-1), F.normalize(self.text(tokens), dim=-1),
                F.normalize(self.text(pair_tokens), dim=-1))


def global_batch():
    g = torch.Generator().manual_seed(1)
    pixels, tokens, pair_tokens = (torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 5, generator=g),
                                   torch.randn(GLOBAL_BATCH, 5, generator=g))
    # rank 0's half has three translations, rank 1's only one: unequal per-rank pair counts
    pair_mask = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    return pixels, tokens, pair_tokens, pair_mask


CASES = {"clip": ("clip", 0.0), "siglip": ("siglip", 0.0), "clip+text_pairs": ("clip", 0.5)}


def loss_and_grads(model, case, pixels, tokens, pair_tokens, pair_mask):
    kind, weight = CASES[case]
    model.zero_grad()
    image, text, pair = model(pixels, tokens, pair_tokens)
    bias = model.logit_bias if kind == "siglip" else None  # softmax ignores a constant bias
    loss = ContrastiveLoss(kind, weight)(image, text, model.logit_scale.exp(), bias,
                                         pair_features=pair, pair_mask=pair_mask)["loss"]
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def distributed_worker(rank, rendezvous, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    model = TinyTowers()
    results = {}
    for case in CASES:
        loss, grads = loss_and_grads(model, case, *(t[local] for t in global_batch()))
        for grad in grads.values():  # what DDP does: average gradients over ranks
            dist.all_reduce(grad)
            grad /= WORLD
        dist.all_reduce(loss)
        results[case] = (loss / WORLD, grads)
    # unequal local batches are refused on every rank, not silently mislabelled
    image, text = random_features(3 + rank)
    try:
        ContrastiveLoss()(image, text, torch.tensor(1.0))
        results["unequal"] = "accepted"
    except ValueError as err:
        results["unequal"] = str(err)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
