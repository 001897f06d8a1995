"""Gatys et al.'s losses, with the normalisation the default weights are tuned for.

- Gram matrix of a layer with C channels and H x W positions: G = F Fᵀ / (C·H·W), F being the
  (C, H·W) activations.
- Content loss: mean squared difference of the content layer's activations.
- Style loss: Σ_l w_l · mean squared difference of the Gram matrices (w normalised to sum 1).
- Total variation: mean squared difference of neighbouring pixels, vertically plus horizontally.

Every loss returns one value per photo, shape (N,); the optimiser minimises their sum (not their
mean), so photos optimised together as a batch get the same gradients as each one alone.

Gram matrices and losses are computed in fp32 whatever the autocast precision: a Gram sums H·W
products, which overflows fp16 and loses digits in bf16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def gram(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) activations -> (N, C, C) Gram matrices, in fp32, normalised by C·H·W."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w).float()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per photo."""
    diff = features.float() - target.float()
    return diff.pow(2).flatten(1).mean(1)


def style_loss(
    features: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    layer_weights: Sequence[float],
) -> torch.Tensor:
    """Σ_l w_l · MSE(G_l, A_l) per photo; targets are (1|N, C, C) Grams."""
    first = next(iter(features.values()))
    total = torch.zeros(first.shape[0], device=first.device)
    for layer, weight in zip(layers, layer_weights, strict=True):
        if weight == 0:
            continue
        diff = gram(features[layer]) - targets[layer]
        total = total + weight * diff.pow(2).flatten(1).mean(1)
    return total


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation per photo of (N, 3, H, W) images."""
    image = image.float()
    dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dy + dx
