"""torchvision ResNets (He et al. 2016) with a single-logit head for cell crops.

The network is torchvision's own, unchanged but for `fc`, which becomes Linear(width, 1) followed
by a flatten to (N,). The ImageNet stem (7x7 stride 2 + max pooling) is kept so that torchvision's
ImageNet weights still fit; on 128 px crops it leaves a 4x4 map before global average pooling,
which is enough for a cell that fills a third of the crop.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

_BUILDERS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}
NAMES = tuple(_BUILDERS)
DEFAULT_IMAGE_SIZE = 128  # the stored crop size: no resampling
MIN_IMAGE_SIZE = 32  # total stride 32

IMAGENET_WEIGHTS = {
    "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": tvm.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V2,
}


def build_resnet(name: str = "resnet18", image_size: int | None = None, num_classes: int = 1) -> tvm.ResNet:
    """A randomly initialised ResNet `name` mapping (N, 3, S, S) -> (N,) logits (num_classes=1) or
    (N, num_classes); S >= 32."""
    if name not in NAMES:
        raise ValueError(f"unknown ResNet name {name!r}; allowed: {', '.join(NAMES)}")
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"{name}: image_size {image_size} is too small; need >= {MIN_IMAGE_SIZE}")
    model = _BUILDERS[name](weights=None)
    # Flatten(0) turns (N, 1) into (N,) inside the module, so the class stays torchvision's own.
    if num_classes == 1:
        model.fc = nn.Sequential(nn.Linear(model.fc.in_features, 1), nn.Flatten(0))
    else:  # same module layout (fc.0), so state-dict keys match across heads
        model.fc = nn.Sequential(nn.Linear(model.fc.in_features, num_classes))
    return model


def backbone_state_dict(imagenet_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a torchvision ResNet state dict that fits our model: all but the 1000-way fc."""
    return {k: v for k, v in imagenet_state_dict.items() if not k.startswith("fc.")}
