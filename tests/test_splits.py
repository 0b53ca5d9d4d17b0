"""Splits: no patient on both sides, labels stratified, honest fallbacks, k-fold partitions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.splits import SPLIT_MODES, cell_groups, kfold_groups, split_cells, split_groups


def cohort(n_patients: int, seed: int = 0, images_per_patient: int = 3):
    """Cells of synthetic patients: some leukaemic (many blasts), most with few; uneven sizes."""
    rng = np.random.default_rng(seed)
    patients, images, labels = [], [], []
    for p in range(n_patients):
        blast_rate = 0.7 if rng.random() < 0.4 else 0.05
        for i in range(images_per_patient):
            n = int(rng.integers(1, 25))
            patients += [f"P{p:03d}"] * n
            images += [f"P{p:03d}/img{i}.jpg"] * n
            labels += (rng.random(n) < blast_rate).astype(int).tolist()
    return patients, images, np.array(labels)


@pytest.mark.parametrize("n_patients", [6, 40])
def test_patient_split_never_leaks(n_patients):
    patients, images, labels = cohort(n_patients)
    pid = np.array(patients)
    for seed in range(25):
        split = split_cells(patients, images, labels, "patient", 0.25, seed)
        assert split.mode_used == "patient" and split.note is None
        assert not set(pid[split.train_idx]) & set(pid[split.val_idx])
        both = np.concatenate([split.train_idx, split.val_idx])
        assert np.array_equal(np.sort(both), np.arange(len(pid)))
        assert set(split.train_groups) == set(pid[split.train_idx])
        assert set(split.val_groups) == set(pid[split.val_idx])
        for side in (split.train_idx, split.val_idx):
            assert set(labels[side]) == {0, 1}  # both classes on both sides


def test_split_is_stratified_and_near_the_fraction():
    patients, images, labels = cohort(60, seed=1)
    for seed in range(5):
        train_idx, val_idx = split_groups(patients, labels, 0.2, seed)
        assert abs(len(val_idx) / len(labels) - 0.2) < 0.02
        assert abs(labels[val_idx].sum() / labels.sum() - 0.2) < 0.02
        assert abs((1 - labels[val_idx]).sum() / (1 - labels).sum() - 0.2) < 0.02


def test_split_is_deterministic_and_independent_of_row_order():
    patients, _, labels = cohort(30, seed=2)
    a = split_groups(patients, labels, 0.3, seed=5)
    b = split_groups(patients, labels, 0.3, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    val_patients = set(np.array(patients)[a[1]])
    others = [set(np.array(patients)[split_groups(patients, labels, 0.3, s)[1]]) for s in range(6, 10)]
    assert any(other != val_patients for other in others)  # the seed matters
    order = np.random.default_rng(0).permutation(len(patients))
    shuffled = split_groups(list(np.array(patients)[order]), labels[order], 0.3, seed=5)
    assert set(np.array(patients)[order][shuffled[1]]) == val_patients


def test_singleton_groups_split_stratified():
    labels = np.array([1] * 30 + [0] * 70)
    train_idx, val_idx = split_groups([f"c{i}" for i in range(100)], labels, 0.2, seed=0)
    assert len(val_idx) == 20 and labels[val_idx].sum() == 6


def test_patient_falls_back_to_image_with_a_note():
    _, images, labels = cohort(8, seed=3)
    for missing in ([None] * len(images), [""] * len(images), [float("nan")] * len(images)):
        split = split_cells(missing, images, labels, "patient", 0.25, 0)
        assert (split.mode, split.mode_used) == ("patient", "image")
        assert "no cell has a patient id" in split.note
        img = np.array(images)
        assert not set(img[split.train_idx]) & set(img[split.val_idx])
    own = [f"patient-of-{im}" for im in images]  # each image its own patient
    split = split_cells(own, images, labels, "patient", 0.25, 0)
    assert split.mode_used == "image" and "own patient id" in split.note
    assert all(g in set(images) for g in split.val_groups)


def test_cells_without_patient_are_grouped_by_image():
    patients, images, labels = cohort(8, seed=4)
    patients = [None if im.endswith("img0.jpg") else p for p, im in zip(patients, images)]
    split = split_cells(patients, images, labels, "patient", 0.25, 0)
    assert split.mode_used == "patient"
    assert "without a patient id grouped by their image" in split.note
    groups = set(split.train_groups) | set(split.val_groups)
    assert "image:P000/img0.jpg" in groups and "P000" in groups


def test_image_and_random_modes():
    patients, images, labels = cohort(10, seed=5)
    img = np.array(images)
    by_image = split_cells(patients, images, labels, "image", 0.25, 0)
    assert by_image.mode_used == "image"
    assert not set(img[by_image.train_idx]) & set(img[by_image.val_idx])
    rand = split_cells(patients, images, labels, "random", 0.25, 0)
    assert rand.mode_used == "random" and "leaks" in rand.note and rand.val_groups == ()
    assert abs(len(rand.val_idx) - 0.25 * len(labels)) <= 1
    assert rand.summary()["n_val"] == len(rand.val_idx)


def test_kfold_partitions_cells_and_groups():
    patients, _, labels = cohort(23, seed=6)
    pid = np.array(patients)
    folds = kfold_groups(patients, labels, 5, seed=0)
    assert len(folds) == 5
    all_val = np.concatenate([val for _, val in folds])
    assert np.array_equal(np.sort(all_val), np.arange(len(pid)))  # every cell validated exactly once
    fold_of_patient = {}
    for j, (train, val) in enumerate(folds):
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(pid)))
        assert not set(pid[train]) & set(pid[val])
        for p in set(pid[val]):
            assert fold_of_patient.setdefault(p, j) == j
        assert labels[val].sum() > 0
    assert len(fold_of_patient) == 23
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) < 0.1 * len(pid)
    again = kfold_groups(patients, labels, 5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_kfold_on_cell_groups_never_leaks_a_patient():
    patients, images, labels = cohort(12, seed=7)
    patients = [None if im.endswith("img1.jpg") else p for p, im in zip(patients, images)]
    groups, mode_used, note = cell_groups(patients, images, "patient")
    assert mode_used == "patient" and note
    pid = np.array([p or "?" for p in patients])
    for train, val in kfold_groups(groups, labels, 4, seed=3):
        known_val = set(pid[val]) - {"?"}
        assert not known_val & set(pid[train])


def test_kfold_with_as_many_folds_as_groups():
    folds = kfold_groups(["a", "a", "b", "c", "c", "c"], [0, 1, 0, 1, 1, 0], 3, seed=1)
    assert sorted(len(v) for _, v in folds) == [1, 2, 3]


AB, XY = ["a", "b"], ["x", "y"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: split_cells(AB, XY, [0, 1], "person", 0.5, 0), r"'person'.*patient, image, random"),
        (lambda: split_cells(AB, XY, [0, 1], "image", 1.0, 0), r"val_fraction.*1\.0"),
        (lambda: split_groups(["a", "b"], [0, 1], 0, 0), r"val_fraction.*got 0"),
        (lambda: split_groups(["a", "b"], [0, None], 0.5, 0), r"class codes.*None"),
        (lambda: split_groups(["a", "b"], [0, -1], 0.5, 0), r"class codes.*-1"),
        (lambda: split_groups(["a", "a"], [0, 1], 0.5, 0), r"at least 2 groups"),
        (lambda: split_cells(["p", "p"], XY, [0, 1], "patient", 0.5, 0), r"patient split needs at least 2"),
        (lambda: split_cells(["a"], XY, [0, 1], "image", 0.5, 0), r"differ in length: 1, 2, 2"),
        (lambda: kfold_groups(["a", "b"], [0, 1], 3, 0), r"k must be.*\(2\), got 3"),
        (lambda: kfold_groups(["a", "b"], [0, 1], 1, 0), r"got 1"),
        (lambda: kfold_groups(["a", "b"], [0, 1], 2.0, 0), r"got 2\.0"),
    ],
)
def test_bad_arguments_name_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_modes_constant():
    assert SPLIT_MODES == ("patient", "image", "random")
