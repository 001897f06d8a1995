"""VGG19 feature extractor: torchvision's architecture, cut after the deepest layer in use.

Weights come from a checkpoint file: torchvision's ImageNet VGG19 (found in torch's hub cache,
downloaded there when allowed) or any file given, including the Caffe-converted VGG19 that the
classic implementations prefer; both share torchvision's key layout (``features.N.weight``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

from engine.errors import WeightsError
from engine.layers import LAYER_INDEX
from engine.params import Pooling, Preprocess


@dataclass(frozen=True)
class KnownCheckpoint:
    """A checkpoint the engine can fetch by itself."""

    filename: str  # as torch's hub cache names it; its suffix is the SHA-256 prefix
    url: str
    sha256_prefix: str
    preprocess: Preprocess


TORCHVISION_VGG19 = KnownCheckpoint(
    filename="vgg19-dcbb9e9d.pth",
    url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    sha256_prefix="dcbb9e9d",
    preprocess="torchvision",
)
# The Caffe VGG19 (Simonyan & Zisserman) converted to torchvision's layout by Justin Johnson.
CAFFE_VGG19 = KnownCheckpoint(
    filename="vgg19-d01eb7cb.pth",
    url="https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth",
    sha256_prefix="d01eb7cb",
    preprocess="caffe",
)
KNOWN_CHECKPOINTS: dict[Preprocess, KnownCheckpoint] = {
    "torchvision": TORCHVISION_VGG19,
    "caffe": CAFFE_VGG19,
}

# ImageNet statistics for torchvision's checkpoint (RGB, [0, 1]).
_TV_MEAN = (0.485, 0.456, 0.406)
_TV_STD = (0.229, 0.224, 0.225)
# Caffe's per-channel means in its BGR order, on the [0, 255] scale.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def hub_checkpoint_path(preprocess: Preprocess = "torchvision") -> Path:
    """Where torch's hub cache keeps the checkpoint ($TORCH_HOME/hub/checkpoints/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / KNOWN_CHECKPOINTS[preprocess].filename


def resolve_weights(
    weights: Path | None, preprocess: Preprocess, *, download: bool, progress: bool = False
) -> Path:
    """The checkpoint file to load: the given path, or the hub cache (fetched there if allowed)."""
    known = KNOWN_CHECKPOINTS[preprocess]
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"VGG19 weights not found at {path}: put the checkpoint there "
                f"(for preprocess '{preprocess}', {known.url}) or change the weights setting"
            )
        return path
    path = hub_checkpoint_path(preprocess)
    if path.is_file():
        return path
    if download:
        try:
            fetch_checkpoint(known, path, progress=progress)
        except (OSError, RuntimeError) as exc:
            raise WeightsError(
                f"VGG19 weights are missing and could not be downloaded ({exc}): "
                f"download {known.url} and save it as {path}"
            ) from exc
        return path
    raise WeightsError(
        f"VGG19 weights are missing: download {known.url} and save it as {path} "
        "(or give a path with the weights setting)"
    )


def fetch_checkpoint(known: KnownCheckpoint, path: Path, *, progress: bool) -> None:
    """Download into `path`, checking the SHA-256 prefix; only a verified file is left there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch writes to a temporary name and moves it into place only when the hash matched.
    torch.hub.download_url_to_file(
        known.url, os.fspath(path), hash_prefix=known.sha256_prefix, progress=progress
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path, preprocess: Preprocess) -> str:
    """Check that `path` loads as VGG19 and, under the known file name, has the known checksum.

    Returns the file's SHA-256. Raises WeightsError with what is wrong.
    """
    known = KNOWN_CHECKPOINTS[preprocess]
    if not Path(path).is_file():
        raise WeightsError(f"no VGG19 weights at {path}: download {known.url} to it")
    digest = sha256_of(path)
    if Path(path).name == known.filename and not digest.startswith(known.sha256_prefix):
        raise WeightsError(
            f"{path} is damaged or not the published checkpoint: its SHA-256 starts with "
            f"{digest[:8]}, not {known.sha256_prefix}; delete it and fetch it again"
        )
    VGGFeatures(load_state_dict(path), preprocess=preprocess, source=str(path))
    return digest


def build_vgg19_features() -> nn.Sequential:
    """torchvision's VGG19 `features` with random weights (the architecture only)."""
    from torchvision.models import vgg19

    features = vgg19(weights=None).features
    assert isinstance(features, nn.Sequential)
    return features


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file; all mean the same here
        raise WeightsError(f"cannot read VGG19 weights from {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not a VGG19 checkpoint (no state dict inside)")
    return state


class VGGFeatures(nn.Module):
    """VGG19 up to the deepest layer in use, returning the requested layers' activations.

    Frozen: eval mode, no parameter gradients. Pooling is chosen per call because it has no weights.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        *,
        deepest: str = "relu5_1",
        preprocess: Preprocess = "torchvision",
        source: str = "checkpoint",
    ) -> None:
        super().__init__()
        if deepest not in LAYER_INDEX:
            raise ValueError(f"unknown VGG19 layer {deepest!r}")
        full = build_vgg19_features()
        last = LAYER_INDEX[deepest]
        wanted = {
            f"features.{i}.{kind}": f"{i}.{kind}"
            for i, module in enumerate(full)
            if i <= last and isinstance(module, nn.Conv2d)
            for kind in ("weight", "bias")
        }
        missing = [key for key in wanted if key not in state]
        if missing:
            raise WeightsError(
                f"{source} is not a VGG19 checkpoint: it lacks {', '.join(missing[:3])}"
                + (" ..." if len(missing) > 3 else "")
            )
        layers = nn.Sequential(*list(full)[: last + 1])
        try:
            layers.load_state_dict({local: state[key] for key, local in wanted.items()})
        except RuntimeError as exc:  # shape mismatch: another network with the same key names
            raise WeightsError(f"{source} is not a VGG19 checkpoint: {exc}") from exc
        for i, module in enumerate(layers):
            if isinstance(module, nn.ReLU):
                # In-place ReLUs would overwrite the conv outputs we may have captured.
                layers[i] = nn.ReLU(inplace=False)
        self.layers = layers
        self.names = {index: name for name, index in LAYER_INDEX.items() if index <= last}
        self.preprocess = preprocess
        if preprocess == "torchvision":
            mean, std = torch.tensor(_TV_MEAN), torch.tensor(_TV_STD)
            scale = 1.0
        else:
            mean, std = torch.tensor(_CAFFE_MEAN_BGR[::-1]) / 255, torch.full((3,), 1 / 255)
            # Caffe activations are ~255x larger; 1/255 puts them on torchvision's scale so that
            # the same loss weights work for both checkpoints.
            scale = 1 / 255
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.feature_scale = scale
        self.requires_grad_(False)
        self.eval()

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the network's input space."""
        x = (image - self.mean) / self.std
        if self.preprocess == "caffe":
            x = x.flip(1)  # RGB -> BGR
        return x

    def forward(
        self, image: torch.Tensor, layers: Collection[str], pooling: Pooling = "max"
    ) -> dict[str, torch.Tensor]:
        """Activations of `layers` for an RGB batch in [0, 1] of shape (N, 3, H, W)."""
        wanted = set(layers)
        deepest = max(LAYER_INDEX[name] for name in wanted)
        out: dict[str, torch.Tensor] = {}
        # oneDNN and cuDNN run convolutions fastest in NHWC. Converted here, after the input's
        # normalisation, so that the pixels being optimised stay NCHW (L-BFGS flattens them).
        x = self.normalise(image).contiguous(memory_format=torch.channels_last)
        for index, module in self._modules_until(deepest):
            if isinstance(module, nn.MaxPool2d) and pooling == "avg":
                x = F.avg_pool2d(x, kernel_size=2, stride=2)
            else:
                x = module(x)
            name = self.names[index]
            if name in wanted:
                out[name] = x * self.feature_scale if self.feature_scale != 1.0 else x
        return out

    def _modules_until(self, deepest: int) -> Iterator[tuple[int, nn.Module]]:
        for index, module in enumerate(self.layers):
            if index > deepest:
                return
            yield index, module


def load_vgg19_features(
    weights: Path | None,
    preprocess: Preprocess,
    *,
    deepest: str = "relu5_1",
    download: bool = True,
    progress: bool = False,
) -> VGGFeatures:
    """Find, read and build the truncated VGG19 (on the CPU; the caller moves it)."""
    path = resolve_weights(weights, preprocess, download=download, progress=progress)
    return VGGFeatures(
        load_state_dict(path), deepest=deepest, preprocess=preprocess, source=str(path)
    )
