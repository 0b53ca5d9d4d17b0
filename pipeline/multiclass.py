"""Training on several cell classes: the model's classes, partial-label targets, loss and metrics.

A model predicts a fixed tuple of taxonomy classes (its softmax outputs, in order); a binary model
(`taxonomy.BINARY_CLASSES`) keeps today's one logit. A cell's label may be a leaf ("neutrophil")
or a coarse node ("other", "wbc"): its target is the set of model classes it is compatible with
(`taxonomy.target_indices`), carried as a bit mask, and the loss is -log sum_{c in set} p_c
(partial labels), which for a leaf label is plain cross-entropy. Nothing here knows about Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline import taxonomy
from pipeline.training import Batch, _autocast, _use_amp, score_predictions

MAX_CLASSES = 62  # bit masks travel as int64


def resolve_model_classes(option: str | tuple[str, ...], labels: Iterable[str]) -> tuple[str, ...]:
    """The model's classes for `--classes` and the class labels present in the training cells.

    auto: BINARY_CLASSES when every label is lymphoblast or other (today's model), else the leaf
    classes present plus, for a coarse label none of whose leaves is present, the coarse node itself
    (so ALL-IDB's "other" with PBC's leaves trains lymphoblast + PBC's classes; "other" alone stays one class).
    """
    if option == "binary":
        return taxonomy.BINARY_CLASSES
    if isinstance(option, tuple):
        return option
    present = set(labels)
    if present <= set(taxonomy.BINARY_CLASSES):
        return taxonomy.BINARY_CLASSES
    chosen = [c for c in taxonomy.CLASSES if c in present]
    for coarse in sorted(present - set(chosen)):
        if not any(taxonomy.compatible(coarse, c) for c in chosen):
            chosen.append(coarse)
    if len(chosen) < 2:
        raise ValueError(f"the labelled cells hold one class only ({', '.join(sorted(present))}): need at least 2 "
                         "to train; add cells of other classes or pass --classes")  # fmt: skip
    return taxonomy.check_model_classes(chosen)


def target_bits(label: str, model_classes: Sequence[str]) -> int:
    """The bit mask of the model classes a label allows (bit i = class i); 0 when none."""
    return sum(1 << i for i in taxonomy.target_indices(label, model_classes))


def training_targets(labels: Sequence[str], model_classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N,) int64, usable (N,) bool) of cells with class `labels` for a model of `model_classes`.

    Binary model: target = the binary label (1 lymphoblast, 0 other white cell); cells with none
    (erythroblast, platelet, "wbc") are not usable. Otherwise target = the bit mask of allowed classes;
    a cell that allows no class, or every class (it says nothing), is not usable.
    """
    if tuple(model_classes) == taxonomy.BINARY_CLASSES:
        binary = [taxonomy.binary_label(c) for c in labels]
        return (np.asarray([-1 if b is None else b for b in binary], dtype=np.int64),
                np.asarray([b is not None for b in binary], dtype=bool))  # fmt: skip
    if len(model_classes) > MAX_CLASSES:
        raise ValueError(f"at most {MAX_CLASSES} model classes, got {len(model_classes)}")
    full = (1 << len(model_classes)) - 1
    cache = {c: target_bits(c, model_classes) for c in set(labels)}
    bits = np.asarray([cache[c] for c in labels], dtype=np.int64)
    return bits, (bits != 0) & (bits != full)


def bits_to_mask(bits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(N,) int64 bit masks -> (N, K) bool."""
    powers = 2 ** torch.arange(n_classes, device=bits.device, dtype=torch.int64)
    return (bits.view(-1, 1) & powers) != 0


def exact_class(bits: np.ndarray) -> np.ndarray:
    """(N,) index of the one class a mask allows, -1 where it allows several."""
    bits = np.asarray(bits, dtype=np.int64)
    single = (bits > 0) & ((bits & (bits - 1)) == 0)
    out = np.full(bits.shape, -1, dtype=np.int64)
    out[single] = np.log2(bits[single]).round().astype(np.int64)
    return out


def partial_label_loss(logits: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-log sum_{c in mask} softmax(logits)_c per row; (N, K) logits, (N, K) bool mask (each row non-empty)."""
    allowed = logits.masked_fill(~mask, float("-inf"))
    loss = torch.logsumexp(logits, dim=1) - torch.logsumexp(allowed, dim=1)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


class PartialLabelCriterion:
    """Loss and correct count of a softmax model for bit-mask targets (a train_one_epoch criterion)."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def __call__(self, logits: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = bits_to_mask(bits.long(), self.n_classes)
        loss = partial_label_loss(logits.float(), mask)
        correct = mask.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
        return loss, correct


def class_metrics(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> dict:
    """Per class sensitivity (recall), precision, F1 and support, plus accuracy, balanced accuracy and
    macro F1, from a K x K confusion matrix (rows true, columns predicted). A class with no true cells
    has no sensitivity (None) and is left out of the balanced accuracy and macro F1."""
    cm = np.asarray(confusion, dtype=np.int64)
    n = int(cm.sum())
    per_class, recalls, f1s = {}, [], []
    for i, name in enumerate(class_names):
        tp, support, predicted = int(cm[i, i]), int(cm[i].sum()), int(cm[:, i].sum())
        sens = tp / support if support else None
        prec = tp / predicted if predicted else (0.0 if support else None)
        f1 = None
        if sens is not None:
            f1 = 2 * prec * sens / (prec + sens) if prec and sens else 0.0
            recalls.append(sens)
            f1s.append(f1)
        per_class[name] = {"sensitivity": sens, "precision": prec, "f1": f1, "n": support}
    return {
        "accuracy": float(np.trace(cm) / n) if n else None,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
    }


def confusion_of(true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> list[list[int]]:
    """K x K counts (rows true, columns predicted) of the cells with a known single class (true_idx >= 0)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    known = true_idx >= 0
    np.add.at(cm, (true_idx[known], pred_idx[known]), 1)
    return cm.tolist()


@dataclass(frozen=True)
class MulticlassResult:
    """Validation of a softmax model: set accuracy, the confusion of exactly labelled cells, blast metrics."""

    class_names: tuple[str, ...]
    loss: float | None
    acc: float | None  # share of cells whose most probable class is one their label allows
    n: int
    sensitivity: float | None  # of lymphoblasts, from P(lymphoblast) >= 0.5 (None without the class)
    specificity: float | None
    auc: float | None
    bits: np.ndarray = field(repr=False)
    probs: np.ndarray = field(repr=False)  # (n, K)

    def confusion(self) -> list[list[int]]:
        return confusion_of(exact_class(self.bits), self.probs.argmax(1), len(self.class_names))

    def metrics(self) -> dict:
        return {"loss": self.loss, "acc": self.acc, "sensitivity": self.sensitivity,
                "specificity": self.specificity, "auc": self.auc, "n": self.n}  # fmt: skip


def score_multiclass(bits: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                     loss: float | None = None) -> MulticlassResult:  # fmt: skip
    """A MulticlassResult from bit-mask targets (N,) and class probabilities (N, K)."""
    bits = np.asarray(bits, dtype=np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float32).reshape(bits.size, len(class_names))
    n = int(bits.size)
    acc = float(((bits >> probs.argmax(1)) & 1).mean()) if n else None
    sens = spec = auc = None
    if taxonomy.LYMPHOBLAST in class_names:
        b = class_names.index(taxonomy.LYMPHOBLAST)
        blast_only = bits == (1 << b)
        no_blast = (bits & (1 << b)) == 0
        known = blast_only | no_blast
        if known.any():
            r = score_predictions(blast_only[known].astype(np.int64), probs[known, b])
            sens, spec, auc = r.sensitivity, r.specificity, r.auc
    return MulticlassResult(tuple(class_names), loss if n else None, acc, n, sens, spec, auc, bits, probs)


@torch.inference_mode()
def evaluate_multiclass(model: nn.Module, batches: Iterable[Batch], device: torch.device | str,
                        class_names: Sequence[str], *, amp: bool | None = None) -> MulticlassResult:  # fmt: skip
    """Partial-label loss, set accuracy, confusion and blast metrics of a softmax model over `batches`."""
    device = torch.device(device)
    use_amp = _use_amp(device, amp)
    model.eval()
    k = len(class_names)
    all_bits, all_probs, loss_sum, n = [], [], 0.0, 0
    for images, bits in batches:
        images = images.to(device, non_blocking=True)
        bits = bits.to(device, non_blocking=True).long().view(-1)
        with _autocast(use_amp):
            logits = model(images).float()
        loss_sum += partial_label_loss(logits, bits_to_mask(bits, k), reduction="sum").item()
        n += bits.numel()
        all_bits.append(bits.cpu())
        all_probs.append(torch.softmax(logits, 1).cpu())
    if not n:
        return score_multiclass(np.zeros(0, np.int64), np.zeros((0, k), np.float32), class_names)
    return score_multiclass(torch.cat(all_bits).numpy(), torch.cat(all_probs).numpy(), class_names,
                            loss=loss_sum / n)  # fmt: skip
