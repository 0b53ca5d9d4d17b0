"""`allray synth` and `allray ingest`: the commands that make slides and cut them into crops.

Registered on the `allray` group in jobs/cli.py; the work itself is imported inside each command.
"""

from __future__ import annotations

import click

from jobs.cli_common import (
    SOURCE_FORMATS,
    echo_redacted,
    friendly_errors,
    parse_size,
    single_cell_scale_line,
    single_cell_scale_option,
)


@click.command()
@click.argument("out", type=click.Path(file_okay=False), default="synthetic")
@click.option("--patients", default=8, show_default=True, help="Number of patients.")
@click.option("--images-per-patient", default=6, show_default=True, help="Smear images per patient.")
@click.option("--samples-per-patient", default=1, show_default=True, help="Samples (folders) per patient.")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same bytes.")
@click.option("--size", default="800x600", show_default=True, help="Image size WIDTHxHEIGHT in pixels.")
@click.option(
    "--profile",
    default="default",
    show_default=True,
    type=click.Choice(["default", "all"]),
    help="all: ALL-like patients (crowded fields, packed blast clusters, smudge cells, JPEG).",
)
@click.option(
    "--red-cell-tint",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Red cells' colour for every patient: 0 pink (Giemsa, as in BCCD; the default), 1 lavender "
    "(May-Gruenwald Giemsa, as in PBC's analyser pictures), or between.",
)
@click.option("--verbose", is_flag=True, help="Show tracebacks.")
@friendly_errors
def synth(out, patients, images_per_patient, samples_per_patient, seed, size, profile, red_cell_tint, verbose) -> None:
    """Write a synthetic cohort of smears with ground truth to OUT (slides/ and truth/)."""
    from pathlib import Path

    from pipeline.synth_cohort import write_cohort

    summary = write_cohort(
        Path(out),
        patients=patients,
        images_per_patient=images_per_patient,
        seed=seed,
        size=parse_size(size),
        samples_per_patient=samples_per_patient,
        profile=profile,
        red_cell_tint=red_cell_tint,
    )
    echo_redacted(
        f"synth: {summary.n_patients} patients, {summary.n_images} images, {summary.n_wbc} white cells "
        f"({summary.n_blast} blasts) -> {Path(out) / 'slides'}, truth in {Path(out) / 'truth'}"
    )


@click.command()
@click.argument("src", type=click.Path(), default="slides")
@click.option("--out", default="cells", show_default=True, help="Output folder (local path or s3://, gs:// URI).")
@click.option(
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    type=click.Choice(SOURCE_FORMATS),
    help="Source layout.",
)
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV image,patient_id,sample_id[,label].")
@click.option("--labels", type=click.Path(dir_okay=False), help="CSV image,x,y[,r],label of known cells.")
@click.option("--crop-um", default=24.0, show_default=True, help="Crop window side in micrometres.")
@click.option("--crop-size", default=128, show_default=True, help="Stored crop side in pixels.")
@click.option("--um-per-pixel", type=float, help="Force the image scale (default: measured from red cells).")
@single_cell_scale_option
@click.option("--images-per-shard", default=16, show_default=True, help="Images per task and Parquet shard.")
@click.option("--workers", type=int, help="Parallel ingest workers (default: one per cluster CPU).")
@click.option("--rebuild", is_flag=True, help="Delete what OUT holds and re-cut every image (to change its settings).")
@click.option("--follow-links", is_flag=True, help="Follow symlinks to folders and to files outside SRC.")
@click.option("--max-megapixels", default=800.0, show_default=True, help="Refuse larger images from their header.")
@click.option(
    "--worker-memory-gb",
    type=float,
    help="Memory per ingest worker, declared to Ray (default: 4, or what the cluster holds per worker).",
)
@click.option(
    "--allow-unmatched",
    is_flag=True,
    help="Skip (and count) manifest/labels rows that match no image or hold invalid values, instead of failing.",
)
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--verbose", is_flag=True, help="Show Ray's logs and progress bars, and tracebacks.")
@friendly_errors
def ingest(
    src,
    out,
    fmt,
    manifest,
    labels,
    crop_um,
    crop_size,
    um_per_pixel,
    single_cell_scale,
    images_per_shard,
    workers,
    rebuild,
    follow_links,
    max_megapixels,
    worker_memory_gb,
    allow_unmatched,
    address,
    verbose,
) -> None:
    """Find the white cells of every image under SRC and write crops to OUT as Parquet shards.

    SRC, OUT and the CSVs may be local paths or URIs (s3://, gs://, file://)."""
    from jobs.ingest import run_ingest
    from pipeline.config import CropSettings, IngestConfig

    config = IngestConfig(
        src=src,
        out=out,
        format=fmt,
        manifest=manifest,
        labels=labels,
        crops=CropSettings(crop_um=crop_um, crop_size=crop_size, um_per_pixel=um_per_pixel),
        images_per_shard=images_per_shard,
        workers=workers,
        rebuild=rebuild,
        follow_links=follow_links,
        max_megapixels=max_megapixels,
        worker_memory_gb=worker_memory_gb,
        allow_unmatched=allow_unmatched,
        single_cell_scale=single_cell_scale,
    )
    s = run_ingest(config, address=address, verbose=verbose)
    echo_redacted(
        f"ingest: {s['images_seen']} images seen: {s['images_ingested']} ingested, {s['images_skipped']} skipped "
        f"(already in {out}), {s['images_quarantined']} quarantined; {s['cells_written']} cells written "
        f"({s['cells_labelled']} labelled) in {s['seconds']:.1f} s ({s['images_per_s'] or 0:.1f} images/s; "
        f"Ray start-up {s['ray_startup_seconds']:.1f} s)"
    )
    if s["single_cell_scale"]:
        echo_redacted(single_cell_scale_line(s["single_cell_scale"]))
    if s["images_replaced"]:
        click.echo(f"  {s['images_replaced']} image(s) changed since the last run: their new version replaced the old")
    if s["links_not_followed"]:
        click.echo(f"  {s['links_not_followed']} link(s) not followed (see summary.json)")
    if s["images_with_same_content"]:
        click.echo(
            f"  {s['images_with_same_content']} images share their content with another (same bytes under "
            "two names: see summary.json; train keeps such copies on one side)"
        )
    if s["rows_not_used"]:
        click.echo(
            f"  {len(s['rows_not_used'])} manifest/labels row(s) not used (--allow-unmatched), e.g. "
            f"{s['rows_not_used'][0]}"
        )
    for q in s["quarantined"][:10]:
        echo_redacted(f"  quarantined {q['image']}: {q['reason']}")
    if len(s["quarantined"]) > 10:
        echo_redacted(f"  ... and {len(s['quarantined']) - 10} more (see {out}/quarantine/)")
    echo_redacted(f"cells: {out}/cells/   quarantine: {out}/quarantine/   summary: {out}/summary.json")
