"""The model registry: `build_model(name, image_size, weights, num_classes)`: (N, 3, S, S) -> logits.

num_classes=1 (every binary model): one logit per crop (lymphoblast vs other), shape (N,), for
binary cross-entropy; num_classes=K >= 2: (N, K) logits of a softmax head over K cell classes. Models know
nothing about Ray or DDP; the training job wraps them.

weights:
  "none"      random initialisation (the default; every model trains from scratch)
  "imagenet"  torchvision's ImageNet weights for the backbone via torchvision's own download/cache
              (TORCH_HOME); the single-logit head stays random
  PATH        a local .pt/.pth file holding a state dict of this very model (optionally under a
              "model"/"state_dict" key, optionally with DDP's "module." prefix)
"""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.models import lenet, resnet, vgg

# Family aliases -> the default member of each family.
ARCH_FAMILIES = {
    "lenet": "lenet",  # the study's small CNN
    "vgg": "vgg16_bn",  # plain VGG16 (no batch norm) stalls when trained from scratch
    "resnet": "resnet18",  # enough capacity for 128 px crops; resnet50 is the study's but 2x slower
}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **{n: lenet.build_lenet for n in lenet.NAMES},
    **{n: vgg.build_vgg for n in vgg.NAMES},
    **{n: resnet.build_resnet for n in resnet.NAMES},
}
MODEL_NAMES = tuple(_BUILDERS)
_DEFAULT_SIZES = {
    **{n: lenet.DEFAULT_IMAGE_SIZE for n in lenet.NAMES},
    **{n: vgg.DEFAULT_IMAGE_SIZE for n in vgg.NAMES},
    **{n: resnet.DEFAULT_IMAGE_SIZE for n in resnet.NAMES},
}
ADAM_LR = 1e-3  # Adam's default, as in the study
WEIGHT_CHOICES = ("none", "imagenet")  # or a path to a local state dict
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")  # common checkpoint wrappers


class WeightsUnavailableError(ValueError):
    """Pretrained weights were asked for but could not be had (offline, no cache, none exist)."""


def resolve_name(name: str) -> str:
    """The concrete model name for `name` or a family alias ("vgg" -> "vgg16_bn")."""
    resolved = ARCH_FAMILIES.get(name, name)
    if resolved not in _BUILDERS:
        allowed = ", ".join((*ARCH_FAMILIES, *(n for n in MODEL_NAMES if n not in ARCH_FAMILIES)))
        raise ValueError(f"unknown model {name!r}; allowed: {allowed}")
    return resolved


def default_image_size(name: str) -> int:
    """The input side a model is built for by default (lenet 126, VGG/ResNet 128)."""
    return _DEFAULT_SIZES[resolve_name(name)]


def default_lr(name: str, num_classes: int = 1) -> float:
    """The Adam learning rate `allray train` uses for a model unless --lr says otherwise: the study's
    1e-3, but for the LeNet variant's K-class softmax head (see pipeline.models.lenet)."""
    resolved = resolve_name(name)
    if resolved in lenet.NAMES and num_classes >= 2:
        return lenet.MULTICLASS_LR
    return ADAM_LR


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(name: str, image_size: int | None = None, weights: str = "none", num_classes: int = 1) -> nn.Module:
    """Model `name` (or a family alias) for square `image_size` inputs, weights per `weights`;
    num_classes=1 gives (N,) logits, K >= 2 gives (N, K)."""
    resolved = resolve_name(name)
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be 1 (one logit) or the number of classes (>= 2)")
    size = default_image_size(resolved) if image_size is None else int(image_size)
    model = _BUILDERS[resolved](resolved, size, num_classes=int(num_classes))
    if weights == "none":
        return model
    if weights == "imagenet":
        load_imagenet_backbone(model, resolved)
        return model
    load_weights_file(model, weights, resolved)
    return model


def load_imagenet_backbone(model: nn.Module, name: str) -> None:
    """Load torchvision's ImageNet weights into `model`'s backbone (head left as is), in place."""
    family = vgg if name in vgg.NAMES else resnet if name in resnet.NAMES else None
    if family is None:
        raise WeightsUnavailableError(
            f"model {name!r} has no ImageNet weights; use --weights none or a local state-dict file"
        )
    enum = family.IMAGENET_WEIGHTS[name]
    try:
        state = enum.get_state_dict(progress=False, check_hash=True)
    except (OSError, urllib.error.URLError, RuntimeError) as e:  # offline, refused, bad hash
        raise WeightsUnavailableError(
            f"ImageNet weights for {name!r} ({enum.url}) could not be had: {e}. Use --weights "
            f"none, or a local state-dict file, or put the file in {torch.hub.get_dir()}/checkpoints"
        ) from e
    backbone = family.backbone_state_dict(state)
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    head = [k for k in model.state_dict() if k not in backbone]
    if unexpected or sorted(missing) != sorted(head):
        raise RuntimeError(f"{name}: ImageNet weights do not fit: {unexpected or missing}")


def load_weights_file(model: nn.Module, path: str | Path, name: str = "model") -> None:
    """Load a local state dict at `path` into `model`, in place; errors say what does not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r} not found; weights must be one of "
            f"{', '.join(WEIGHT_CHOICES)} or the path of a .pt/.pth state dict"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing to the user
        raise ValueError(f"weights file {str(path)!r} is not a readable state dict: {e}") from e
    for key in _STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} holds no state dict (a dict of tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        found = {"missing": missing, "unexpected": unexpected, "shape": mismatched}
        problems = [
            f"{what} {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
            for what, keys in found.items()
            if keys
        ]
        raise ValueError(
            f"weights file {str(path)!r} does not fit model {name!r} (was it saved from another "
            f"architecture or image size?): {'; '.join(problems)}"
        )
    model.load_state_dict(state)


__all__ = [
    "ARCH_FAMILIES",
    "MODEL_NAMES",
    "WEIGHT_CHOICES",
    "WeightsUnavailableError",
    "build_model",
    "count_parameters",
    "default_image_size",
    "load_imagenet_backbone",
    "load_weights_file",
    "resolve_name",
]
