"""VGG backbones (Simonyan & Zisserman 2014) with a small single-logit head for cell crops.

The convolutional part is laid out exactly as torchvision's (`features.<i>` indices match), so
torchvision's ImageNet weights load into it. The head differs on purpose: torchvision pools to 7x7
and feeds a 25088 -> 4096 -> 4096 classifier (120M parameters, sized for 224 px ImageNet); on
128 px crops we pool globally and use 512 -> 256 -> 1 (131k parameters), which trains from scratch
on a few thousand cells without memorising them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

# Architectures as data (torchvision's configurations A, B, D, E): ints are 3x3 conv widths, "M" is
# 2x2 max pooling.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"] + [512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
NAMES = tuple(f"{arch}{suffix}" for arch in CONFIGS for suffix in ("", "_bn"))
DEFAULT_IMAGE_SIZE = 128  # the stored crop size: no resampling, and 5 poolings leave a 4x4 map
MIN_IMAGE_SIZE = 32  # five 2x2 poolings
HEAD_WIDTH = 256  # small: the 4096-wide ImageNet head overfits a few thousand cells
DROPOUT = 0.5  # torchvision's and the study's value for the head

IMAGENET_WEIGHTS = {
    "vgg11": tvm.VGG11_Weights.IMAGENET1K_V1,
    "vgg11_bn": tvm.VGG11_BN_Weights.IMAGENET1K_V1,
    "vgg13": tvm.VGG13_Weights.IMAGENET1K_V1,
    "vgg13_bn": tvm.VGG13_BN_Weights.IMAGENET1K_V1,
    "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1,
    "vgg16_bn": tvm.VGG16_BN_Weights.IMAGENET1K_V1,
    "vgg19": tvm.VGG19_Weights.IMAGENET1K_V1,
    "vgg19_bn": tvm.VGG19_BN_Weights.IMAGENET1K_V1,
}


def make_features(config: list[int | str], batch_norm: bool) -> nn.Sequential:
    """The conv/pool stack, module for module as torchvision's `vgg.make_layers`."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """(N, 3, S, S) float -> (N,) logits; any S >= 32 (global average pooling)."""

    def __init__(self, features: nn.Module, width: int = 512, head_width: int = HEAD_WIDTH,
                 num_classes: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(width, head_width),
            nn.ReLU(inplace=True),
            nn.Dropout(DROPOUT),
            nn.Linear(head_width, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        x = self.classifier(x)
        return x.squeeze(1) if self.num_classes == 1 else x


def build_vgg(name: str = "vgg16_bn", image_size: int | None = None, num_classes: int = 1) -> VGG:
    """A randomly initialised VGG `name` (e.g. vgg16_bn); `image_size` is only checked."""
    if name not in NAMES:
        raise ValueError(f"unknown VGG name {name!r}; allowed: {', '.join(NAMES)}")
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"{name}: image_size {image_size} is too small; need >= {MIN_IMAGE_SIZE}")
    features = make_features(CONFIGS[name.removesuffix("_bn")], batch_norm=name.endswith("_bn"))
    return VGG(features, num_classes=num_classes)


def backbone_state_dict(imagenet_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a torchvision VGG state dict that fits our model: `features.*` only."""
    return {k: v for k, v in imagenet_state_dict.items() if k.startswith("features.")}
