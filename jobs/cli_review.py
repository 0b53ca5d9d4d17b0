"""`allray review`: the command that serves a report's review in the browser, or exports it.

Registered on the `allray` group in jobs/cli.py; the app itself (jobs/review.py) is imported inside it.
"""

from __future__ import annotations

import click

from jobs.cli_common import friendly_errors


@click.command()
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
