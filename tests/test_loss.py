"""Contrastive losses: hand-computed cases, the masked text–text term, and a real 2-process gloo run."""
from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
from loss_dist_worker import CASES, WORLD, TinyTowers, distributed_worker, global_batch, loss_and_grads, random_features
from open_clip.loss import ClipLoss

from mclip_hbt.model.loss import ContrastiveLoss, text_pair_loss

IMAGE = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
TEXT = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
SIMS = [[sum(a * b for a, b in zip(i, t)) for t in TEXT.tolist()] for i in IMAGE.tolist()]


def test_clip_loss_matches_hand_computation():
    scale = 10.0

    def nll(row, target):  # -log softmax(scale * row)[target]
        return -(scale * row[target] - math.log(sum(math.exp(scale * s) for s in row)))

    image_to_text = sum(nll(SIMS[i], i) for i in range(2)) / 2
    text_to_image = sum(nll([SIMS[j][i] for j in range(2)], i) for i in range(2)) / 2
    expected = (image_to_text + text_to_image) / 2
    loss = ContrastiveLoss("clip")(IMAGE, TEXT, torch.tensor(scale))["loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_siglip_loss_matches_hand_computation():
    scale, bias = 10.0, -4.0

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    pairs = [(i, t) for i in range(2) for t in range(2)]
    expected = -sum(log_sigmoid((1 if i == t else -1) * (scale * SIMS[i][t] + bias)) for i, t in pairs) / 2
    loss = ContrastiveLoss("siglip")(IMAGE, TEXT, torch.tensor(scale), torch.tensor(bias))["loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_text_pair_loss_uses_only_captions_with_a_translation():
    text, pair = random_features(10, seed=2)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    scale = torch.tensor(20.0)
    pair_garbage = pair.clone()
    pair_garbage[~mask] = 1e3  # rows without a translation must not matter
    expected = ClipLoss()(text[mask], pair[mask], scale)
    assert torch.allclose(text_pair_loss(text, pair_garbage, mask, scale), expected, atol=1e-6)

    # no translation anywhere: the term is zero and its gradient finite
    text.requires_grad_(True)
    none = text_pair_loss(text, pair, torch.zeros(10, dtype=torch.bool), scale)
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(text.grad).all()


def test_contrastive_loss_combines_terms_and_refuses_siglip_without_bias():
    image, text = random_features(6, seed=3)
    _, pair = random_features(6, seed=4)
    mask = torch.ones(6, dtype=torch.bool)
    scale = torch.tensor(5.0)
    out = ContrastiveLoss("clip", text_pair_weight=0.25)(image, text, scale, pair_features=pair, pair_mask=mask)
    assert torch.allclose(out["loss"], out["contrastive_loss"] + 0.25 * out["text_pair_loss"])
    assert torch.allclose(out["text_pair_loss"], ClipLoss()(text, pair, scale))
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("siglip")(image, text, scale)
    with pytest.raises(ValueError, match="loss kind"):
        ContrastiveLoss("triplet")


@pytest.mark.slow
def test_two_process_gradients_equal_single_process_full_batch(tmp_path):
    mp.spawn(distributed_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    model = TinyTowers()
    for case in CASES:
        full_loss, full_grads = loss_and_grads(model, case, *global_batch())
        for rank_results in per_rank:
            mean_loss, grads = rank_results[case]
            assert torch.allclose(mean_loss, full_loss, atol=1e-6), case
            for name, grad in full_grads.items():
                assert grad.abs().sum() > 0, (case, name)
                assert torch.allclose(grads[name], grad, atol=1e-6), (case, name, grads[name], grad)
    assert all("equal local batch sizes" in r["unequal"] and "[3, 4]" in r["unequal"] for r in per_rank)
