"""The classifier: class probabilities from one-logit and K-logit models, the calls, the stored normalisation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline import schema, taxonomy
from pipeline.checkpoint import CheckpointError
from pipeline.classify import CellClassifier, call_cells, class_probabilities

LB, OTHER, NEU, LYM, MON, ERY = "lymphoblast", "other", "neutrophil", "lymphocyte", "monocyte", "erythroblast"


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def crops(n: int = 6, size: int = 128, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)  # each crop its own colour, with noise: a model's outputs vary over them
    return [png(np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (size, size, 3)), 0, 255)) for _ in range(n)]


def old_checkpoint(
    directory: Path, model: torch.nn.Module, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
) -> Path:
    """A checkpoint exactly as allray wrote them before the differential: format 1, classes {"0", "1"}."""
    directory.mkdir(parents=True)
    torch.save(model.state_dict(), directory / "model.pt")
    meta = {
        "format_version": 1,
        "classes": {"0": "other white cell", "1": "lymphoblast"},
        "arch": "lenet",
        "model_name": "lenet",
        "image_size": 126,
        "mean": list(mean),
        "std": list(std),
        "crop_settings": {"crop_um": 24.0, "crop_size": 128, "um_per_pixel": None, "detect": {}},
        "data_id": None,
        "epoch": 1,
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture(scope="module")
def lenet():
    from pipeline.models import build_model

    torch.manual_seed(3)
    return build_model("lenet", 126).eval()


# --- pure functions ---------------------------------------------------------------------------------


def test_one_logit_is_the_blast_probability_by_sigmoid():
    probs = class_probabilities(np.array([0.0, 2.0, -1.0]), taxonomy.BINARY_CLASSES)
    sig = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0])))
    assert probs.shape == (3, 2)
    assert probs[:, 1] == pytest.approx(sig, abs=1e-6) and probs[:, 0] == pytest.approx(1 - sig, abs=1e-6)
    assert class_probabilities(np.array([[2.0]]), taxonomy.BINARY_CLASSES)[0, 1] == pytest.approx(sig[1], abs=1e-6)


def test_k_logits_are_a_softmax_and_shapes_must_match_the_classes():
    logits = np.array([[0.0, 0.0, np.log(2.0)], [10.0, 0.0, 0.0]])
    probs = class_probabilities(logits, (LB, NEU, LYM))
    assert probs[0] == pytest.approx([0.25, 0.25, 0.5], abs=1e-6)
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-6)
    with pytest.raises(CheckpointError, match="3 classes"):
        class_probabilities(np.zeros((2, 4)), (LB, NEU, LYM))
    with pytest.raises(CheckpointError, match="one logit"):
        class_probabilities(np.zeros(2), (LB, NEU, LYM))


def test_calls_follow_the_blast_threshold_then_the_most_probable_other_class():
    classes = (LB, NEU, LYM, ERY)
    probs = np.array(
        [
            [0.60, 0.10, 0.20, 0.10],  # blast above threshold
            [0.45, 0.30, 0.20, 0.05],  # blast most probable, but below 0.5: the best other class (neutrophil)
            [0.05, 0.10, 0.15, 0.70],  # erythroblast
            [0.50, 0.50, 0.00, 0.00],  # at the threshold: a blast, as `blast_prob >= threshold` has always said
        ],
        np.float32,
    )
    calls = call_cells(probs, classes, threshold=0.5)
    assert calls[schema.PREDICTED].tolist() == [1, 0, 0, 1]
    assert calls[schema.PREDICTED_CLASS].tolist() == [LB, NEU, ERY, LB]
    assert calls[schema.CLASS_PROB] == pytest.approx([0.60, 0.30, 0.70, 0.50])
    assert calls[schema.BLAST_PROB] == pytest.approx([0.60, 0.45, 0.05, 0.50])
    no_blast = call_cells(np.array([[0.7, 0.3]], np.float32), (NEU, LYM), threshold=0.5)
    assert no_blast[schema.BLAST_PROB].tolist() == [0.0] and no_blast[schema.PREDICTED].tolist() == [0]
    assert no_blast[schema.PREDICTED_CLASS].tolist() == [NEU]
    empty = call_cells(np.zeros((0, 2), np.float32), taxonomy.BINARY_CLASSES, 0.5)
    assert all(len(v) == 0 for v in empty.values())


# --- checkpoints --------------------------------------------------------------------------------------


def test_an_old_binary_checkpoint_still_infers(tmp_path, lenet):
    ckpt = old_checkpoint(tmp_path / "old", lenet)
    clf = CellClassifier(str(ckpt), threshold=0.5)
    assert clf.class_names == taxonomy.BINARY_CLASSES
    batch = crops(6)
    table = clf(pa.table({schema.CROP: pa.array(batch, pa.binary()), schema.LABEL: pa.array([1, None] * 3, pa.int8())}))
    blast = table.column(schema.BLAST_PROB).to_numpy()
    from pipeline.training import decode_crops

    with torch.inference_mode():
        want = torch.sigmoid(lenet(decode_crops(batch, 126))).numpy()
    assert blast == pytest.approx(want, abs=1e-5)
    predicted = table.column(schema.PREDICTED).to_numpy()
    assert predicted.tolist() == (want >= 0.5).astype(int).tolist()
    names = table.column(schema.PREDICTED_CLASS).to_pylist()
    assert names == [LB if p else OTHER for p in predicted]
    assert table.column(schema.CLASS_PROB).to_numpy() == pytest.approx(
        np.where(predicted == 1, want, 1 - want), abs=1e-5
    )
    assert table.column(schema.LABEL).null_count == 3  # null labels stay null


def test_the_stored_normalisation_is_used(tmp_path, lenet):
    """Same weights, other mean/std in meta.json: other probabilities (fixed constants would give the same)."""
    batch = crops(4, seed=1)
    plain = CellClassifier(str(old_checkpoint(tmp_path / "a", lenet))).predict(batch)
    other = CellClassifier(str(old_checkpoint(tmp_path / "b", lenet, mean=(0.5, 0.5, 0.5), std=(0.1, 0.1, 0.1))))
    shifted = other.predict(batch)
    assert np.abs(plain - shifted).max() > 1e-3
    from pipeline.training import decode_crops

    with torch.inference_mode():
        want = torch.sigmoid(lenet(decode_crops(batch, 126, mean=(0.5,) * 3, std=(0.1,) * 3))).numpy()
    assert shifted == pytest.approx(want, abs=1e-5)


class _KHead(torch.nn.Module):
    """A small random model with K logits: flatten a pooled crop into a linear layer."""

    def __init__(self, k: int):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 4 * 4, k)

    def forward(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)) * 20


def test_a_k_logit_model_gives_classes_and_probabilities(tmp_path, lenet):
    clf = CellClassifier(str(old_checkpoint(tmp_path / "k", lenet)), threshold=0.5)
    classes = (LB, NEU, LYM, MON, ERY)
    clf.model, clf.class_names = _KHead(len(classes)).eval(), classes  # what a K-class checkpoint loads as
    batch = crops(12, seed=2)
    probs = clf.predict_proba(batch)
    assert probs.shape == (12, 5) and probs.sum(axis=1) == pytest.approx(np.ones(12), abs=1e-5)
    out = clf({schema.CROP: np.array(batch, dtype=object)})
    others = np.where(np.arange(5) == 0, -1, probs).argmax(axis=1)
    expect = [LB if probs[i, 0] >= 0.5 else classes[others[i]] for i in range(12)]
    assert out[schema.PREDICTED_CLASS].tolist() == expect
    assert out[schema.BLAST_PROB] == pytest.approx(probs[:, 0])
    assert len(set(expect)) >= 2  # the random head does not call every cell the same (else this test says little)
    assert out[schema.MODEL_ID][0].startswith("lenet@")


def test_a_model_whose_classes_cannot_be_mapped_is_refused():
    from pipeline.classify import model_classes

    assert model_classes({"model_name": "lenet"}) == taxonomy.BINARY_CLASSES
    assert model_classes({"class_names": [LB, NEU]}) == (LB, NEU)
    with pytest.raises(CheckpointError, match="cannot be mapped"):
        model_classes({"class_names": [LB, "dragon"]})
    with pytest.raises(CheckpointError, match="overlap"):
        model_classes({"class_names": [OTHER, NEU]})
