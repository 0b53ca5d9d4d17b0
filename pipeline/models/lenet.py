"""The originating study's small CNN (a LeNet variant): four conv/pool blocks and one linear unit.

Layout from the study's notebook: four blocks of 3x3 convolution (8, 16, 16, 32 filters, ReLU, no
padding), each followed by 2x2 max pooling, then flatten, dropout 0.5 and one linear unit. Its
write-up feeds it 126x126 RGB crops (9.5k parameters); at the notebook's 224x224 it has 13k.

With K >= 2 classes (a softmax head) there is no dropout: the study's 0.5 belongs to its binary
task, and on PBC's 8 classes the network underfits (training accuracy below validation accuracy
at every epoch), so dropout only holds it back. 5-fold cross-validation on the shared PBC set
(benchmarks/pbc_cv.py, 15 epochs, same folds): 87.7 +- 2.0% with dropout 0.5, 90.6 +- 1.4% without.
Still underfitting at the 15th epoch, it learns faster at 3x Adam's default rate: 4-fold
cross-validation on the 2,567 training images of benchmarks/pbc_holdout.py (1,926 cells a fold),
86.4 +- 1.3% at 1e-3, 90.2 +- 1.1% at 3e-3, 87.6 +- 2.0% at 6e-3 (MULTICLASS_LR); 5-fold on the
whole set at 3e-3, 92.1 +- 1.9%.
"""

from __future__ import annotations

import torch
from torch import nn

NAMES = ("lenet",)
DEFAULT_IMAGE_SIZE = 126  # the study's write-up; within 4 px of the stored 128 crops, so no resize
CHANNELS = (8, 16, 16, 32)
DROPOUT = 0.5  # as in the study: the only regulariser of an otherwise tiny model
MULTICLASS_DROPOUT = 0.0  # a K-class head underfits already (see above)
MULTICLASS_LR = 3e-3  # and learns faster at 3x Adam's default (see above; pipeline.models.default_lr)


def feature_size(image_size: int) -> int:
    """Side of the last feature map for a square input of `image_size` (0 if too small)."""
    side = image_size
    for _ in CHANNELS:
        side = (side - 2) // 2  # 3x3 conv without padding, then 2x2 max pooling (floor)
    return max(side, 0)


class LeNet(nn.Module):
    """(N, 3, S, S) float -> (N,) logits of the lymphoblast class."""

    def __init__(self, image_size: int = DEFAULT_IMAGE_SIZE, dropout: float = DROPOUT, num_classes: int = 1) -> None:
        super().__init__()
        side = feature_size(image_size)
        if side < 1:
            raise ValueError(
                f"lenet: image_size {image_size} is too small; four 3x3-conv/2x2-pool blocks need "
                "at least 46 px (the study used 126)"
            )
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in CHANNELS:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size=3)
            layers += [conv, nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_channels = out_channels
        self.image_size = image_size
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.num_classes = num_classes
        self.classifier = nn.Linear(in_channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = self.classifier(self.dropout(x))
        return x.squeeze(1) if self.num_classes == 1 else x


def build_lenet(name: str = "lenet", image_size: int | None = None, num_classes: int = 1) -> LeNet:
    """A randomly initialised LeNet for square inputs of `image_size` (default 126): (N,) logits for
    num_classes=1 (dropout 0.5, the study's), else (N, num_classes) (no dropout)."""
    if name not in NAMES:
        raise ValueError(f"unknown LeNet name {name!r}; allowed: {', '.join(NAMES)}")
    dropout = DROPOUT if num_classes == 1 else MULTICLASS_DROPOUT
    return LeNet(DEFAULT_IMAGE_SIZE if image_size is None else image_size, dropout, num_classes)
