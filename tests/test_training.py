"""Decoding, augmentation, one training epoch and the evaluation metrics, on tiny synthetic data."""

from __future__ import annotations

import io
import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.models import build_model
from pipeline.training import (
    MEAN,
    STD,
    augment,
    confusion_matrix,
    decode_crops,
    evaluate,
    roc_auc,
    score_predictions,
    train_one_epoch,
)

torch.set_num_threads(1)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


@pytest.fixture
def crops() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 128, 128, 3), dtype=np.uint8)


def test_decode_round_trips_png(crops):
    x = decode_crops([png(c) for c in crops], 128)
    assert x.shape == (3, 3, 128, 128) and x.dtype == torch.float32
    expected = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(unnormalise(x), expected, atol=1e-6, rtol=0)
    # normalised: a mid-grey pixel of value MEAN maps to 0
    grey = np.full((128, 128, 3), np.round(np.array(MEAN) * 255), dtype=np.uint8)
    assert decode_crops([png(grey)], 128).abs().max() < 0.01


def test_decode_centre_crops_small_gaps_and_resizes_big_ones(crops):
    x = decode_crops([png(crops[0])], 126)  # lenet's input: cropped, never resampled
    expected = torch.from_numpy(crops[0, 1:127, 1:127]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(unnormalise(x)[0], expected, atol=1e-6, rtol=0)
    flat = np.full((128, 128, 3), 200, dtype=np.uint8)
    small = decode_crops([png(flat)], 64)
    assert small.shape == (1, 3, 64, 64)
    expected = torch.full_like(small, 200 / 255)
    torch.testing.assert_close(unnormalise(small), expected, atol=1e-5, rtol=0)


def test_decode_greyscale_and_bad_bytes():
    grey = decode_crops([png(np.full((128, 128), 90, dtype=np.uint8))], 128)
    assert torch.allclose(unnormalise(grey), torch.full_like(grey, 90 / 255), atol=1e-6)
    with pytest.raises(ValueError, match="crop 1 of 2 is not a decodable image"):
        decode_crops([png(np.zeros((128, 128, 3), np.uint8)), b"garbage"], 128)


def _batch(seed: int = 0, n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_augment_keeps_shape_and_is_seeded():
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    c = augment(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_augment_without_jitter_keeps_each_crops_pixels():
    """Flips, rotations and circular shifts move pixels but never invent or lose one."""
    x = _batch()
    out = augment(x, torch.Generator().manual_seed(3), jitter=0.0)
    for before, after in zip(x, out):
        assert torch.equal(before.flatten().sort().values, after.flatten().sort().values)


def test_augment_flips_and_rotations_are_square_symmetries():
    x = _batch(n=32)
    out = augment(x, torch.Generator().manual_seed(4), jitter=0.0, max_shift=0)
    symmetries = [lambda t, k=k, f=f: (t.flip(-1) if f else t).rot90(k, (-2, -1)) for k in range(4) for f in (0, 1)]
    used = set()
    for before, after in zip(x, out):
        matches = [i for i, s in enumerate(symmetries) if torch.equal(s(before), after)]
        assert matches, "an augmented crop is not a flip/rotation of its original"
        used.update(matches)
    assert len(used) >= 4  # the draws really vary between crops


def test_augment_jitter_stays_close_in_brightness():
    x = decode_crops([png(np.full((32, 32, 3), v, np.uint8)) for v in (60, 128, 200)], 32)
    out = augment(x, torch.Generator().manual_seed(5), jitter=0.1)
    before, after = unnormalise(x).mean(dim=(1, 2, 3)), unnormalise(out).mean(dim=(1, 2, 3))
    assert not torch.equal(before, after)
    assert (after / before - 1).abs().max() < 0.15
    assert unnormalise(out).min() >= -1e-6 and unnormalise(out).max() <= 1 + 1e-6


def test_lenet_overfits_bright_vs_dark():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 8, dtype=torch.float32)
    brightness = torch.where(labels.bool(), 0.75, 0.25).view(-1, 1, 1, 1)
    pixels = (brightness + 0.1 * torch.randn(16, 3, 48, 48, generator=g)).clamp(0, 1)
    images = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = build_model("lenet", image_size=48)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = train_one_epoch(model, [(images, labels)] * 5, optimizer, "cpu")
    for _ in range(4):
        last = train_one_epoch(model, [(images, labels)] * 5, optimizer, "cpu")
    assert first.n == last.n == 80
    assert last.loss < first.loss / 2
    assert last.samples_per_s > 0 and last.seconds > 0
    result = evaluate(model, [(images[:10], labels[:10]), (images[10:], labels[10:])], "cpu")
    assert result.n == 16 and result.acc == 1.0 and result.auc == 1.0
    assert not model.training  # evaluate leaves the model in eval mode, as torchvision's does


def test_train_one_epoch_applies_transform_and_handles_empty_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Flatten(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def transform(x):
        seen.append(x.shape)
        return x

    batch = (torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 1, 0]))  # integer labels are fine
    stats = train_one_epoch(model, [batch, batch], optimizer, "cpu", amp=True, transform=transform)
    assert seen == [(4, 3, 2, 2)] * 2 and stats.n == 8 and stats.loss > 0
    empty = train_one_epoch(model, [], optimizer, "cpu")
    assert empty.n == 0 and empty.loss is None and empty.acc is None


class Echo(nn.Module):
    """A 'model' whose logit is the first pixel: evaluation metrics can then be hand-computed."""

    def forward(self, x):
        return x[:, 0, 0, 0]


def _logit_batches(logits, labels):
    x = torch.tensor(logits, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    return [(x, torch.tensor(labels))]


def test_evaluate_matches_hand_computed_metrics():
    logits = [2.0, -1.0, 0.5, -3.0, 1.0, -0.5]
    labels = [1, 1, 0, 0, 1, 0]
    # predictions at p >= 0.5: 1, 0, 1, 0, 1, 0 -> tp 2, fn 1, fp 1, tn 2
    result = evaluate(Echo(), _logit_batches(logits, labels), "cpu")
    assert result.confusion() == [[2, 1], [1, 2]]
    assert result.acc == pytest.approx(4 / 6)
    assert result.sensitivity == pytest.approx(2 / 3)
    assert result.specificity == pytest.approx(2 / 3)
    # positive logits 2, -1, 1 beat negatives 0.5, -3, -0.5 in 3 + 1 + 3 = 7 of 9 pairs
    assert result.auc == pytest.approx(7 / 9)
    bce = [math.log1p(math.exp(-z if y else z)) for z, y in zip(logits, labels)]
    assert result.loss == pytest.approx(sum(bce) / 6, rel=1e-5)
    metrics = result.metrics()
    assert "probs" not in metrics and metrics["n"] == 6
    json.dumps(metrics)


def test_undefined_metrics_are_none():
    only_negatives = evaluate(Echo(), _logit_batches([-1.0, 2.0], [0, 0]), "cpu")
    assert only_negatives.auc is None and only_negatives.sensitivity is None
    assert only_negatives.specificity == 0.5 and only_negatives.acc == 0.5
    only_positives = score_predictions([1, 1], [0.9, 0.2])
    assert only_positives.specificity is None and only_positives.auc is None
    assert only_positives.sensitivity == 0.5
    nothing = evaluate(Echo(), [], "cpu")
    assert nothing.n == 0 and nothing.loss is None and nothing.acc is None and nothing.auc is None
    assert nothing.confusion() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=60)
    scores = np.round(rng.random(60), 1)  # coarse: many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert roc_auc(labels, scores) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


def test_confusion_matrix_threshold():
    labels, probs = [0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9]
    assert confusion_matrix(labels, probs) == [[1, 1], [1, 1]]
    assert confusion_matrix(labels, probs, threshold=0.3) == [[1, 1], [0, 2]]
    assert roc_auc(labels, probs) == 0.75


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_epoch_on_cuda():
    model = build_model("resnet").cuda()
    optimizer = torch.optim.Adam(model.parameters())
    scaler = torch.amp.GradScaler("cuda")
    batch = (torch.randn(8, 3, 128, 128), torch.tensor([0, 1] * 4))
    stats = train_one_epoch(model, [batch] * 3, optimizer, "cuda", scaler=scaler)
    assert stats.n == 24 and math.isfinite(stats.loss)
    result = evaluate(model, [batch], "cuda")
    assert result.n == 8 and result.probs.dtype == np.float32


def test_augment_runs_on_another_device_with_a_cpu_generator():
    # What a GPU worker does (batch on the GPU, generator on the CPU), with the "meta" device standing
    # in for CUDA on machines without one: no draw or op may assume the batch is on the CPU.
    x = torch.zeros(4, 3, 16, 16, device="meta")
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.device.type == "meta" and y.shape == x.shape
