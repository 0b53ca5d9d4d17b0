"""`allray review` response times on a 20,000-cell report, with a plain HTTP client against the running server.

    .venv/bin/python benchmarks/review_speed.py [REPORT] [--cells 20000] [--patients 20] [--rounds 40]

REPORT is an `allray infer` output (e.g. demo-out/report after `make demo`); its predictions are
copied, patients and image hashes renamed, until the copy holds --cells cells. Without REPORT, a
base of synthetic crops (pipeline.synth smears) is made first. The server runs as its own process
(`allray review COPY --port P`); httpx times, as medians (and 90th percentiles):
1. baseline: GET of a static file (the server's floor: routing, middleware, one small response);
2. the worklist (GET /) and patient pages (GET /patient?id=..., a different patient each time);
3. a correction round trip (POST /cell: a transaction, the audit row, counts re-rendered).
Each round times all of them in turn, so each has a baseline taken under the same load. Pages
are timed twice: before any review and after every cell of the report has a decision (filled
through the review store's tables in bulk, then the server restarted), the database's largest
state; its size (review.sqlite with its WAL) is reported then. Targets: pages < 300 ms, a
correction < 50 ms, the database < 20 MB.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def synthetic_base(out: Path, n_cells: int = 200, seed: int = 7) -> Path:
    """A small infer-style output: synthetic crops with random blast probabilities (no model, no Ray)."""
    import numpy as np
    import pyarrow as pa

    from pipeline import schema
    from pipeline.config import CropSettings
    from pipeline.crops import cut_crop, window_pixels
    from pipeline.io import encode_png
    from pipeline.predictions import PredictionWriter
    from pipeline.synth import RBC_DIAMETER_UM, choose_patient_style, make_image_rng, make_smear

    rng = np.random.default_rng(seed)
    settings = CropSettings()
    rows, i = [], 0
    while len(rows) < n_cells:
        style = choose_patient_style(seed, i)
        upp = RBC_DIAMETER_UM / style.rbc_diameter_px
        image, truth = make_smear(make_image_rng(seed, i, 0), (400, 300), 0.3, style)
        for k, c in enumerate(truth):
            prob = float(rng.beta(0.6, 0.9))
            crop = cut_crop(image, c.x, c.y, window_pixels(settings.crop_um, upp), settings.crop_size)
            row = {f.name: None for f in schema.PREDICTION_SCHEMA}
            row.update({schema.PATIENT_ID: "B0", schema.SAMPLE_ID: "S0", schema.IMAGE: f"B0/S0/img{i:03d}.png",
                        schema.CELL_ID: k, schema.X: c.x, schema.Y: c.y, schema.BBOX_X0: int(c.x) - 20,
                        schema.BBOX_Y0: int(c.y) - 20, schema.BBOX_X1: int(c.x) + 20, schema.BBOX_Y1: int(c.y) + 20,
                        schema.KIND: schema.KIND_WBC, schema.AT_BORDER: False, schema.CROP: encode_png(crop),
                        schema.BLAST_PROB: prob, schema.PREDICTED: int(prob >= 0.5), schema.MODEL_ID: "bench",
                        schema.SOURCE_SHA256: f"base{i:04d}"})  # fmt: skip
            rows.append(row)
        i += 1
    PredictionWriter(str(out), "base")(pa.Table.from_pylist(rows[:n_cells], schema=schema.PREDICTION_SCHEMA))
    (out / schema.SUMMARY_FILE).write_text('{"blast_alert_pct": 20.0, "min_cells": 50}')
    return out


def copy_report(src: Path, out: Path, n_cells: int, patients: int) -> int:
    """Copies of `src`'s predictions, renamed (patient P<k>, hashes suffixed) until `n_cells`; returns the count."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline import schema

    base = pa.concat_tables([pq.read_table(f) for f in sorted((src / schema.PREDICTIONS_DIR).glob("*.parquet"))])
    (out / schema.PREDICTIONS_DIR).mkdir(parents=True)
    per_patient = -(-n_cells // patients)
    written, k = 0, 0
    while written < n_cells:
        take = base.slice(0, min(base.num_rows, n_cells - written, per_patient))
        pid = f"P{(written // per_patient):03d}"
        t = take.set_column(take.schema.get_field_index(schema.PATIENT_ID), schema.PATIENT_ID,
                            pa.array([pid] * take.num_rows, pa.string()))  # fmt: skip
        i = t.schema.get_field_index(schema.SOURCE_SHA256)
        t = t.set_column(i, schema.SOURCE_SHA256, pc.binary_join_element_wise(t.column(i), f"~{k}", ""))
        pq.write_table(t, out / schema.PREDICTIONS_DIR / f"copy{k:04d}.parquet")
        written += t.num_rows
        k += 1
    if (src / schema.SUMMARY_FILE).exists():
        (out / schema.SUMMARY_FILE).write_text((src / schema.SUMMARY_FILE).read_text())
    return written


def start_server(report: Path, port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "allray"), "review", str(report), "--port", str(port),
                             "--reviewer", "bench"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/static/review.css", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"allray review exited: {proc.stderr.read().decode()[-2000:]}")
    raise RuntimeError("allray review did not answer within 120 s")


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def fmt(name: str, ms: list[float], base: list[float]) -> str:
    med = statistics.median(ms)
    p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
    ratio = statistics.median(m / b for m, b in zip(ms, base))
    return f"{name:<38} median {med:7.1f} ms  p90 {p90:7.1f} ms  ({ratio:5.1f}x the static file, same round)"


def measure(url: str, patients: list[str], keys: list[tuple[str, str]], rounds: int, correct: bool) -> list[str]:
    """Each round times the static file, the worklist, a patient page and (if `correct`) a correction in turn,
    so every figure has a baseline taken under the same load (this machine is shared)."""
    import re

    import httpx

    times: dict[str, list[float]] = {k: [] for k in ("static", "worklist", "patient", "correct")}
    with httpx.Client(base_url=url, timeout=60) as client:
        page = client.get("/")
        assert page.status_code == 200, page.status_code
        csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', page.text).group(1)
        for _ in range(3):  # warm up: the first page of a patient reads its crops' index lazily
            client.get("/patient", params={"id": patients[0]})
        for i in range(rounds):
            pid, key = keys[i % len(keys)]
            times["static"].append(once(lambda: client.get("/static/review.css").raise_for_status()))
            times["worklist"].append(once(lambda: client.get("/").raise_for_status()))
            times["patient"].append(once(lambda: client.get("/patient", params={
                "id": patients[i % len(patients)]}).raise_for_status()))  # fmt: skip
            if correct:
                times["correct"].append(once(lambda: client.post("/cell", data={
                    "patient": pid, "key": key, "cls": "lymphocyte", "reviewer": "bench"},
                    headers={"X-CSRF-Token": csrf}).raise_for_status()))  # fmt: skip
    base = times["static"]
    lines = [fmt("baseline: GET /static/review.css", base, base), fmt("worklist GET /", times["worklist"], base),
             fmt("patient page GET /patient?id=...", times["patient"], base)]  # fmt: skip
    if correct:
        lines.append(fmt("correction round trip POST /cell", times["correct"], base))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", help="an allray infer output (default: synthetic crops)")
    ap.add_argument("--cells", type=int, default=20000)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--port", type=int, default=8799)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.review.cells import load_report
    from pipeline.review.store import AUDIT, DECISIONS, ReviewStore, now

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = Path(args.report) if args.report else synthetic_base(tmp / "base")
        report = tmp / "report"
        n = copy_report(src, report, args.cells, args.patients)
        loaded = load_report(report)
        patients = list(loaded.patients)
        keys = [(p, k) for p in patients for k in loaded.patients[p].keys[:3]]
        print(f"(copies made in {time.perf_counter() - t_start:.0f} s)")
        load = os.getloadavg()[0]
        print(
            f"review_speed: {n} cells, {len(patients)} patients (from {src}); load average {load:.1f} on {os.cpu_count()} cores"
        )
        proc = start_server(report, args.port)
        try:
            lines = measure(f"http://127.0.0.1:{args.port}", patients, keys, args.rounds, correct=True)
        finally:
            proc.terminate()
            proc.wait(30)
        print("before review:")
        print("\n".join("  " + s for s in lines))
        store = ReviewStore(f"sqlite:///{report / 'review.sqlite'}", loaded.fingerprint, str(report))
        t0 = time.perf_counter()
        decisions, audit = [], []  # every cell corrected once: the rows set_class writes, inserted in bulk
        for pid, cells in loaded.patients.items():
            for k, p in zip(cells.keys, cells.predicted):
                to = "lymphocyte" if p == "lymphoblast" else "lymphoblast"
                decisions.append({"cell_key": k, "patient_id": pid, "cell_class": to, "reviewer": "bench", "at": now()})
                audit.append({"at": now(), "reviewer": "bench", "patient_id": pid, "cell_key": k, "action": "correct",
                              "from_class": p, "to_class": to})  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(DECISIONS.delete())
            conn.execute(DECISIONS.insert(), decisions)
            conn.execute(AUDIT.insert(), audit)
        fill = time.perf_counter() - t0
        store.close()
        with sqlite3.connect(report / "review.sqlite") as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = sum(os.path.getsize(p) for p in report.glob("review.sqlite*"))
        proc = start_server(report, args.port)
        try:
            lines = measure(f"http://127.0.0.1:{args.port}", patients, keys, args.rounds, correct=False)
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"after every cell was corrected ({n} decisions + audit rows, filled in {fill:.0f} s):")
        print("\n".join("  " + s for s in lines))
        print(f"  review database: {size / 1e6:.1f} MB (review.sqlite + WAL)")


if __name__ == "__main__":
    main()
