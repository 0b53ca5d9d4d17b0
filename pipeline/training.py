"""Plain-torch training pieces: decode crops, augment, one epoch, evaluate, binary metrics.

Nothing here knows about Ray: the training job feeds `train_one_epoch` and `evaluate` with
whatever iterable of (images, labels) batches it has, on whatever device it runs.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# ImageNet statistics: what torchvision's pretrained weights expect. From scratch any fixed affine
# map works as well, and one constant for both keeps every checkpoint's input the same.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_CENTRE_CROP = 4  # a size gap this small (128 -> 126 for lenet) is cropped, never resampled
Batch = tuple[torch.Tensor, torch.Tensor]


def _channel(values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)


def decode_crops(
    pngs: Sequence[bytes], image_size: int, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> torch.Tensor:
    """(N, 3, S, S) float32 normalised with `mean`/`std` (per RGB channel, default MEAN/STD), from
    encoded RGB crops (PNG or any PIL kind). Inference passes the checkpoint's stored values.

    A crop of another size is centre-cropped when it is at most MAX_CENTRE_CROP px larger than S
    (so cells keep their size), else resized with antialiasing.
    """
    out = torch.empty((len(pngs), 3, image_size, image_size), dtype=torch.float32)
    for i, data in enumerate(pngs):
        try:
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises several types for bad bytes; all mean "not an image"
            raise ValueError(f"crop {i} of {len(pngs)} is not a decodable image: {e}") from e
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        h, w = x.shape[1:]
        if (h, w) != (image_size, image_size):
            if 0 <= h - image_size <= MAX_CENTRE_CROP and 0 <= w - image_size <= MAX_CENTRE_CROP:
                top, left = (h - image_size) // 2, (w - image_size) // 2
                x = x[:, top : top + image_size, left : left + image_size]
            else:
                size = (image_size, image_size)
                x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True)[0]
        out[i] = x
    return (out - _channel(mean, out)) / _channel(std, out)


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    flips: bool = True,
    rotations: bool = True,
    jitter: float = 0.1,
    max_shift: int = 4,
) -> torch.Tensor:
    """A randomly transformed copy of the normalised batch x (N, 3, S, S); no zoom, so sizes hold.

    Per crop: horizontal and vertical flips, a right-angle rotation (a smear has no up), colour
    jitter of relative strength `jitter` (brightness, contrast, per-channel gain for stain hue) and
    a circular shift of up to `max_shift` px. All draws come from `generator` (a CPU generator), so
    a seed repeats the batch exactly. With jitter=0 every crop keeps its multiset of pixel values.
    """
    n, _, h, w = x.shape

    def draw(*shape: int) -> torch.Tensor:  # on the CPU, where the generator lives
        return torch.rand(shape, generator=generator)

    no = [False] * n
    hflip = (draw(n) < 0.5).tolist() if flips else no
    vflip = (draw(n) < 0.5).tolist() if flips else no
    turns = (draw(n) * 4).long().clamp_(max=3).tolist() if rotations and h == w else [0] * n
    shifts = None
    if max_shift > 0:
        shifts = ((draw(n, 2) * (2 * max_shift + 1)).long() - max_shift).tolist()
    # A loop over crops of cheap whole-tensor ops: ~10x faster on the CPU than vectorised
    # where/gather forms, and a few small kernels per crop on a GPU.
    out = torch.empty_like(x)
    for i in range(n):
        xi = x[i]
        dims = [d for d, flip in ((-1, hflip[i]), (-2, vflip[i])) if flip]
        if dims:
            xi = xi.flip(dims)
        if turns[i]:
            xi = xi.rot90(turns[i], (-2, -1))
        if shifts is not None and any(shifts[i]):
            xi = xi.roll(tuple(shifts[i]), (-2, -1))  # circular: no pixel made up or lost
        out[i] = xi
    x = out
    if jitter > 0:
        # In RGB [0, 1]: rgb' = ((rgb - grey) * contrast + grey) * brightness * gain, one affine map
        # per crop and channel, applied to normalised x in a single pass before the clamp.
        mean, std = _channel(MEAN, x), _channel(STD, x)
        brightness = 1 + jitter * (2 * draw(n, 1, 1, 1) - 1)
        contrast = 1 + jitter * (2 * draw(n, 1, 1, 1) - 1)
        gain = 1 + 0.3 * jitter * (2 * draw(n, 3, 1, 1) - 1)  # stain hue: milder
        brightness, contrast, gain = (t.to(x.device, x.dtype) for t in (brightness, contrast, gain))
        grey = (x.mean(dim=(2, 3), keepdim=True) * std + mean).mean(dim=1, keepdim=True)
        scale = contrast * brightness * gain
        shift = (1 - contrast) * grey * brightness * gain
        rgb = torch.addcmul(scale * mean + shift, x, scale * std).clamp_(0, 1)
        x = rgb.sub_(mean).div_(std)
    return x


@dataclass(frozen=True)
class EpochStats:
    """Training numbers of one epoch on this process's share of the data."""

    loss: float | None  # mean binary cross-entropy per sample (None if no samples)
    acc: float | None  # accuracy at logit 0, i.e. probability 0.5 (None if no samples)
    n: int
    seconds: float
    samples_per_s: float


def _use_amp(device: torch.device, amp: bool | None) -> bool:
    """Mixed precision only on CUDA: on by default there, never on the CPU (float32 is faster)."""
    return device.type == "cuda" if amp is None else bool(amp and device.type == "cuda")


def _autocast(enabled: bool):
    return torch.autocast("cuda", dtype=torch.float16) if enabled else contextlib.nullcontext()


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    *,
    amp: bool | None = None,
    scaler: torch.amp.GradScaler | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_grad_norm: float | None = None,
    criterion: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> EpochStats:
    """Train `model` on one pass over `batches` of (images (N,3,S,S) float, labels (N,) 0/1).

    amp: mixed precision (float16 autocast + GradScaler); None = on for CUDA, off elsewhere (CPU
    always runs float32). Pass one `scaler` across epochs to keep its loss scale. `transform` is
    applied to images on the device (e.g. `lambda x: augment(x, generator)`). `criterion(logits,
    labels) -> (mean loss, correct count)` replaces binary cross-entropy (e.g. a softmax model's
    pipeline.multiclass.PartialLabelCriterion); labels then pass through as they are.
    """
    device = torch.device(device)
    use_amp = _use_amp(device, amp)
    if scaler is None:
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    start = time.perf_counter()
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True).view(-1)
        if criterion is None:
            labels = labels.float()
        if transform is not None:
            images = transform(images)
        with _autocast(use_amp):
            logits = model(images)
        if criterion is None:
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            n_correct = ((logits.detach() >= 0) == (labels >= 0.5)).sum()
        else:
            loss, n_correct = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        # Accumulate on the device: .item() per step would stall a GPU pipeline.
        loss_sum += loss.detach() * labels.numel()
        correct += n_correct
        n += labels.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loss_mean = loss_sum.item() / n if n else None
    acc = correct.item() / n if n else None
    return EpochStats(loss_mean, acc, n, seconds, n / seconds if seconds > 0 else 0.0)


@dataclass(frozen=True)
class EvalResult:
    """Validation metrics; a metric that is undefined for the data (one class only) is None."""

    loss: float | None
    acc: float | None
    sensitivity: float | None  # recall of lymphoblasts: tp / (tp + fn)
    specificity: float | None  # tn / (tn + fp)
    auc: float | None
    n: int
    threshold: float
    labels: np.ndarray = field(repr=False)  # (n,) int64 0/1
    probs: np.ndarray = field(repr=False)  # (n,) float32 probability of lymphoblast

    def confusion(self) -> list[list[int]]:
        """[[tn, fp], [fn, tp]] at this result's threshold."""
        return confusion_matrix(self.labels, self.probs, self.threshold)

    def metrics(self) -> dict[str, float | int | None]:
        """The scalar fields, ready for a metrics report (no arrays)."""
        return {k: v for k, v in asdict(self).items() if k not in ("labels", "probs")}


def confusion_matrix(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] where a probability >= threshold predicts lymphoblast (1)."""
    y = np.asarray(labels).astype(bool).ravel()
    pred = np.asarray(probs, dtype=np.float64).ravel() >= threshold
    return [[int((~y & ~pred).sum()), int((~y & pred).sum())],
            [int((y & ~pred).sum()), int((y & pred).sum())]]  # fmt: skip


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve by the Mann-Whitney rank statistic (ties count one half); None if
    only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each tie group
    rank_sum = average_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def score_predictions(
    labels: Sequence[int],
    probs: Sequence[float],
    *,
    loss: float | None = None,
    threshold: float = 0.5,
) -> EvalResult:
    """An EvalResult from labels and probabilities (e.g. gathered from several workers)."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(probs, dtype=np.float32).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.size} vs {p.size}")
    (tn, fp), (fn, tp) = confusion_matrix(y, p, threshold)
    n = int(y.size)
    return EvalResult(
        loss=loss if n else None,
        acc=(tp + tn) / n if n else None,
        sensitivity=tp / (tp + fn) if tp + fn else None,
        specificity=tn / (tn + fp) if tn + fp else None,
        auc=roc_auc(y, p),
        n=n,
        threshold=threshold,
        labels=y,
        probs=p,
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str,
    *,
    amp: bool | None = None,
    threshold: float = 0.5,
) -> EvalResult:
    """Loss, accuracy, sensitivity, specificity and AUC of `model` over `batches`."""
    device = torch.device(device)
    use_amp = _use_amp(device, amp)
    model.eval()
    all_labels, all_logits = [], []
    loss_sum, n = 0.0, 0
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True).float().view(-1)
        with _autocast(use_amp):
            logits = model(images).float()
        loss_sum += F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").item()
        n += labels.numel()
        all_labels.append(labels.cpu())
        all_logits.append(logits.cpu())
    if not n:
        return score_predictions([], [], threshold=threshold)
    probs = torch.sigmoid(torch.cat(all_logits)).numpy()
    labels_np = torch.cat(all_labels).round().long().numpy()
    return score_predictions(labels_np, probs, loss=loss_sum / n, threshold=threshold)
