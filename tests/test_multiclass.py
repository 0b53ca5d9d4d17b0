"""Training on cell classes: model classes, partial-label targets and loss, per-class metrics, CheckpointMeta."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import schema, taxonomy
from pipeline.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from pipeline.config import CropSettings, TrainConfig, parse_classes
from pipeline.models import build_model
from pipeline.multiclass import (
    PartialLabelCriterion,
    bits_to_mask,
    class_metrics,
    exact_class,
    partial_label_loss,
    resolve_model_classes,  # fmt: skip
    score_multiclass,
    training_targets,
)

PBC = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


def test_partial_label_gradient_is_that_of_the_summed_probability():
    torch.manual_seed(0)
    classes = ("lymphoblast", "neutrophil", "lymphocyte", "monocyte", "erythroblast")
    logits = torch.randn(6, len(classes), requires_grad=True)
    labels = ["other", "neutrophil", "other", "wbc", "lymphoblast", "monocyte"]
    bits = torch.tensor([sum(1 << i for i in taxonomy.target_indices(lab, classes)) for lab in labels])
    mask = bits_to_mask(bits, len(classes))
    assert mask[0].tolist() == [False, True, True, True, False]  # other = the white classes but blasts
    assert mask[3].tolist() == [True, True, True, True, False]  # wbc: every white class, not erythroblast
    partial_label_loss(logits, mask, reduction="sum").backward()
    # by hand: -log of the summed softmax probability of the label's classes
    ref = logits.detach().clone().requires_grad_(True)
    p = torch.softmax(ref, 1)
    (-torch.log((p * mask).sum(1))).sum().backward()
    assert torch.allclose(logits.grad, ref.grad, atol=1e-6)
    # closed form of d/dz_j: p_j - [j in T] p_j / sum_T p
    pd = p.detach()
    closed = pd - mask * pd / (pd * mask).sum(1, keepdim=True)
    assert torch.allclose(logits.grad, closed, atol=1e-6)
    # a leaf label is plain cross-entropy
    leaf = [1, 4, 5]
    ce = torch.nn.functional.cross_entropy(logits.detach()[leaf], torch.tensor([1, 0, 3]), reduction="sum")
    assert torch.isclose(partial_label_loss(logits.detach()[leaf], mask[leaf], reduction="sum"), ce)


def test_criterion_counts_a_prediction_inside_the_label_set_as_correct():
    classes = ("lymphoblast", "neutrophil", "lymphocyte")
    logits = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    bits = torch.tensor([0b110, 0b110, 0b001])  # other, other, lymphoblast
    loss, correct = PartialLabelCriterion(len(classes))(logits, bits)
    assert int(correct) == 1 and loss.item() > 0


def test_class_metrics_on_a_hand_built_confusion_matrix():
    # rows true, columns predicted: a = 8 right 2 as b; b = 5 right, 5 as c; c = 0 cells, 1 predicted
    cm = [[8, 2, 0], [0, 5, 5], [0, 0, 0]]
    m = class_metrics(cm, ("a", "b", "c"))
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["sensitivity"], a["precision"], a["n"]) == (0.8, 1.0, 10)
    assert a["f1"] == pytest.approx(2 * 0.8 * 1.0 / 1.8)
    assert (b["sensitivity"], b["precision"]) == (0.5, pytest.approx(5 / 7))
    assert b["f1"] == pytest.approx(2 * 0.5 * (5 / 7) / (0.5 + 5 / 7))
    assert c["sensitivity"] is None and c["f1"] is None and c["precision"] == 0.0
    assert m["accuracy"] == pytest.approx(13 / 20)
    assert m["balanced_accuracy"] == pytest.approx((0.8 + 0.5) / 2)  # c has no true cells: left out
    assert m["macro_f1"] == pytest.approx((a["f1"] + b["f1"]) / 2)


def test_multiclass_scores_blast_metrics_from_the_blast_probability():
    classes = ("lymphoblast", "neutrophil", "lymphocyte")
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]], np.float32)
    bits = np.array([0b001, 0b010, 0b110, 0b100])  # blast, neutrophil, other, lymphocyte
    r = score_multiclass(bits, probs, classes)
    assert r.acc == pytest.approx(3 / 4)  # the last is called a blast
    assert r.sensitivity == 1.0 and r.specificity == pytest.approx(2 / 3)
    assert r.confusion() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]  # "other" (2 classes) is not in the matrix
    assert exact_class(bits).tolist() == [0, 1, -1, 2]


def test_auto_classes_binary_on_zero_one_labels_and_k_classes_otherwise():
    assert resolve_model_classes("auto", ["other", "lymphoblast", "other"]) == taxonomy.BINARY_CLASSES
    assert resolve_model_classes("auto", list(PBC)) == tuple(c for c in taxonomy.CLASSES if c in PBC)
    mixed = resolve_model_classes("auto", [*PBC, "other", "lymphoblast"])  # ALL-IDB + PBC: one model
    assert mixed[0] == "lymphoblast" and set(mixed) == {"lymphoblast", *PBC}
    assert resolve_model_classes("binary", list(PBC)) == taxonomy.BINARY_CLASSES
    assert resolve_model_classes(("neutrophil", "lymphocyte"), ["neutrophil"]) == ("neutrophil", "lymphocyte")
    with pytest.raises(ValueError, match="one class only"):
        resolve_model_classes("auto", ["neutrophil", "neutrophil"])
    assert parse_classes("other,blast") == "binary" and parse_classes("AUTO") == "auto"
    with pytest.raises(ValueError, match=r"unknown cell class 'granulocyte'.*known classes: lymphoblast"):
        TrainConfig(classes="neutrophil,granulocyte")


def test_training_targets_and_cells_that_fit_no_class():
    labels = ["lymphoblast", "other", "neutrophil", "platelet", "wbc"]
    y, ok = training_targets(labels, taxonomy.BINARY_CLASSES)
    assert y[ok].tolist() == [1, 0, 0] and ok.tolist() == [True, True, True, False, False]
    classes = ("lymphoblast", "neutrophil", "lymphocyte")
    y, ok = training_targets(labels, classes)
    # other -> neutrophil|lymphocyte; platelet fits none; wbc allows all three (says nothing)
    assert y.tolist()[:3] == [0b001, 0b110, 0b010] and ok.tolist() == [True, True, True, False, False]


def test_one_logit_model_is_the_same_model_as_before():
    torch.manual_seed(3)
    default = build_model("lenet")
    torch.manual_seed(3)
    one = build_model("lenet", num_classes=1)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), one.state_dict().values()))
    x = torch.zeros(2, 3, 126, 126)
    assert one.eval()(x).shape == (2,) and build_model("lenet", num_classes=8).eval()(x).shape == (2, 8)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("lenet", num_classes=0)


def _meta(**kw) -> CheckpointMeta:
    return CheckpointMeta(arch="lenet", model_name="lenet", image_size=126, mean=(0.5,) * 3, std=(0.25,) * 3,
                          crop_settings=CropSettings(crop_um=30.0), **kw)  # fmt: skip


def test_checkpoint_meta_round_trip(tmp_path):
    meta = _meta(
        class_names=tuple(c for c in taxonomy.CLASSES if c in PBC),
        data_id="abc",
        epoch=3,
        params=17,
        split={"n_train": 4},
        metrics={"val_acc": 0.5},
        confusion=[[1, 0], [0, 1]],
        cells=("/x",),
    )
    assert meta.n_outputs == 8 and not meta.is_binary
    model = build_model("lenet", 126, num_classes=meta.n_outputs)
    save_checkpoint(tmp_path, model.state_dict(), meta)
    back = read_meta(tmp_path)
    assert back == meta and isinstance(back.crop_settings, CropSettings) and back.crop_settings.crop_um == 30.0
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded(torch.zeros(1, 3, 126, 126)).shape == (1, 8)
    assert json.loads((tmp_path / "meta.json").read_text())["format_version"] == 2
    with pytest.raises(TypeError, match="CropSettings"):
        CheckpointMeta(arch="lenet", model_name="lenet", image_size=126, mean=(0,) * 3, std=(1,) * 3,
                       crop_settings={"crop_um": 24.0})  # fmt: skip


def test_old_binary_meta_json_still_loads(tmp_path):
    model = build_model("lenet", 126)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    old = {"format_version": 1, "classes": {"0": "other white cell", "1": "lymphoblast"}, "arch": "lenet",
           "fold": 0, "crop_settings": json.loads(CropSettings().to_json()), "data_id": "d1", "cells": ["/c"],
           "split": {"n_train": 3}, "model_name": "lenet", "image_size": 126, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225], "epoch": 1, "metrics": {"val_acc": 0.9}, "params": 17576,
           "confusion": [[3, 1], [0, 2]]}  # fmt: skip
    (tmp_path / "meta.json").write_text(json.dumps(old))
    loaded, meta = load_checkpoint(tmp_path)
    assert meta.class_names == taxonomy.BINARY_CLASSES and meta.n_outputs == 1 and meta.is_binary
    assert meta.crop_settings == CropSettings() and meta.data_id == "d1" and meta.epoch == 1
    assert loaded(torch.zeros(2, 3, 126, 126)).shape == (2,)


def test_meta_with_classes_outside_the_taxonomy_is_refused(tmp_path):
    text = _meta().to_json().replace('"other",\n    "lymphoblast"', '"other",\n    "megakaryocyte"')
    assert "megakaryocyte" in text
    (tmp_path / "meta.json").write_text(text)
    with pytest.raises(CheckpointError, match="megakaryocyte"):
        read_meta(tmp_path)


def test_old_ingest_output_without_cell_class_still_trains(tmp_path):
    """A cell table written before the cell_class column: classes come from the binary label."""
    from pipeline.cellsets import read_cell_index

    rows = []
    for i, label in enumerate([0, 1, 1, None]):
        row = {f.name: None for f in schema.CELL_SCHEMA if f.name != schema.CELL_CLASS}
        row.update({schema.IMAGE: f"im{i}.png", schema.CELL_ID: 0, schema.LABEL: label, schema.KIND: schema.KIND_WBC,
                    schema.SOURCE_SHA256: f"s{i}", schema.INGEST_SETTINGS: CropSettings().to_json(),
                    schema.CROP: b"png", schema.SHARD: "old"})  # fmt: skip
        rows.append(row)
    old_schema = pa.schema([f for f in schema.CELL_SCHEMA if f.name != schema.CELL_CLASS])
    (tmp_path / schema.CELLS_DIR).mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), tmp_path / schema.CELLS_DIR / "old.parquet")
    # the shard's ledger (written last: it commits the shard), as an old output has it
    ledger = [
        {schema.IMAGE: f"im{i}.png", schema.STATUS: schema.STATUS_INGESTED, schema.SHARD: "old"} for i in range(4)
    ]
    (tmp_path / schema.IMAGES_DIR).mkdir()
    pq.write_table(
        pa.Table.from_pylist(ledger, schema=schema.IMAGE_SCHEMA), tmp_path / schema.IMAGES_DIR / "old.parquet"
    )
    index = read_cell_index([str(tmp_path)])
    assert index.table.column(schema.CELL_CLASS).to_pylist() == ["other", "lymphoblast", "lymphoblast"]
    assert index.n_unlabelled == 1 and index.crop_settings == CropSettings()
    y, ok = training_targets(
        index.table.column(schema.CELL_CLASS).to_pylist(),
        resolve_model_classes("auto", index.table.column(schema.CELL_CLASS).to_pylist()),
    )
    assert y.tolist() == [0, 1, 1] and ok.all()
