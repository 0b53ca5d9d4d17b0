"""The `allray` command line: a click group whose commands map options onto config dataclasses.

Heavy modules (ray, torch, skimage) are imported inside commands so that `allray --help` answers
at once. Ordinary mistakes (a wrong path, no images, a cluster too small) end in one line on
stderr and exit code 1; a traceback is shown only with --verbose.
"""

from __future__ import annotations

import functools
import sys
import traceback

import click

from jobs.demo import DemoConfig
from pipeline.redact import redact_text

# pipeline.sources.FORMATS, spelled out here so that `allray --help` need not import the readers.
SOURCE_FORMATS = ("auto", "folders", "manifest", "allidb1", "allidb2", "classfolders")
SINGLE_CELL_SCALES = ("auto", "pooled", "each")  # pipeline.config.SINGLE_CELL_SCALES, likewise
DEMO_DEFAULTS = DemoConfig()  # the demo's sizes (jobs/demo.py), shown by `allray demo --help`

single_cell_scale_option = click.option(
    "--single-cell-scale",
    default="auto",
    show_default=True,
    type=click.Choice(SINGLE_CELL_SCALES),
    help="Single-cell images: one scale per image size, pooled from the red cells of a sample of the "
    "source's images (one analyser, one magnification), or each image's own; auto pools class-folder exports.",
)


def single_cell_scale_line(pool: dict) -> str:
    """One line on the single-cell scales a run used (PooledScale.to_dict())."""
    parts = []
    for size, v in pool["sizes"].items():
        if v["um_per_pixel"] is None:
            parts.append(f"{size} px: each image measured alone ({v['reason']})")
        else:
            parts.append(
                f"{size} px: {v['um_per_pixel']:.4f} um/px ({v['agreeing']} of {v['measured']} measures within 15%)"
            )
    return f"  single-cell scale, pooled over {pool['sampled']} sampled images: " + "; ".join(parts)


def _echo(text: str, err: bool = False) -> None:
    """click.echo with credentials redacted: a location may carry them (s3://KEY:SECRET@bucket/x)."""
    click.echo(redact_text(str(text)), err=err)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected WIDTHxHEIGHT, e.g. 800x600") from None


def friendly_errors(func):
    """Turn expected failures into one clear line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted: re-run the same command to continue where it stopped", err=True)
            sys.exit(130)
        except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
            if verbose:
                traceback.print_exc()
            # OSError: a missing file, a folder not allowed, storage refusing or out of reach (pyarrow's S3/GCS errors)
            expected = isinstance(err, (ValueError, OSError)) or type(err).__name__ in ("ClusterTooSmallError",)
            prefix = "error" if expected else f"internal error ({type(err).__name__})"
            hint = "" if expected or verbose else " (run with --verbose for the traceback)"
            _echo(f"{prefix}: {err}{hint}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="allray")
def cli() -> None:
    """allray: count lymphoblasts in blood smear images, at scale, on Ray.

    \b
    allray synth demo/            make a synthetic cohort with ground truth
    allray ingest demo/slides     find white cells, cut crops, write Parquet
    """


@cli.command()
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
@click.option("--verbose", is_flag=True, help="Show tracebacks.")
@friendly_errors
def synth(out, patients, images_per_patient, samples_per_patient, seed, size, profile, verbose) -> None:
    """Write a synthetic cohort of smears with ground truth to OUT (slides/ and truth/)."""
    from pathlib import Path

    from pipeline.synth import write_cohort

    summary = write_cohort(
        Path(out),
        patients=patients,
        images_per_patient=images_per_patient,
        seed=seed,
        size=_parse_size(size),
        samples_per_patient=samples_per_patient,
        profile=profile,
    )
    _echo(
        f"synth: {summary.n_patients} patients, {summary.n_images} images, {summary.n_wbc} white cells "
        f"({summary.n_blast} blasts) -> {Path(out) / 'slides'}, truth in {Path(out) / 'truth'}"
    )


@cli.command()
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
    _echo(
        f"ingest: {s['images_seen']} images seen: {s['images_ingested']} ingested, {s['images_skipped']} skipped "
        f"(already in {out}), {s['images_quarantined']} quarantined; {s['cells_written']} cells written "
        f"({s['cells_labelled']} labelled) in {s['seconds']:.1f} s ({s['images_per_s'] or 0:.1f} images/s; "
        f"Ray start-up {s['ray_startup_seconds']:.1f} s)"
    )
    if s["single_cell_scale"]:
        _echo(single_cell_scale_line(s["single_cell_scale"]))
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
        _echo(f"  quarantined {q['image']}: {q['reason']}")
    if len(s["quarantined"]) > 10:
        _echo(f"  ... and {len(s['quarantined']) - 10} more (see {out}/quarantine/)")
    _echo(f"cells: {out}/cells/   quarantine: {out}/quarantine/   summary: {out}/summary.json")


@cli.command()
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
@click.option("--cpus-per-worker", type=float, help="CPUs per worker (default: fit the cluster, at most 1).")
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
    _echo(comparison_table(summary))
    run = summary["run_dir"]
    _echo(f"run: {run}  (metrics.jsonl, summary.json, curves.png, <arch>/best/)")


@cli.command()
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
    _echo(summary["terminal"])
    if summary.get("single_cell_scale"):
        _echo(single_cell_scale_line(summary["single_cell_scale"]))
    _echo(f"report: {summary['report']}")


@cli.command()
@click.argument("report", type=click.Path(file_okay=False))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but 127.0.0.1 requires the token.",
)
@click.option("--port", default=8765, show_default=True)
@click.option("--reviewer", default="", help="Your name, filled in on every page (who corrected and signed).")
@click.option(
    "--unsure-below",
    default=0.8,
    show_default=True,
    help="Cells with a confidence below this wait in the unidentified bin, to be emptied before sign-off.",
)
@click.option(
    "--db",
    default="",
    help="Review database URL (default: sqlite:///REPORT/review.sqlite; postgresql://... for a shared one).",
)
@click.option("--token", default="", help="Access token off 127.0.0.1 (default: generated and printed).")
@click.option(
    "--export-labels",
    type=click.Path(dir_okay=False),
    help="Write the reviewed cells as an `ingest --labels` CSV and exit (no server).",
)
@click.option("--export-audit", type=click.Path(dir_okay=False), help="Write the audit trail as CSV and exit.")
@click.option("--verbose", is_flag=True, help="Show tracebacks.")
@friendly_errors
def review(report, host, port, reviewer, unsure_below, db, token, export_labels, export_audit, verbose) -> None:
    """Serve a review of REPORT (an `allray infer` output) in the browser: correct, sign off, audit."""
    from jobs.review import export, serve
    from pipeline.review.cells import ReviewConfig

    config = ReviewConfig(
        report=report, db=db, host=host, port=port, reviewer=reviewer, unsure_below=unsure_below, token=token
    )
    if export_labels or export_audit:
        for line in export(config, labels=export_labels, audit=export_audit):
            click.echo(line)
        return
    serve(config, echo=click.echo)


@cli.command()
@click.argument("out", type=click.Path(file_okay=False), default="demo-out")
@click.option("--train-patients", default=DEMO_DEFAULTS.train_patients, show_default=True)
@click.option("--train-images", default=DEMO_DEFAULTS.train_images, show_default=True, help="Images per patient.")
@click.option("--new-patients", default=DEMO_DEFAULTS.new_patients, show_default=True)
@click.option("--new-images", default=DEMO_DEFAULTS.new_images, show_default=True, help="Images per new patient.")
@click.option("--epochs", default=DEMO_DEFAULTS.epochs, show_default=True)
@click.option(
    "--image-size",
    default=DEMO_DEFAULTS.image_size,
    type=int,
    show_default=True,
    help="Model input side (crops are shrunk to it).",
)
@click.option("--arch", default=DEMO_DEFAULTS.arch, show_default=True)
@click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--verbose", is_flag=True, help="Show Ray's logs and tracebacks.")
@friendly_errors
def demo(
    out, train_patients, train_images, new_patients, new_images, epochs, image_size, arch, address, verbose
) -> None:
    """The whole pipeline on synthetic data into OUT (replaced): synth, ingest, train, infer, each step timed."""
    from jobs.demo import run_demo

    config = DemoConfig(
        out=out,
        train_patients=train_patients,
        train_images=train_images,
        new_patients=new_patients,
        new_images=new_images,
        epochs=epochs,
        image_size=image_size,
        arch=arch,
    )
    run_demo(config, address=address, verbose=verbose)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `allray` console script."""
    cli.main(args=argv, prog_name="allray")


if __name__ == "__main__":
    main()
