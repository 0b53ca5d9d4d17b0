"""The report of `allray infer`: count tables, overlays of the images with the most blasts called,
the crop galleries, report.html and summary.json, written to OUT once every cell is counted."""

from __future__ import annotations

import heapq

from pipeline import schema
from pipeline.locations import is_dir, join_uri, read_bytes, resolve, write_json

OVERLAYS_PER_PATIENT = 3


def write_outputs(out_dir: str, acc, galleries: dict, overlay_pick: dict, image_paths: dict, quarantine: list,
                  info: dict, record: dict) -> dict:  # fmt: skip
    """Write the report of a finished run to out_dir; returns its summary (as in OUT/summary.json,
    plus "terminal": the lines printed at the end)."""
    import pyarrow.dataset as pads

    from pipeline.io import decode_image
    from pipeline.report import format_terminal_summary, write_count_tables
    from pipeline.report_html import draw_overlay, write_html_report

    patients, samples = acc.patients(), acc.samples()
    write_count_tables(out_dir, patients, samples, info, classes=acc.classes)
    # The images with the most blasts called are the ones a reviewer should see first.
    chosen = {p: heapq.nlargest(OVERLAYS_PER_PATIENT, ((n, im) for im, n in images.items()))
              for p, images in overlay_pick.items()}  # fmt: skip
    picks = {im for items in chosen.values() for _, im in items}
    overlays: dict[str, list] = {}
    pred_dir = join_uri(out_dir, schema.PREDICTIONS_DIR)
    if picks and is_dir(pred_dir):
        cols = [schema.IMAGE, schema.BBOX_X0, schema.BBOX_Y0, schema.BBOX_X1, schema.BBOX_Y1, schema.PREDICTED,
                schema.BLAST_PROB, schema.KIND]  # fmt: skip
        fs, pred_path = resolve(pred_dir)
        table = pads.dataset(pred_path, filesystem=fs, format="parquet").to_table(
            columns=cols, filter=pads.field(schema.IMAGE).isin(sorted(picks))
        )
        by_image: dict[str, list] = {}
        for row in table.to_pylist():
            by_image.setdefault(row[schema.IMAGE], []).append(row)
        for patient, items in chosen.items():
            for n_blasts, im in items:
                path = image_paths.get(im)
                if path is None:
                    continue
                try:
                    pixels = decode_image(read_bytes(path)).pixels
                except (OSError, ValueError):
                    continue
                caption = f"{im}: {len(by_image.get(im, []))} cells, {n_blasts} called blasts"
                overlays.setdefault(patient, []).append((caption, draw_overlay(pixels, by_image.get(im, []))))
    gallery_items, class_items = (
        {
            k: [(crop, prob, im) for prob, crop, im in sorted(items, reverse=True)]
            for k, items in galleries[name].items()
        }
        for name in ("blasts", "classes")
    )
    write_html_report(
        out_dir, patients, overlays, gallery_items, quarantine, info, class_gallery=class_items, classes=acc.classes
    )
    summary = {**info, "patients": len(patients), "n_blasts": sum(p["n_blasts"] for p in patients),
               "flags": {f: sum(p["flag"] == f for p in patients) for f in {p["flag"] for p in patients}},
               "report": join_uri(out_dir, "report.html"), "quarantined": quarantine, "run": record}  # fmt: skip
    write_json(out_dir, "summary.json", summary)
    summary["terminal"] = format_terminal_summary(patients, info)
    return summary
