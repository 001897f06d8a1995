"""The losses against their formulas."""

from __future__ import annotations

import pytest
import torch

from engine import losses


def test_gram_matches_its_formula() -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5)
    got = losses.gram(f)
    n, c, h, w = f.shape
    for b in range(n):
        for i in range(c):
            for j in range(c):
                expected = sum(
                    f[b, i, y, x] * f[b, j, y, x] for y in range(h) for x in range(w)
                ) / (c * h * w)
                assert got[b, i, j].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(got, got.transpose(1, 2))


def test_gram_is_fp32_even_from_low_precision_features() -> None:
    f = torch.randn(1, 8, 16, 16).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = losses.gram(f)
    assert g.dtype == torch.float32


def test_content_loss_is_mse_per_photo() -> None:
    a = torch.zeros(2, 4, 3, 3)
    b = torch.zeros(2, 4, 3, 3)
    b[1] = 2.0
    assert losses.content_loss(a, b).tolist() == [0.0, 4.0]


def test_style_loss_zero_on_target_and_weighted_by_layer() -> None:
    torch.manual_seed(0)
    feats = {"a": torch.randn(1, 4, 5, 5), "b": torch.randn(1, 6, 3, 3)}
    targets = {k: losses.gram(v) for k, v in feats.items()}
    assert losses.style_loss(feats, targets, ["a", "b"], [0.5, 0.5]).item() == 0.0
    shifted = {"a": targets["a"] + 1.0, "b": targets["b"]}
    # Every Gram entry is off by exactly 1, so the layer's MSE is 1; its weight is 0.25.
    assert losses.style_loss(feats, shifted, ["a", "b"], [0.25, 0.75]).item() == pytest.approx(0.25)


def test_tv_loss_of_flat_and_striped_images() -> None:
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert losses.tv_loss(flat).item() == 0.0
    stripes = torch.zeros(1, 3, 4, 4)
    stripes[..., ::2] = 1.0  # columns alternate 1, 0: every horizontal neighbour differs by 1
    assert losses.tv_loss(stripes).item() == pytest.approx(1.0)


def test_losses_are_per_photo_so_batches_do_not_mix() -> None:
    torch.manual_seed(0)
    one, two = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    both = torch.cat([one, two])
    assert torch.allclose(
        losses.tv_loss(both), torch.cat([losses.tv_loss(one), losses.tv_loss(two)])
    )
