"""A small `allray infer`-style output for the review tests, written with the real PredictionWriter.

Crops are cut from synthetic smears at their truth centres; the blast probabilities are chosen so
the tests know every count: see PATIENTS. No Ray, no model: a second or so.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

XSS_ID = "<img src=x onerror=alert(1)>"
# patient id -> blast probabilities of its white cells (a 0.5 threshold calls blasts); one smudge cell each.
# P001: 4 blasts of 10 (40 %); confidence max(p, 1-p) < 0.8 for 0.7, 0.4, 0.3: three unsure cells.
PATIENTS = {
    "P001": [0.95, 0.9, 0.85, 0.7, 0.4, 0.3, 0.15, 0.1, 0.05, 0.02],
    "P002": [0.99, 0.03, 0.02, 0.01, 0.04, 0.97],
    XSS_ID: [0.9, 0.35, 0.05],  # one unsure cell (0.35)
}
MODEL_ID = "resnet18-test"


def write_report(out: Path, patients: dict[str, list[float]] | None = None, seed: int = 3,
                 class_model: bool = False) -> Path:  # fmt: skip
    """Write OUT/predictions/*.parquet and OUT/summary.json; returns OUT."""
    import numpy as np
    import pyarrow as pa

    from pipeline import schema
    from pipeline.config import CropSettings
    from pipeline.crops import cut_crop, window_pixels
    from pipeline.io import encode_png
    from pipeline.predictions import PredictionWriter
    from pipeline.synth import RBC_DIAMETER_UM, choose_patient_style, make_image_rng, make_smear

    patients = PATIENTS if patients is None else patients
    settings = CropSettings(crop_size=64)
    writer = PredictionWriter(str(out), "testrun")
    rows = []
    for p, (pid, probs) in enumerate(patients.items()):
        style = choose_patient_style(seed, p)
        upp = RBC_DIAMETER_UM / style.rbc_diameter_px
        image, truth = make_smear(make_image_rng(seed, p, 0), (400, 300), 0.4, style)
        name = f"P{p:03d}/S0/img000.png"
        for k in range(len(probs) + 1):
            c = truth[k % len(truth)]
            crop = cut_crop(image, c.x, c.y, window_pixels(settings.crop_um, upp), settings.crop_size)
            smudge = k == len(probs)
            prob = 0.5 if smudge else probs[k]
            row = {f.name: None for f in schema.PREDICTION_SCHEMA}
            row.update({schema.PATIENT_ID: pid, schema.SAMPLE_ID: "S0", schema.IMAGE: name, schema.CELL_ID: k,
                        schema.X: float(c.x) + k, schema.Y: float(c.y), schema.BBOX_X0: int(c.x) - 10,
                        schema.BBOX_Y0: int(c.y) - 12, schema.BBOX_X1: int(c.x) + 10, schema.BBOX_Y1: int(c.y) + 12,
                        schema.KIND: schema.KIND_SMUDGE if smudge else schema.KIND_WBC, schema.AT_BORDER: False,
                        schema.CROP: encode_png(crop), schema.BLAST_PROB: prob, schema.PREDICTED: int(prob >= 0.5),
                        schema.MODEL_ID: MODEL_ID, schema.SOURCE_SHA256: f"sha{p:03d}"})  # fmt: skip
            rows.append(row)
    table = pa.Table.from_pylist(rows, schema=schema.PREDICTION_SCHEMA)
    if class_model:
        from pipeline import taxonomy

        probs = table.column(schema.BLAST_PROB).to_numpy()
        names = [taxonomy.LYMPHOBLAST if q >= 0.5 else taxonomy.NEUTROPHIL for q in probs]
        i = table.schema.get_field_index(schema.PREDICTED_CLASS)
        table = table.set_column(i, schema.PREDICTED_CLASS, pa.array(names, pa.string()))
        i = table.schema.get_field_index(schema.CLASS_PROB)
        table = table.set_column(i, schema.CLASS_PROB, pa.array(np.maximum(probs, 1 - probs), pa.float32()))
    writer(table)
    classes = "lymphoblast, neutrophil" if class_model else "other, lymphoblast"
    (out / schema.SUMMARY_FILE).write_text(
        json.dumps({"blast_alert_pct": 20.0, "min_cells": 5, "model": MODEL_ID, "classes": classes})
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReviewServer:
    """The review app on a real uvicorn server in a thread, on a free 127.0.0.1 port."""

    def __init__(self, config):
        import uvicorn

        from jobs.review import create_app

        self.config = config
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=config.host, port=config.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.store.close()
