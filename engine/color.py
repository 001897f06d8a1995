"""Colour preservation (Gatys et al., "Preserving Color in Neural Artistic Style Transfer", 2016).

Two ways, chosen by StyleParams.preserve_colors:
- luminance: the result keeps its own luminance (where the style lives: strokes, texture) and
  takes the photo's chroma, in YCbCr (ITU-R BT.601, as JPEG uses).
- histogram: before the transfer, each painting is recoloured so that its pixels' mean and
  covariance match the photo's (a linear map through the Cholesky factors), so the style carries
  the photo's palette.
"""

from __future__ import annotations

import torch

_RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> YCbCr with Cb, Cr centred on 0."""
    m = _RGB_TO_YCBCR.to(image)
    return torch.einsum("ij,njhw->nihw", m, image)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    m = torch.linalg.inv(_RGB_TO_YCBCR).to(image)
    return torch.einsum("ij,njhw->nihw", m, image)


def keep_luminance(result: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """The result's luminance with the photo's chroma (both (N, 3, H, W), same size)."""
    y = rgb_to_ycbcr(result)[:, :1]
    cbcr = rgb_to_ycbcr(photo)[:, 1:]
    return ycbcr_to_rgb(torch.cat([y, cbcr], dim=1)).clamp(0, 1)


def match_histogram(
    source: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Recolour `source` so that its pixel mean and covariance match `reference`'s.

    Both are (1, 3, H, W) RGB in [0, 1]; the sizes may differ.
    """
    src = source.reshape(3, -1).double()
    ref = reference.reshape(3, -1).double()
    src_mean, ref_mean = src.mean(1, keepdim=True), ref.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=src.dtype, device=src.device) * eps
    # eps keeps the factorisation defined for flat images: a grey painting's covariance is singular.
    src_chol = torch.linalg.cholesky(torch.cov(src) + eye)
    ref_chol = torch.linalg.cholesky(torch.cov(ref) + eye)
    transform = ref_chol @ torch.linalg.inv(src_chol)
    out: torch.Tensor = transform @ (src - src_mean) + ref_mean
    return out.reshape(source.shape).to(source.dtype).clamp(0, 1)
