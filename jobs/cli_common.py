"""What the `allray` command modules share: the choice lists spelled out for a fast --help, the
--single-cell-scale option and its summary line, credential-free echo, and one-line errors.

Nothing heavy (ray, torch, skimage) is imported here: `allray --help` imports this module.
"""

from __future__ import annotations

import functools
import sys
import traceback

import click

from pipeline.redact import redact_text

# pipeline.sources.FORMATS, spelled out here so that `allray --help` need not import the readers.
SOURCE_FORMATS = ("auto", "folders", "manifest", "allidb1", "allidb2", "classfolders")
SINGLE_CELL_SCALES = ("auto", "pooled", "each")  # pipeline.config.SINGLE_CELL_SCALES, likewise

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


def echo_redacted(text: str, err: bool = False) -> None:
    """click.echo with credentials redacted: a location may carry them (s3://KEY:SECRET@bucket/x)."""
    click.echo(redact_text(str(text)), err=err)


def parse_size(text: str) -> tuple[int, int]:
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
            echo_redacted(f"{prefix}: {err}{hint}", err=True)
            sys.exit(1)

    return wrapper
