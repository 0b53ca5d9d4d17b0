"""Shared fixtures: paths to the real BCCD images, one Ray instance per test session, a local S3."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"
S3_BUCKET = "allray-test"

# Tests never reach a real cloud: dummy AWS credentials, no instance-metadata lookups, no profile.
# Set at import, before any Ray instance starts, so that Ray's workers (which inherit this
# environment) read the local S3 server with the same credentials as the test process.
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})  # fmt: skip
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    if not (BCCD / "val.txt").exists():
        pytest.skip(f"real BCCD images not found at {BCCD} (they sit beside the checkout in shared/data/bccd)")
    return BCCD


@pytest.fixture(scope="session")
def ray_session():
    """One local 2-CPU Ray for every Ray test of the session (start-up costs seconds)."""
    ray = pytest.importorskip("ray")
    from jobs.runtime import start_ray

    start_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_bucket() -> str:
    """An empty bucket on a local S3 server (moto, listening on 127.0.0.1 only), as a URI whose
    options name the server: s3://allray-test?endpoint_override=127.0.0.1:PORT&scheme=http."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests")
    import pyarrow.fs as pafs

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{S3_BUCKET}?{options}&allow_bucket_creation=true")
    fs.create_dir(S3_BUCKET)
    yield f"s3://{S3_BUCKET}?{options}"
    server.stop()


def write_truth_cells(
    out: Path, patients: int = 6, images_per_patient: int = 4, seed: int = 5, size=(400, 300), per_patient_shards=False,
    shard_name=lambda n: f"truth-{n}",
) -> Path:  # fmt: skip
    """An ingest-style cell table cut at the synthetic truth centres (no detector involved), in one
    shard, or one per patient (as ingest writes a few images a shard); `shard_name(n)` names the
    n-th shard (ingest names them by run and at random).

    Lets training and inference tests run on known labelled crops in a second or two.
    """
    import pyarrow as pa

    from pipeline import schema
    from pipeline.config import CropSettings
    from pipeline.crops import cut_crop, window_pixels
    from pipeline.io import encode_png
    from pipeline.store import open_output, write_shard
    from pipeline.synth import RBC_DIAMETER_UM, choose_blast_fraction, choose_patient_style, make_image_rng, make_smear

    settings = CropSettings()
    open_output(out)
    cells, ledger = [], []
    for p in range(patients):
        style = choose_patient_style(seed, p)
        upp = RBC_DIAMETER_UM / style.rbc_diameter_px
        for i in range(images_per_patient):
            image, truth = make_smear(make_image_rng(seed, p, i), size, choose_blast_fraction(seed, p), style)
            name = f"P{p:03d}/S0/img{i:03d}.png"
            sha = f"sha-{seed}-{p}-{i}"
            for k, c in enumerate(truth):
                crop = cut_crop(image, c.x, c.y, window_pixels(settings.crop_um, upp), settings.crop_size)
                row = {f.name: None for f in schema.CELL_SCHEMA}
                row.update(
                    {
                        schema.PATIENT_ID: f"P{p:03d}",
                        schema.SAMPLE_ID: "S0",
                        schema.IMAGE: name,
                        schema.CELL_ID: k,
                        schema.X: c.x,
                        schema.Y: c.y,
                        schema.KIND: schema.KIND_WBC,
                        schema.CROP: encode_png(crop),
                        schema.LABEL: c.label,
                        schema.SOURCE_SHA256: sha,
                        schema.INGEST_SETTINGS: settings.to_json(),
                        schema.AT_BORDER: False,
                    }
                )
                cells.append(row)
            ledger.append(
                {f.name: None for f in schema.IMAGE_SCHEMA}
                | {
                    schema.IMAGE: name,
                    schema.PATIENT_ID: f"P{p:03d}",
                    schema.SAMPLE_ID: "S0",
                    schema.STATUS: schema.STATUS_INGESTED,
                    schema.SOURCE_SHA256: sha,
                    schema.N_CELLS: len(truth),
                }
            )
    groups = sorted({r[schema.PATIENT_ID] for r in ledger}) if per_patient_shards else [None]
    for n, patient in enumerate(groups):

        def mine(rows, patient=patient):
            return [r for r in rows if patient is None or r[schema.PATIENT_ID] == patient]

        write_shard(
            out,
            shard_name(n),
            pa.Table.from_pylist(mine(cells), schema=schema.CELL_SCHEMA),
            schema.QUARANTINE_SCHEMA.empty_table(),
            pa.Table.from_pylist(mine(ledger), schema=schema.IMAGE_SCHEMA),
        )
    return out
