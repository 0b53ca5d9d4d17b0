"""Integrity of ingest outputs without Ray (issue 10, items 1-7): one version per image, one geometry,
duplicate content, symlinks, huge images, one writer, manifest and labels rows."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import tifffile
from PIL import Image

from pipeline import schema
from pipeline.config import CropSettings, IngestConfig
from pipeline.ingest import TASK_COLUMN, Attempts, IngestStage, process_task
from pipeline.io import ImageReadError, check_decode_budget, decode_image
from pipeline.sources import ImageTask, SourceError, discover_images
from pipeline.store import (
    ReplacedVersionsError,
    compact,
    duplicate_content,
    note_duplicate_content,
    open_output,
    read_table,
    shard_files,
)
from pipeline.synth import choose_patient_style, make_image_rng, make_smear

REPO = Path(__file__).resolve().parents[1]
SETTINGS = CropSettings()


@pytest.fixture(scope="module")
def smear() -> np.ndarray:
    image, _ = make_smear(make_image_rng(4, 1, 0), (400, 300), 0.5, choose_patient_style(4, 1))
    return image


def _run_stage(out: Path, src: Path, names: list[str], run_id: str) -> dict:
    state = open_output(out)
    tasks = [ImageTask(path=str(src / n), image=n, patient_id="P", sample_id="S") for n in names]
    stage = IngestStage(SETTINGS.to_json(), str(out), run_id, state.known, state.versions)
    return stage({TASK_COLUMN: np.array([t.to_json() for t in tasks])})


def _cells_per_image(out: Path) -> dict[str, set]:
    cells = read_table(out, columns=[schema.IMAGE, schema.SOURCE_SHA256])
    by: dict[str, set] = {}
    for image, sha in zip(cells.column(0).to_pylist(), cells.column(1).to_pylist()):
        by.setdefault(image, set()).add(sha)
    return by


# --- 1. one version per image path -------------------------------------------------------------------


def test_changed_image_replaces_its_old_version_and_quarantine_row(smear, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    Image.fromarray(smear).save(src / "a.png", compress_level=1)
    (src / "b.png").write_bytes(b"")  # half-copied: quarantined in the first run
    first = _run_stage(out, src, ["a.png", "b.png"], "run1")
    n_cells = dict(zip(first[schema.IMAGE], first[schema.N_CELLS]))["a.png"]
    assert n_cells > 0
    Image.fromarray(smear).save(src / "a.png", compress_level=9)  # same pixels, other bytes
    Image.fromarray(smear).save(src / "b.png")  # the copy finished
    second = _run_stage(out, src, ["a.png", "b.png"], "run2")
    assert list(second[schema.STATUS]) == ["ingested", "ingested"]
    assert list(second["replaced"]) == [True, True]
    new_sha = {
        r: s
        for r, s in zip(
            read_table(out, schema.IMAGES_DIR).column(schema.IMAGE).to_pylist(),
            read_table(out, schema.IMAGES_DIR).column(schema.SOURCE_SHA256).to_pylist(),
        )
    }
    # the current view holds each image once, under its new hash, before any clean-up
    ledger = read_table(out, schema.IMAGES_DIR)
    assert sorted(ledger.column(schema.IMAGE).to_pylist()) == ["a.png", "b.png"]
    assert _cells_per_image(out) == {"a.png": {new_sha["a.png"]}, "b.png": {new_sha["b.png"]}}
    assert read_table(out).num_rows == 2 * n_cells
    assert read_table(out, schema.QUARANTINE_DIR).num_rows == 0  # b.png is no longer "not counted"
    with pytest.raises(ReplacedVersionsError, match="run `allray ingest`"):
        shard_files(out)  # whole files still hold the old version: refused, not read twice
    assert compact(out) == 2
    files = shard_files(out)
    import pyarrow.parquet as pq

    assert sum(pq.read_table(f).num_rows for f in files) == 2 * n_cells
    # a third run with the same bytes skips both, and replaces nothing
    third = _run_stage(out, src, ["a.png", "b.png"], "run3")
    assert list(third[schema.STATUS]) == ["skipped", "skipped"] and not any(third["replaced"])


def test_a_crash_during_clean_up_leaves_the_same_current_view(smear, tmp_path, monkeypatch):
    from pipeline import store

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(smear).save(src / name, compress_level=1)
    _run_stage(out, src, ["a.png", "b.png"], "run1")
    Image.fromarray(smear).save(src / "a.png", compress_level=9)
    _run_stage(out, src, ["a.png"], "run2")
    before = sorted(read_table(out, columns=[schema.IMAGE, schema.SOURCE_SHA256, schema.CELL_ID]).to_pylist(),
                    key=str)  # fmt: skip
    calls = []

    def crash_after_first(fs, path, table):
        if calls:
            raise OSError("killed")
        calls.append(path)
        real(fs, path, table)

    real = store.write_table_atomic
    monkeypatch.setattr(store, "write_table_atomic", crash_after_first)
    with pytest.raises(OSError, match="killed"):
        compact(out)  # the old shard's cells were rewritten, its ledger not
    after = sorted(read_table(out, columns=[schema.IMAGE, schema.SOURCE_SHA256, schema.CELL_ID]).to_pylist(), key=str)
    assert after == before
    monkeypatch.setattr(store, "write_table_atomic", real)
    compact(out)
    assert sorted(read_table(out, columns=[schema.IMAGE, schema.SOURCE_SHA256, schema.CELL_ID]).to_pylist(),
                  key=str) == before  # fmt: skip
    assert len(shard_files(out)) == 2


# --- 2. one geometry per output ------------------------------------------------------------------


def test_other_crop_settings_fail_before_ray_starts(smear, tmp_path, monkeypatch):
    import jobs.ingest as job
    from pipeline.geometry import GeometryMismatchError, check_geometry, write_geometry

    out = tmp_path / "out"
    write_geometry(out, SETTINGS)
    assert check_geometry(out, SETTINGS) == "same"
    (tmp_path / "src").mkdir()
    Image.fromarray(smear).save(tmp_path / "src" / "a.png")

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(job, "start_ray", no_ray)
    config = IngestConfig(src=str(tmp_path / "src"), out=str(out), crops=CropSettings(crop_um=30.0))
    with pytest.raises(GeometryMismatchError, match=r"--crop-um 24\.0 \(this run: 30\.0\).*--rebuild"):
        job.run_ingest(config, quiet=True)
    # --workers / --images-per-shard are not geometry: same settings pass the check (and reach Ray)
    with pytest.raises(AssertionError, match="Ray was started"):
        job.run_ingest(IngestConfig(src=str(tmp_path / "src"), out=str(out), workers=1, images_per_shard=3), quiet=True)
    detect = json.loads(SETTINGS.to_json())["detect"]
    key = sorted(detect)[0]
    with pytest.raises(GeometryMismatchError, match=f"detection setting detect.{key}"):
        from pipeline.detect import DetectConfig

        value = detect[key]
        other = (not value) if isinstance(value, bool) else value * 2 if value else 1
        check_geometry(out, CropSettings(detect=DetectConfig(**{**detect, key: other})))
    assert check_geometry(out, CropSettings(crop_um=30.0), rebuild=True) == "rebuild"


# --- 3. the same content under two names ---------------------------------------------------------


def test_same_content_under_two_names_is_noted_and_kept_on_one_side(smear, tmp_path):
    from pipeline.splits import kfold_groups, split_cells

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    Image.fromarray(smear).save(src / "a.png")
    (src / "copy.png").write_bytes((src / "a.png").read_bytes())
    _run_stage(out, src, ["a.png", "copy.png"], "run1")
    groups = duplicate_content(out)
    assert groups == [["a.png", "copy.png"]]
    note_duplicate_content(out, groups)
    notes = dict(zip(*(read_table(out, schema.IMAGES_DIR).column(c).to_pylist() for c in (schema.IMAGE, schema.NOTE))))
    assert notes == {"a.png": "same content as copy.png", "copy.png": "same content as a.png"}

    # 10 patients; patient P0's image was also filed under P9: the copies must share a side
    patients = [f"P{i}" for i in range(10) for _ in range(6)]
    images = [f"{p}/img{i % 2}.png" for i, p in enumerate(patients)]
    contents = [f"sha-{im}" if not im.startswith("P9") else f"sha-P0{im[2:]}" for im in images]
    labels = [i % 2 for i in range(60)]
    leaks = 0
    for seed in range(8):
        split = split_cells(patients, images, labels, "patient", 0.3, seed, contents)
        sides = [{contents[i] for i in split.train_idx}, {contents[i] for i in split.val_idx}]
        assert not sides[0] & sides[1]
        assert "merged" in split.note
        without = split_cells(patients, images, labels, "patient", 0.3, seed)
        leaks += bool({contents[i] for i in without.train_idx} & {contents[i] for i in without.val_idx})
    assert leaks  # without the content hashes, some seeds put P0's copy on the other side
    from pipeline.splits import cell_groups

    groups, _, _ = cell_groups(patients, images, "image", contents)
    for train, val in kfold_groups(groups, labels, 3, seed=1):
        assert not {contents[i] for i in train} & {contents[i] for i in val}


# --- 4. symlinks ----------------------------------------------------------------------------------------


def test_links_loops_and_outside_files_are_not_followed(smear, tmp_path):
    src = tmp_path / "src"
    (src / "P1" / "S1").mkdir(parents=True)
    Image.fromarray(smear).save(src / "P1" / "S1" / "a.png")
    Image.fromarray(smear).save(src / "P1" / "S1" / "b.png")
    os.symlink(".", src / "P1" / "loop")  # a folder link: a loop
    secret = tmp_path / "secret.env"
    secret.write_text("DB_PASSWORD=hunter2\n")
    os.symlink(secret, src / "P1" / "S1" / "secret.png")  # a file outside SRC
    os.symlink(tmp_path / "nowhere.png", src / "P1" / "S1" / "broken.png")
    d = discover_images(src)
    assert sorted(t.image for t in d.tasks) == ["P1/S1/a.png", "P1/S1/b.png"]
    reasons = {x["path"]: x["reason"] for x in d.links_not_followed}
    assert set(reasons) == {"P1/loop", "P1/S1/secret.png", "P1/S1/broken.png"}
    assert "folder" in reasons["P1/loop"] and "outside the source folder" in reasons["P1/S1/secret.png"]
    assert "broken" in reasons["P1/S1/broken.png"]
    # --follow-links: the outside file is read, the loop is entered once at most (each real image once)
    followed = discover_images(src, follow_links=True)
    images = sorted(t.image for t in followed.tasks)
    assert images == ["P1/S1/a.png", "P1/S1/b.png", "P1/S1/secret.png"]
    assert [x["path"] for x in followed.links_not_followed] == ["P1/S1/broken.png", "P1/loop"]


def test_a_text_file_is_described_never_quoted():
    with pytest.raises(ImageReadError) as err:
        decode_image(b"DB_PASSWORD=hunter2\nAPI_KEY=abc\n")
    assert "text file" in str(err.value) and "hunter2" not in str(err.value) and "DB_PASS" not in str(err.value)
    with pytest.raises(ImageReadError) as err:
        decode_image(b"%PDF-1.7 secret stuff" + bytes(100))
    assert "PDF" in str(err.value) and "secret" not in str(err.value)


# --- 5. huge images ---------------------------------------------------------------------------------------


def huge_tiff(path: Path, side: int = 30000, tile: int = 1024) -> Path:
    """A valid side x side 8-bit deflate TIFF written from pre-compressed tiles (no big array built)."""
    encoded = zlib.compress(bytes(tile * tile), 9)
    n = (-(-side // tile)) ** 2
    tifffile.imwrite(path, (encoded for _ in range(n)), shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib")  # fmt: skip
    return path


def test_huge_tiff_is_refused_from_its_header(tmp_path):
    path = huge_tiff(tmp_path / "huge.tif")
    assert path.stat().st_size < 1_000_000
    started = time.perf_counter()
    task = ImageTask(path=str(path), image="huge.tif", patient_id=None, sample_id="huge")
    outcome, sha = process_task(task, SETTINGS, SETTINGS.to_json())
    assert time.perf_counter() - started < 5  # decoding it takes ~12 s and 3.6 GB
    assert sha and "30000x30000 px (900 MP" in outcome.reason and "800 MP limit" in outcome.reason
    assert not outcome.cells
    # the memory budget: a 16-bit 3000x3000 needs ~0.34 GiB, over a 0.25 GiB budget
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((3000, 3000), np.uint16), compression="zlib")
    with pytest.raises(ImageReadError, match=r"3000x3000 px .*16-bit.*budget is 0\.2 GiB"):
        check_decode_budget(buf.getvalue(), memory_bytes=2**28)
    check_decode_budget(buf.getvalue(), memory_bytes=2**30)  # fits: no error


def test_an_image_whose_worker_died_twice_is_quarantined(smear, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    Image.fromarray(smear).save(src / "a.png")
    Image.fromarray(smear).save(src / "b.png", compress_level=9)
    open_output(out)
    from pipeline.io import sha256_hex

    key = Attempts.key("a.png", sha256_hex((src / "a.png").read_bytes()))
    (out / schema.ATTEMPTS_DIR).mkdir()
    for i in range(2):  # what two killed workers leave
        (out / schema.ATTEMPTS_DIR / f"{key}.dead{i}").write_bytes(b"")
    statuses = _run_stage(out, src, ["a.png", "b.png"], "run1")
    by = dict(zip(statuses[schema.IMAGE], statuses[schema.STATUS]))
    assert by == {"a.png": "quarantined", "b.png": "ingested"}
    assert "died 2 times" in dict(zip(statuses[schema.IMAGE], statuses[schema.REASON]))["a.png"]
    assert list((out / schema.ATTEMPTS_DIR).iterdir()) == []  # committed: markers gone


# --- 6. one writer per output ---------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    from pipeline.lock import (
        LOCK_FILE,
        OutputLockedError,
        claim_empty_output,
        lock_output,
    )

    out = tmp_path / "out"
    code = (
        "import sys; from pipeline.lock import lock_output\n"
        "try:\n    lock_output(sys.argv[1], 'ingest')\nexcept ValueError as e:\n    print(e); sys.exit(3)\n"
    )
    with lock_output(str(out), "ingest"):
        other = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True)
        assert other.returncode == 3
        line = other.stdout.strip()
        assert "\n" not in line and f"pid {os.getpid()}" in line and "started" in line and "host" in line
        # and open_output never cleans up under a live writer
        cleanup = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pipeline.store import open_output; open_output(sys.argv[1])",
                str(out),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert cleanup.returncode == 1 and "OutputLockedError" in cleanup.stderr
    # a lock file left by a dead process (no kernel lock held) is taken over
    (out / LOCK_FILE).write_text(json.dumps({"host": "here", "pid": 999999, "started_utc": "yesterday"}))
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, check=True)
    report = tmp_path / "report"
    lock = claim_empty_output(str(report), "infer")
    with pytest.raises(OutputLockedError):
        lock_output(str(report), "infer")  # also refused within one process (a second run_infer)
    lock.release()
    (report / "x.csv").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        claim_empty_output(str(report), "infer")


def test_a_writer_refused_while_the_holder_writes_its_record_still_names_the_holder(tmp_path):
    """The holder takes the kernel lock, then writes its record: a second writer coming in between
    found the file empty and named "allray ? on host ?" (seen once in CI's two-ingests test)."""
    import fcntl
    import threading

    from pipeline.lock import LOCK_FILE, OutputLockedError, lock_output

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, still empty
    record = {"host": "there", "pid": 4242, "purpose": "ingest", "started_utc": "now"}
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, json.dumps(record).encode(), 0))
    writer.start()
    try:
        with pytest.raises(OutputLockedError, match="allray ingest on host there, pid 4242"):
            lock_output(str(out), "ingest")
    finally:
        writer.join()
        os.close(fd)


# --- 7. manifest and labels rows ----------------------------------------------------------------------


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), "white").save(path)


def test_unmatched_and_invalid_rows_fail_with_line_numbers(tmp_path):
    _png(tmp_path / "P000" / "S0" / "img000.png")
    _png(tmp_path / "P000" / "S0" / "img001.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,patient_id,sample_id,label\nP000\\S0\\img000.png,PX,SX,\n"
                        "P000/S0/img009.png,PY,SY,\nP000/S0/img001.png,PZ,SZ,2\n")  # fmt: skip
    with pytest.raises(SourceError) as err:
        discover_images(tmp_path, manifest=manifest)
    text = str(err.value)
    assert f"{manifest}:3: no image P000/S0/img009.png" in text and f"{manifest}:4: label '2'" in text
    assert ":2:" not in text and "--allow-unmatched" in text
    d = discover_images(tmp_path, manifest=manifest, allow_unmatched=True)
    by = {t.image: t.patient_id for t in d.tasks}
    assert by["P000/S0/img000.png"] == "PX"  # the Windows path matched
    assert d.row_counts == {"manifest_rows_matched": 1, "manifest_rows_unmatched": 2}

    labels = tmp_path / "cells.csv"
    labels.write_text("image,x,y,label\nP000/S0/img000.png,nan,2,1\nP000/S0/img000.png,1,inf,0\n"
                      "P000/S0/img000.png,1,2,0.7\nP000/S0/img001.png,5,5,1\nP000/S0/gone.png,1,1,0\n")  # fmt: skip
    with pytest.raises(SourceError) as err:
        discover_images(tmp_path, labels=labels)
    text = str(err.value)
    for line, what in ((2, "x 'nan'"), (3, "y 'inf'"), (4, "label '0.7'"), (6, "no image P000/S0/gone.png")):
        assert f"{labels}:{line}: {what}" in text
    d = discover_images(tmp_path, labels=labels, allow_unmatched=True)
    # row 5 names an existing image: matched, whether or not a cell is detected there
    assert d.row_counts == {"labels_rows_matched": 1, "labels_rows_unmatched": 4}


def test_latin1_csv_is_one_line_naming_the_file(tmp_path):
    _png(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("image,patient_id,sample_id\na.png,José,S\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"m\.csv: not UTF-8 text \(byte 0xe9 on line 2") as err:
        discover_images(tmp_path, manifest=manifest)
    assert "\n" not in str(err.value)


def test_cells_are_counted_once_per_current_version_in_read_table(smear, tmp_path):
    """Uncommitted cells files (a live writer's, or a killed run's) are never read as cells."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    Image.fromarray(smear).save(src / "a.png")
    _run_stage(out, src, ["a.png"], "run1")
    n = read_table(out).num_rows
    ledger = next((out / schema.IMAGES_DIR).glob("*.parquet"))
    ledger.rename(tmp_path / "held.parquet")  # the shard's commit has not happened yet
    assert read_table(out).num_rows == 0 and shard_files(out) == []
    (tmp_path / "held.parquet").rename(ledger)
    assert read_table(out).num_rows == n
    assert pc.sum(pc.is_valid(read_table(out).column(schema.CROP))).as_py() == n


def test_a_lease_on_object_storage_refuses_a_second_writer(s3_bucket):
    from pipeline.locations import join_uri
    from pipeline.lock import OutputLockedError, claim_empty_output, lock_output

    out = join_uri(s3_bucket, "locked-cells")
    lock = lock_output(out, "ingest")
    with pytest.raises(OutputLockedError, match=r"allray ingest on host .*pid \d+.*delete \.allray-lock"):
        lock_output(out, "ingest")
    lock.release()
    lock_output(out, "ingest").release()  # released: free again
    report = join_uri(s3_bucket, "report")
    with claim_empty_output(report, "infer"):
        with pytest.raises(OutputLockedError):
            claim_empty_output(report, "infer")


def test_infer_manifest_rows_that_match_nothing_fail_unless_allowed(tmp_path):
    """`allray infer --manifest` checks rows as ingest does, and `--allow-unmatched` counts them instead."""
    from jobs.infer_inputs import SlidesSource
    from pipeline.config import CropSettings, InferConfig
    from pipeline.io import encode_png
    from pipeline.sources import SourceError

    slides = tmp_path / "slides"
    (slides / "P1" / "S1").mkdir(parents=True)
    (slides / "P1" / "S1" / "a.png").write_bytes(encode_png(np.full((40, 40, 3), 200, np.uint8)))
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,patient_id,sample_id\nP1/S1/a.png,P9,S9\nP1/S1/missing.png,P9,S9\n")
    strict = InferConfig(slides=str(slides), manifest=str(manifest))
    with pytest.raises(SourceError, match=r"m\.csv:3: no image P1/S1/missing\.png"):
        SlidesSource.open(str(slides), strict, CropSettings())
    lenient = InferConfig(slides=str(slides), manifest=str(manifest), allow_unmatched=True)
    source = SlidesSource.open(str(slides), lenient, CropSettings())
    assert [(t.image, t.patient_id) for t in source.tasks] == [("P1/S1/a.png", "P9")]
    assert source.facts["manifest_rows_matched"] == 1 and source.facts["manifest_rows_unmatched"] == 1
