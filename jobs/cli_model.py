"""`allray train` and `allray infer`: the commands that fit classifiers and label new slides with them.

Registered on the `allray` group in jobs/cli.py; the work itself is imported inside each command.
"""

from __future__ import annotations

import click

from jobs.cli_common import (
    SOURCE_FORMATS,
    echo_redacted,
    friendly_errors,
    single_cell_scale_line,
    single_cell_scale_option,
)


@click.command()
@click.argument("cells", nargs=-1, type=click.Path())
@click.option(
    "--arch",
    default="all",
    show_default=True,
    help="lenet | vgg | resnet | all (the study's three in turn), or a name such as vgg11_bn, resnet50.",
)
@click.option("--out", default="", help="Run folder, a local path or URI (default: a new runs/<date-time>).")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option(
    "--lr", type=float, default=None,
    help="Adam learning rate (default: 1e-3, the study's; 3e-3 for the LeNet variant with a K-class head).",
)  # fmt: skip
@click.option("--workers", default=1, show_default=True, help="Ray Train workers (DDP).")
@click.option("--gpu", is_flag=True, help="One GPU per worker, mixed precision.")
@click.option(
    "--cpus-per-worker", type=float,
    help="CPUs Ray reserves per worker, which runs round(C) torch threads (default: fit the cluster, at most 1, "
    "and as many threads as the worker's share of its node's cores).",
)  # fmt: skip
@click.option("--split", default="patient", show_default=True, type=click.Choice(["patient", "image", "random"]))
@click.option("--val-fraction", default=0.25, show_default=True)
@click.option("--folds", default=1, show_default=True, help="K-fold cross-validation when > 1.")
@click.option("--seed", default=0, show_default=True)
@click.option("--weights", default="none", show_default=True, help="none | imagenet | PATH to a state dict.")
@click.option("--image-size", type=int, help="Model input side (default: the architecture's).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option(
    "--cache",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "yes", "no"]),
    help="Keep the crops in Ray's object store across epochs (auto: when they fit in a quarter of it).",
)
@click.option(
    "--classes",
    default="auto",
    show_default=True,
    help="auto (the classes in the labels; blast vs other where labels are only 0/1) | binary | NAME,NAME,...",
)
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--verbose", is_flag=True, help="Show Ray's logs and tracebacks.")
@friendly_errors
def train(
    cells,
    arch,
    out,
    epochs,
    batch_size,
    lr,
    workers,
    gpu,
    cpus_per_worker,
    split,
    val_fraction,
    folds,
    seed,
    weights,
    image_size,
    resume,
    cache,
    classes,
    address,
    verbose,
) -> None:
    """Train lymphoblast classifiers on the crops in CELLS (ingest outputs, local paths or URIs; default ./cells)."""
    from jobs.train import comparison_table, run_train
    from pipeline.config import ARCH_ALL, TrainConfig
    from pipeline.models import resolve_name

    if arch != ARCH_ALL:
        resolve_name(arch)  # unknown names fail here, before Ray starts
    config = TrainConfig(
        cells=tuple(cells) or ("cells",),
        out=out,
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        workers=workers,
        gpu=gpu,
        cpus_per_worker=cpus_per_worker,
        split=split,
        val_fraction=val_fraction,
        folds=folds,
        seed=seed,
        weights=weights,
        image_size=image_size,
        resume=resume,
        cache=cache,
        classes=classes,
    )
    summary = run_train(config, address=address, verbose=verbose)
    echo_redacted(comparison_table(summary))
    run = summary["run_dir"]
    echo_redacted(f"run: {run}  (metrics.jsonl, summary.json, curves.png, <arch>/best/)")


@click.command()
@click.argument("slides", type=click.Path(), default="slides")
@click.option(
    "--model", help="A run folder (its best architecture) or a checkpoint folder (default: newest run in ./runs)."
)
@click.option("--out", help="Report folder, a local path or URI (default: a new reports/<date-time>).")
@click.option("--gpu", is_flag=True, help="One GPU per classifier worker.")
@click.option(
    "--workers",
    type=int,
    help="Classifier workers (default: one per GPU with --gpu; on CPUs, one "
    "per free core on an ingest output, one per 8 cores on slides).",
)
@click.option("--batch-size", default=64, show_default=True, help="Cells per classifier batch.")
@click.option(
    "--threshold", default=0.5, show_default=True, help="Blast probability at which a cell is called a blast."
)
@click.option("--blast-alert", default=20.0, show_default=True, help="Flag patients at or above this blast percentage.")
@click.option("--min-cells", default=50, show_default=True, help="Fewer cells than this: flag too_few_cells.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV image,patient_id,sample_id.")
@click.option(
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    type=click.Choice(SOURCE_FORMATS),
    help="Slides layout.",
)
@click.option("--follow-links", is_flag=True, help="Enter linked folders and read links to files outside SLIDES.")
@click.option(
    "--allow-unmatched", is_flag=True, help="Skip (and count) manifest rows that name no image or hold bad values."
)
@click.option(
    "--um-per-pixel",
    type=float,
    help="Force the slides' scale (default: measured from their red cells, whatever the model was trained at).",
)
@single_cell_scale_option
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--verbose", is_flag=True, help="Show Ray's logs and tracebacks.")
@friendly_errors
def infer(
    slides,
    model,
    out,
    gpu,
    workers,
    batch_size,
    threshold,
    blast_alert,
    min_cells,
    manifest,
    fmt,
    follow_links,
    allow_unmatched,
    um_per_pixel,
    single_cell_scale,
    address,
    verbose,
) -> None:
    """Label the white cells of SLIDES (folders, manifest, or an ingest output) and report blasts per patient.

    SLIDES, --model and --out may be local paths or URIs (s3://, gs://, file://)."""
    from jobs.infer import run_infer
    from pipeline.config import InferConfig

    config = InferConfig(
        slides=slides,
        model=model,
        out=out,
        gpu=gpu,
        workers=workers,
        batch_size=batch_size,
        threshold=threshold,
        blast_alert=blast_alert,
        min_cells=min_cells,
        manifest=manifest,
        format=fmt,
        follow_links=follow_links,
        allow_unmatched=allow_unmatched,
        um_per_pixel=um_per_pixel,
        single_cell_scale=single_cell_scale,
    )  # validated here, before Ray starts
    summary = run_infer(config, address=address, verbose=verbose)
    echo_redacted(summary["terminal"])
    if summary.get("single_cell_scale"):
        echo_redacted(single_cell_scale_line(summary["single_cell_scale"]))
    echo_redacted(f"report: {summary['report']}")
