"""The whole pipeline from Python instead of the CLI: synth -> ingest -> train -> infer.

    .venv/bin/python examples/pipeline_api.py /tmp/allray-example

Small and quick (a LeNet for 3 epochs): copy it and scale the numbers up for real work.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.infer import run_infer
from jobs.ingest import run_ingest
from jobs.train import comparison_table, run_train
from pipeline.config import IngestConfig, TrainConfig
from pipeline.synth_cohort import write_cohort


def main(work: Path) -> None:
    write_cohort(work / "train", patients=6, images_per_patient=4, seed=1)
    write_cohort(work / "new", patients=3, images_per_patient=4, seed=2)
    ingest = run_ingest(
        IngestConfig(
            src=str(work / "train" / "slides"),
            out=str(work / "cells"),
            labels=str(work / "train" / "truth" / "cells.csv"),
        )
    )
    print(f"ingested {ingest['images_ingested']} images, {ingest['cells_written']} cells")
    summary = run_train(TrainConfig(cells=(str(work / "cells"),), out=str(work / "run"), arch="lenet", epochs=3))
    print(comparison_table(summary))
    report = run_infer(str(work / "new" / "slides"), str(work / "run"), str(work / "report"), min_cells=10)
    print(report["terminal"])
    print(f"open {report['report']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "allray-example"))
