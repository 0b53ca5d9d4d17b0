"""The `allray` command line: a click group whose commands map options onto config dataclasses.

Heavy modules (ray, torch, skimage) are imported inside commands so that `allray --help` answers
at once. Ordinary mistakes (a wrong path, no images, a cluster too small) end in one line on
stderr and exit code 1; a traceback is shown only with --verbose.

This module holds the group, `allray demo` (every other step in turn) and the entry point; the
other commands live by group: jobs/cli_data.py (synth, ingest), jobs/cli_model.py (train, infer),
jobs/cli_review.py (review), and what they share in jobs/cli_common.py.
"""

from __future__ import annotations

import click

from jobs.cli_common import friendly_errors
from jobs.cli_data import ingest, synth
from jobs.cli_model import infer, train
from jobs.cli_review import review
from jobs.demo import DemoConfig

DEMO_DEFAULTS = DemoConfig()  # the demo's sizes (jobs/demo.py), shown by `allray demo --help`


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="allray")
def cli() -> None:
    """allray: count lymphoblasts in blood smear images, at scale, on Ray.

    \b
    allray synth demo/            make a synthetic cohort with ground truth
    allray ingest demo/slides     find white cells, cut crops, write Parquet
    """


cli.add_command(synth)
cli.add_command(ingest)
cli.add_command(train)
cli.add_command(infer)
cli.add_command(review)


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
