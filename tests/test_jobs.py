"""End-to-end runs of ingest, train and infer under one local Ray instance (marked slow + ray)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from conftest import write_truth_cells

from pipeline import schema
from pipeline.config import CropSettings, IngestConfig, TrainConfig
from pipeline.store import read_table

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A small synthetic cohort plus three broken files: a text file named .jpg, an empty PNG,
    a truncated JPEG; and a valid PNG named .jpg (read by content)."""
    from PIL import Image

    from pipeline.synth_cohort import write_cohort

    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, patients=3, images_per_patient=3, seed=11, size=(500, 400))
    bad = out / "slides" / "P000" / "S0"
    (bad / "notes.jpg").write_text("this is not an image")
    (bad / "empty.png").write_bytes(b"")
    good = Image.open(out / "slides" / "P001" / "S0" / "img000.png")
    good.save(bad / "truncated.jpg", quality=90)
    data = (bad / "truncated.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    shutil.copy(out / "slides" / "P001" / "S0" / "img001.png", bad / "really_png.jpg")
    return out


def _truth(cohort: Path) -> list[dict]:
    with (cohort / "truth" / "cells.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_ingest_end_to_end_accounts_for_every_image(ray_session, cohort, tmp_path):
    from jobs.ingest import run_ingest

    out = tmp_path / "cells"
    s = run_ingest(
        IngestConfig(src=str(cohort / "slides"), out=str(out), labels=str(cohort / "truth" / "cells.csv")), quiet=True
    )
    assert s["images_seen"] == 9 + 4
    assert s["images_seen"] == s["images_ingested"] + s["images_skipped"] + s["images_quarantined"]
    reasons = {q["image"]: q["reason"] for q in s["quarantined"]}
    assert set(reasons) == {"P000/S0/notes.jpg", "P000/S0/empty.png", "P000/S0/truncated.jpg"}
    assert "not an image" in reasons["P000/S0/notes.jpg"] and "empty file" in reasons["P000/S0/empty.png"]
    assert "truncated" in reasons["P000/S0/truncated.jpg"]
    quarantine = read_table(out, schema.QUARANTINE_DIR)
    assert sorted(quarantine.column(schema.IMAGE).to_pylist()) == sorted(reasons)

    cells = read_table(out)
    assert cells.num_rows == s["cells_written"]
    truth = _truth(cohort)
    # the synthetic images hold exactly the truth cells; really_png.jpg repeats img001 of P001
    n_expected = len(truth) + sum(r["image"] == "P001/S0/img001.png" for r in truth)
    assert abs(cells.num_rows - n_expected) <= 1
    # really_png.jpg is not in the labels file: its cells stay unlabelled (null), the others match truth
    # (every truth cell gets its class; nucleated red cells have no blast/other label)
    white = [r for r in truth if r["label"]]
    labelled = pc.sum(pc.is_valid(cells.column(schema.LABEL))).as_py()
    assert len(white) - 1 <= labelled <= len(white)
    classed = pc.sum(pc.is_valid(cells.column(schema.CELL_CLASS))).as_py()
    assert len(truth) - 1 <= classed <= len(truth)
    blasts_found = pc.sum(pc.equal(cells.column(schema.LABEL), 1)).as_py() or 0
    assert abs(blasts_found - sum(int(r["label"]) for r in white)) <= 1
    repeat = pc.equal(cells.column(schema.IMAGE), "P000/S0/really_png.jpg")
    assert pc.sum(pc.is_valid(cells.filter(repeat).column(schema.LABEL))).as_py() == 0
    patients = set(cells.column(schema.PATIENT_ID).to_pylist())
    assert patients == {"P000", "P001", "P002"}
    keys = list(zip(cells.column(schema.IMAGE).to_pylist(), cells.column(schema.CELL_ID).to_pylist()))
    assert len(keys) == len(set(keys))
    assert json.loads((out / "summary.json").read_text())["images_seen"] == 13

    again = run_ingest(IngestConfig(src=str(cohort / "slides"), out=str(out)), quiet=True)
    assert again["images_skipped"] == 13 and again["cells_written"] == 0
    assert read_table(out).num_rows == cells.num_rows


def test_interrupted_ingest_completes_on_rerun_without_duplicates(ray_session, cohort, tmp_path):
    """A run killed after its first shard: the re-run ingests the rest, nothing twice, nothing lost."""
    import pyarrow as pa

    from jobs.ingest import run_ingest
    from pipeline.ingest import TASK_COLUMN, IngestStage
    from pipeline.sources import discover_images
    from pipeline.store import open_output

    out = tmp_path / "cells"
    tasks = discover_images(cohort / "slides").tasks
    open_output(out)
    config = IngestConfig(src=str(cohort / "slides"), out=str(out))
    # what a killed run leaves: one committed shard, and the cells of a shard whose ledger never came
    IngestStage(config.crops.to_json(), str(out), "killed")({TASK_COLUMN: np.array([t.to_json() for t in tasks[:2]])})
    IngestStage(config.crops.to_json(), str(out), "killed")({TASK_COLUMN: np.array([t.to_json() for t in tasks[2:4]])})
    ledgers = sorted((out / "images").glob("*.parquet"))
    ledgers[-1].unlink()  # the second shard's commit never happened
    s = run_ingest(config, quiet=True)
    assert s["orphan_files_removed"] >= 1
    assert s["images_skipped"] == 2 and s["images_seen"] == len(tasks)
    ledger = read_table(out, schema.IMAGES_DIR)
    images = ledger.column(schema.IMAGE).to_pylist()
    assert sorted(images) == sorted(t.image for t in tasks)  # every image exactly once
    cells = read_table(out)
    keys = list(zip(cells.column(schema.IMAGE).to_pylist(), cells.column(schema.CELL_ID).to_pylist()))
    assert len(keys) == len(set(keys))
    assert sum(ledger.column(schema.N_CELLS).to_pylist()) == cells.num_rows
    assert pa.compute.sum(pa.compute.equal(ledger.column(schema.STATUS), "quarantined")).as_py() == 3


@pytest.fixture(scope="module")
def truth_cells(tmp_path_factory) -> Path:
    return write_truth_cells(tmp_path_factory.mktemp("truth") / "cells", patients=6, images_per_patient=3)


@pytest.fixture(scope="module")
def tiny_run(ray_session, truth_cells, tmp_path_factory) -> tuple[Path, dict]:
    from jobs.train import run_train

    run = tmp_path_factory.mktemp("runs") / "run"
    summary = run_train(TrainConfig(cells=(str(truth_cells),), out=str(run), arch="lenet", epochs=2, workers=2,
                                    batch_size=16), quiet=True)  # fmt: skip
    return run, summary


def test_train_two_workers_writes_every_output(tiny_run):
    run, summary = tiny_run
    for name in ("metrics.jsonl", "summary.json", "curves.png", "config.json", "split.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert [r["threads"] for r in rows] == [1, 1]  # two workers share the session's 2 CPUs: one thread each
    for key in (
        "arch",
        "epoch",
        "train_loss",
        "val_loss",
        "train_acc",
        "val_acc",
        "val_sensitivity",
        "val_specificity",
        "val_auc",
        "seconds",
        "samples_per_s",
    ):
        assert key in rows[0]
    best = run / "lenet" / "best"
    import torch

    state = torch.load(best / "model.pt", weights_only=True)
    meta = json.loads((best / "meta.json").read_text())
    assert meta["model_name"] == "lenet" and meta["image_size"] == 126 and meta["crop_settings"]["crop_size"] == 128
    assert any(k.endswith("weight") for k in state)
    # --classes auto on 0/1 labels: today's binary model, one logit
    assert meta["class_names"] == ["other", "lymphoblast"] and state["classifier.weight"].shape[0] == 1
    assert summary["class_names"] == ["other", "lymphoblast"] and "val_macro_f1" in rows[0]
    assert summary["archs"]["lenet"]["lr"] == 1e-3  # the study's Adam rate for the one-logit model
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train_groups"]) & set(split["val_groups"])  # no patient on both sides
    assert summary["split"]["split_mode_used"] == "patient"


def test_train_resume_continues_from_saved_epoch(tiny_run, truth_cells):
    from jobs.train import run_train

    run, _ = tiny_run
    # streamed this time (the first run cached its crops): both paths train
    summary = run_train(TrainConfig(cells=(str(truth_cells),), out=str(run), arch="lenet", epochs=3, workers=1,
                                    resume=True, batch_size=16, cache="no"), quiet=True)  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["resumed_from"] == 2
    assert summary["crops_cached"] is False and tiny_run[1]["crops_cached"] is True


def test_cached_and_streamed_datasets_hold_exactly_the_selected_cells(ray_session, truth_cells):
    from jobs.train import _datasets, _should_cache
    from pipeline.cellsets import KEY, read_cell_index

    index = read_cell_index([str(truth_cells)])
    keys = index.table.column(KEY).to_pylist()
    labels = dict(zip(keys, index.table.column(schema.LABEL).to_pylist()))
    train_keys = {k: labels[k] for k in keys[::2]}
    val_keys = {k: labels[k] for k in keys[1::2]}
    for cache in (True, False):
        datasets = _datasets(index.files, train_keys, val_keys, cache)
        for side, chosen in (("train", train_keys), ("val", val_keys)):
            rows = datasets[side].take_all()
            assert len(rows) == len(chosen)
            assert sorted(int(r[schema.LABEL]) for r in rows) == sorted(labels[k] for k in chosen)
            assert all(isinstance(r[schema.CROP], bytes) for r in rows)
    assert index.crop_bytes_per_cell > 100  # PNG crops of 128x128 cells
    assert _should_cache("auto", index.crop_bytes_per_cell * len(keys))  # a few MiB fit
    assert not _should_cache("auto", 1e15) and _should_cache("yes", 1e15) and not _should_cache("no", 1.0)


def test_training_blocks_mix_many_shards_and_keep_every_cell_once(ray_session, tmp_path):
    """Each shard holds the images of one patient (for class folders: one class). Training blocks
    are random groups of shards with their rows shuffled, so neighbouring rows rarely share a shard,
    cached or streamed, and every selected cell comes exactly once; validation stays a shard a block."""
    import pyarrow.parquet as pq

    from jobs.train import _datasets
    from pipeline.cellsets import cell_key, read_cell_index

    cells = write_truth_cells(tmp_path / "cells", patients=8, images_per_patient=2, per_patient_shards=True)
    index = read_cell_index([str(cells)])
    assert len(index.files) == 8
    shard_of = {}  # the training target of each cell is its shard's number, so rows show their shard
    for i, f in enumerate(index.files):
        t = pq.read_table(f, columns=[schema.SOURCE_SHA256, schema.CELL_ID])
        for s, c in zip(t.column(0).to_pylist(), t.column(1).to_pylist()):
            shard_of[cell_key(s, c)] = i

    def neighbours_in_one_shard(rows) -> float:
        shards = [int(r[schema.LABEL]) for r in rows]
        return sum(a == b for a, b in zip(shards, shards[1:])) / (len(shards) - 1)

    for cache in (True, False):
        datasets = _datasets(index.files, shard_of, shard_of, cache, seed=3)
        train, val = datasets["train"].take_all(), datasets["val"].take_all()
        assert sorted(int(r[schema.LABEL]) for r in train) == sorted(shard_of.values())
        assert sorted(int(r[schema.LABEL]) for r in val) == sorted(shard_of.values())
        assert neighbours_in_one_shard(train) < 0.5
        assert neighbours_in_one_shard(val) > 0.8


def test_training_files_and_blocks_follow_the_cells_not_their_names(tmp_path):
    """The same cells under another folder and other shard names (a second ingest of the same
    images): the files come in the same order of content and a block's shuffled rows are the same."""
    import pyarrow.parquet as pq

    from pipeline.cellsets import cell_key, read_cell_index, select_cells
    from pipeline.store import PATH_COLUMN

    first = read_cell_index([str(write_truth_cells(tmp_path / "a", patients=4, images_per_patient=1,
                                                   per_patient_shards=True))])  # fmt: skip
    second = read_cell_index([str(write_truth_cells(tmp_path / "b" / "c", patients=4, images_per_patient=1,
                                                    per_patient_shards=True, shard_name=lambda n: f"z{9 - n}"))])  # fmt: skip
    assert [Path(f).name for f in first.files] == [f"truth-{n}.parquet" for n in range(4)]
    assert [Path(f).name for f in second.files] == [f"z{9 - n}.parquet" for n in range(4)]  # by content, not name

    def block(files, shuffle_seed=5):
        targets = {}
        for f in files:
            t = pq.read_table(f, columns=[schema.SOURCE_SHA256, schema.CELL_ID])
            targets.update(
                {cell_key(s, c): int(c) % 2 for s, c in zip(t.column(0).to_pylist(), t.column(1).to_pylist())}
            )
        out = select_cells({PATH_COLUMN: np.array(files)}, targets, shuffle_seed=shuffle_seed)
        return [bytes(c) for c in out[schema.CROP]], out[schema.LABEL].tolist()

    a = block(first.files[:3])
    assert block(first.files[:3][::-1]) == a  # the order of the files within a block does not matter
    assert block(second.files[:3]) == a  # nor their folder and names
    assert block(first.files[:3], shuffle_seed=None)[0] != a[0]  # and the rows are really shuffled


def test_shard_groups_are_random_groups_of_about_the_target_rows():
    from pipeline.cellsets import shard_groups

    files = [f"s{i:03d}.parquet" for i in range(100)]
    groups = shard_groups(files, rows_per_file=16, seed=1, rows=128)
    assert sorted(f for g in groups for f in g) == files  # every shard once
    assert len(groups) == 13 and {len(g) for g in groups} == {7, 8}  # 128 rows of 16-cell shards: 8 a group
    assert groups[0] != files[:8]  # not in file order
    assert groups == shard_groups(files, 16, seed=1, rows=128) != shard_groups(files, 16, seed=2, rows=128)
    assert all(len(g) == 1 for g in shard_groups(files, rows_per_file=5000, seed=1))  # big shards: one a block
    assert max(len(g) for g in shard_groups(files, rows_per_file=1, seed=1)) <= 32  # capped
    assert shard_groups([], 16, seed=1) == []


def test_a_seeded_training_run_is_reproduced_exactly(ray_session, tmp_path, monkeypatch):
    """Same cells, same seed, twice: the same batches, so the same losses to the last digit
    (Ray Data reads in order for training; without it 2 of 3 runs drew other batches). The second
    copy of the cells lies elsewhere under other shard names, as a second ingest of the same images
    would (names carry a run id and a random part): batches follow from the cells, not the names.
    Blocks are made small, so an epoch reads several in an order drawn from the seed."""
    import jobs.train
    from jobs.train import run_train
    from pipeline.cellsets import shard_groups

    blocks = []

    def small_groups(files, rows_per_file, seed):
        groups = shard_groups(files, rows_per_file, seed, rows=24)
        blocks.append(len(groups))
        return groups

    monkeypatch.setattr(jobs.train, "shard_groups", small_groups)

    copies = [
        write_truth_cells(tmp_path / "cells", patients=8, images_per_patient=2, per_patient_shards=True),
        write_truth_cells(tmp_path / "elsewhere" / "again", patients=8, images_per_patient=2, per_patient_shards=True,
                          shard_name=lambda n: f"run2-{99 - n:02d}"),
    ]  # fmt: skip
    losses = []
    for n, cells in enumerate(copies):
        run_train(TrainConfig(cells=(str(cells),), out=str(tmp_path / f"run{n}"), arch="lenet", epochs=2,
                              batch_size=8, split="random", seed=4), quiet=True)  # fmt: skip
        rows = [json.loads(line) for line in (tmp_path / f"run{n}" / "metrics.jsonl").read_text().splitlines()]
        losses.append([(r["train_loss"], r["val_loss"]) for r in rows])
        # One worker on the 2-CPU session trains on both cores (train_worker.choose_threads).
        assert [r["threads"] for r in rows] == [2, 2]
    assert blocks == [3, 3]  # 8 shards of ~14 cells, 2 or 3 a block
    assert len(losses[0]) == 2 and losses[0] == losses[1]


def test_impossible_workers_fail_fast(ray_session, truth_cells, tmp_path):
    import time

    from jobs.runtime import ClusterTooSmallError
    from jobs.train import run_train

    started = time.perf_counter()
    with pytest.raises(ClusterTooSmallError, match="--workers"):
        run_train(TrainConfig(cells=(str(truth_cells),), out=str(tmp_path / "r"), arch="lenet", workers=8))
    with pytest.raises(ClusterTooSmallError, match="GPU"):
        run_train(TrainConfig(cells=(str(truth_cells),), out=str(tmp_path / "g"), arch="lenet", gpu=True))
    assert time.perf_counter() - started < 30


def test_infer_end_to_end_reports_reconcile(ray_session, tiny_run, cohort, tmp_path):
    from jobs.infer import run_infer

    run, _ = tiny_run
    out = tmp_path / "report"
    s = run_infer(str(cohort / "slides"), str(run), str(out), min_cells=5, quiet=True)
    for name in ("patients.csv", "patients.json", "samples.csv", "report.html", "summary.json"):
        assert (out / name).is_file(), name
    import pyarrow.dataset as pads

    table = pads.dataset(str(out / "predictions"), format="parquet").to_table()
    with (out / "patients.csv").open() as fh:
        patients = {r["patient_id"]: r for r in csv.DictReader(fh)}
    for pid, row in patients.items():
        mine = table.filter(pc.equal(table.column(schema.PATIENT_ID), pid))
        not_smudge = mine.filter(pc.not_equal(mine.column(schema.KIND), schema.KIND_SMUDGE))
        assert int(row["n_cells"]) == not_smudge.num_rows
        assert int(row["n_blasts"]) == pc.sum(not_smudge.column(schema.PREDICTED)).as_py()
        # a binary model's differential: lymphoblast vs other, over the same cells
        assert (int(row["n_lymphoblast"]), int(row["n_other"])) == (
            int(row["n_blasts"]),
            int(row["n_cells"]) - int(row["n_blasts"]),
        )
    calls = table.column(schema.PREDICTED).to_pylist()
    assert table.column(schema.PREDICTED_CLASS).to_pylist() == ["lymphoblast" if c else "other" for c in calls]
    probs, class_probs = (table.column(k).to_numpy() for k in (schema.BLAST_PROB, schema.CLASS_PROB))
    assert np.allclose(class_probs, np.where(np.asarray(calls) == 1, probs, 1 - probs), atol=1e-6)
    assert s["n_quarantined"] == 3
    html = (out / "report.html").read_text()
    assert "notes.jpg" in html and "P000" in html


def test_infer_on_an_ingest_output_labels_every_cell_once(ray_session, tiny_run, truth_cells, tmp_path):
    from jobs.infer import run_infer

    run, _ = tiny_run
    out = tmp_path / "report"
    s = run_infer(str(truth_cells), str(run), str(out), min_cells=5, quiet=True)
    cells = read_table(str(truth_cells), columns=[schema.SOURCE_SHA256, schema.CELL_ID])
    import pyarrow.dataset as pads

    predicted = pads.dataset(str(out / schema.PREDICTIONS_DIR), format="parquet").to_table(
        columns=[schema.CELL_ID, schema.IMAGE, schema.LABEL, schema.KNOWN_CLASS]
    )
    assert predicted.num_rows == cells.num_rows  # every cell labelled, none twice
    # the known class of an old (binary-labelled) ingest output: what its label stands for
    want = {1: "lymphoblast", 0: "other", None: None}
    labels = predicted.column(schema.LABEL).to_pylist()
    assert predicted.column(schema.KNOWN_CLASS).to_pylist() == [want[v] for v in labels]
    assert set(predicted.column(schema.KNOWN_CLASS).to_pylist()) >= {"lymphoblast", "other"}
    keys = set(zip(predicted.column(schema.IMAGE).to_pylist(), predicted.column(schema.CELL_ID).to_pylist()))
    assert len(keys) == cells.num_rows
    assert s["input"].startswith("ingest output")
    assert 0 < s["first_result_s"] <= s["elapsed_s"]
    after = s["cells_per_s_after_first_result"]  # undefined when every cell came back in the first result
    assert after is None or after > 0


def test_infer_refuses_mismatched_checkpoint(ray_session, tiny_run, cohort, tmp_path):
    from jobs.infer import run_infer
    from pipeline.checkpoint import CheckpointError

    run, _ = tiny_run
    bad = tmp_path / "bad"
    shutil.copytree(run / "lenet" / "best", bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["model_name"] = "resnet18"
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        run_infer(str(cohort / "slides"), str(bad), str(tmp_path / "r"), quiet=True)
    assert not (tmp_path / "r").exists()


def test_infer_refuses_damaged_checkpoint(ray_session, tiny_run, cohort, tmp_path):
    from jobs.infer import run_infer
    from pipeline.checkpoint import CheckpointError

    run, _ = tiny_run
    bad = tmp_path / "damaged"
    shutil.copytree(run / "lenet" / "best", bad)
    (bad / "model.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="damaged"):
        run_infer(str(cohort / "slides"), str(bad), str(tmp_path / "r"), quiet=True)


def test_kfold_reports_mean_and_sd(ray_session, truth_cells, tmp_path):
    from jobs.train import run_train

    summary = run_train(TrainConfig(cells=(str(truth_cells),), out=str(tmp_path / "k"), arch="lenet", epochs=1,
                                    folds=2, batch_size=16), quiet=True)  # fmt: skip
    result = summary["archs"]["lenet"]
    assert len(result["folds"]) == 2
    assert result["val_acc_mean"] is not None and 0.0 <= result["val_acc_mean"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["fold"] for r in rows) == [0, 1]


def test_train_auto_classes_on_class_folders_gives_a_softmax_head(ray_session, tmp_path):
    """Class folders -> ingest -> `--classes auto`: one output per class present, per-class metrics."""
    from PIL import Image

    from jobs.ingest import run_ingest
    from jobs.train import run_train
    from pipeline.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    colours = {"neutrophil": (200, 120, 160), "lymphocyte": (90, 60, 160), "platelet": (230, 200, 210)}
    for cls, colour in colours.items():
        for i in range(6):
            pixels = np.clip(np.asarray(colour) + rng.normal(0, 10, (90, 90, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "src" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / "src" / cls / f"{cls[:2]}{i}.png")
    # plain-colour images show no red cells to measure a scale from: the scale is given
    config = IngestConfig(src=str(tmp_path / "src"), out=str(tmp_path / "cells"), crops=CropSettings(um_per_pixel=0.2))
    s = run_ingest(config, quiet=True)
    assert s["source_format"] == "classfolders" and s["cells_labelled"] == 18
    summary = run_train(TrainConfig(cells=(str(tmp_path / "cells"),), out=str(tmp_path / "run"), arch="lenet",
                                    epochs=1, split="random", batch_size=8), quiet=True)  # fmt: skip
    assert summary["class_names"] == ["neutrophil", "lymphocyte", "platelet"]  # taxonomy order
    assert summary["archs"]["lenet"]["lr"] == 3e-3  # the LeNet variant's softmax-head default
    assert summary["n_cells_trainable"] == 18 and summary["n_cells_unfit_classes"] == 0
    model, meta = load_checkpoint(tmp_path / "run" / "lenet" / "best")
    assert meta.n_outputs == 3 and model(torch_zeros(126)).shape == (2, 3)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row["val_per_class"]) == set(colours)
    assert sum(v["n"] for v in row["val_per_class"].values()) == meta.split["n_val"] > 0
    assert row["val_sensitivity"] is None  # no lymphoblast class: no blast metrics
    assert len(meta.confusion) == 3 and sum(map(sum, meta.confusion)) == meta.split["n_val"]
    # the K-class checkpoint infers on a class-folder tree: a class per cell, the known class kept,
    # the differential in the count table
    import pyarrow.dataset as pads

    from jobs.infer import run_infer
    from pipeline.config import InferConfig

    report = tmp_path / "report"
    infer = InferConfig(slides=str(tmp_path / "src"), model=str(tmp_path / "run"), out=str(report),
                        um_per_pixel=0.2, min_cells=1)  # fmt: skip
    s = run_infer(infer, quiet=True)
    t = pads.dataset(str(report / schema.PREDICTIONS_DIR), format="parquet").to_table()
    assert t.num_rows == 18 and set(t.column(schema.PREDICTED_CLASS).to_pylist()) <= set(colours)
    assert sorted(t.column(schema.KNOWN_CLASS).to_pylist()) == sorted(c for c in colours for _ in range(6))
    probs = t.column(schema.CLASS_PROB).to_numpy()
    assert ((probs >= 1 / 3 - 1e-6) & (probs <= 1)).all()  # the top of a 3-way softmax
    # no lymphoblast class: the model gives a blast no probability, and calls none
    assert t.column(schema.BLAST_PROB).to_pylist() == [0.0] * 18 and set(t.column(schema.PREDICTED).to_pylist()) == {0}
    with (report / "patients.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    counted = t.filter(pc.not_equal(t.column(schema.PREDICTED_CLASS), "platelet"))
    n_neutrophil = sum(1 for c in counted.column(schema.PREDICTED_CLASS).to_pylist() if c == "neutrophil")
    assert int(row["n_neutrophil"]) == n_neutrophil and "lymphocyte_pct" in row


def torch_zeros(size: int):
    import torch

    return torch.zeros(2, 3, size, size)
