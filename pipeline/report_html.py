"""The human-readable report: slide overlays (JPEG) and one self-contained HTML page.

The page must open years later on an offline hospital PC: every image is inlined as a data URI,
the CSS is inline, there is no script, and a Content-Security-Policy forbids any request that is
not a data URI, so even a string that slipped past escaping could not load or run anything.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline import schema, taxonomy
from pipeline.differential import N_WBC, apart_classes, white_classes
from pipeline.locations import is_uri, join_uri, write_text
from pipeline.redact import redact_text
from pipeline.report import (
    BLAST_PCT,
    CI_HIGH,
    CI_LOW,
    FLAG,
    FLAG_ALERT,
    FLAG_FEW,
    FLAG_OK,
    N_BLASTS,
    N_IMAGES,
    N_SAMPLES,
    N_SMUDGE,
    UNKNOWN,
    describe_info,
    sort_rows,
)

BLAST_RGB = (220, 20, 20)
OTHER_RGB = (20, 160, 60)
SMUDGE_RGB = (150, 150, 150)
JPEG_QUALITY = 85

REPORT_FILE = "report.html"
FLAG_CLASSES = {FLAG_ALERT: "alert", FLAG_FEW: "few", FLAG_OK: "ok"}


def draw_overlay(image: np.ndarray, cells: Sequence[dict], max_side: int = 1000) -> bytes:
    """JPEG bytes of the slide, longer side <= max_side, each cell's bbox outlined by its call.

    image: (H, W, 3) uint8 RGB. cells: dicts with schema.BBOX_X0..BBOX_Y1 (source pixels),
    schema.PREDICTED, schema.BLAST_PROB and schema.KIND. Blasts are red with their probability
    written beside the box, other white cells green, smudge cells grey (whatever their call, since
    they are not counted). A cell with no bbox is skipped.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_overlay needs an (H, W, 3) uint8 image, got shape {image.shape} {image.dtype}")
    if max_side < 16:
        raise ValueError(f"max_side must be >= 16 px, got {max_side!r}")
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    pic = Image.fromarray(image)
    if scale < 1.0:
        pic = pic.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(pic)
    side = max(pic.size)
    line = max(3, round(side / 250))  # thick enough to survive JPEG and a shrunken thumbnail
    # Labels are read on a thumbnail about half the overlay's size: ~1/40 of the side stays legible.
    font = ImageFont.load_default(size=max(12, round(side / 40)))
    # Blasts last, so their red boxes and labels sit on top of touching neighbours.
    for cell in sorted(cells, key=_is_blast):
        box = _scaled_box(cell, scale)
        if box is None:
            continue
        colour = (
            SMUDGE_RGB if cell.get(schema.KIND) == schema.KIND_SMUDGE else (BLAST_RGB if _is_blast(cell) else OTHER_RGB)
        )
        draw.rectangle(box, outline=colour, width=line)
        if _is_blast(cell) and cell.get(schema.BLAST_PROB) is not None:
            _label(draw, box, f"{float(cell[schema.BLAST_PROB]):.2f}", font, pic.size)
    buf = io.BytesIO()
    # 4:4:4 chroma: the default 4:2:0 smears thin red lines into pink.
    pic.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def write_html_report(
    out: str | Path,
    patients: list[dict],
    overlays: dict[str, list[tuple[str, bytes]]],
    gallery: dict[str, list[tuple[bytes, float, str]]],
    quarantine: list[dict],
    info: dict,
    class_gallery: dict[str, list[tuple[bytes, float, str]]] | None = None,
    classes: Sequence[str] = taxonomy.BINARY_CLASSES,
) -> Path | str:
    """Write out/report.html (self-contained, opens offline) and return its path (a Path for a local
    `out`, else the URI).

    overlays[patient_id]: (caption, JPEG/PNG bytes) slide overlays; gallery[patient_id]: (PNG/JPEG
    bytes, blast probability, caption) crops called blasts; quarantine rows have schema.IMAGE and
    schema.REASON; info: run facts (see pipeline.report.INFO_LABELS). Patients are keyed by the
    patient_id of their row ("(unknown)" for a null id). classes: the model's classes (which
    differential columns the rows carry); class_gallery[class]: (crop bytes, class probability,
    caption) of cells predicted that class, shown most confident first, a strip per class.
    """
    rows = sort_rows(patients)
    alert, min_cells = info.get("blast_alert_pct"), info.get("min_cells")
    parts = [_HEAD, _header(rows, info), _patient_table(rows, alert, min_cells), _LEGEND]
    parts += [_differential_table(rows, classes), _class_gallery(class_gallery or {}, classes)]
    parts += [
        _patient_section(
            i, r, overlays.get(r[schema.PATIENT_ID], ()), gallery.get(r[schema.PATIENT_ID], ()), alert, min_cells
        )
        for i, r in enumerate(rows)
    ]
    parts += [_quarantine_table(quarantine), "<footer>Generated by allray.</footer></main></body></html>\n"]
    path = join_uri(out, REPORT_FILE)
    write_text(path, "\n".join(parts))
    return path if is_uri(path) else Path(path)


def _is_blast(cell: dict) -> bool:
    return cell.get(schema.KIND) != schema.KIND_SMUDGE and bool(cell.get(schema.PREDICTED))


def _scaled_box(cell: dict, scale: float) -> tuple[float, float, float, float] | None:
    coords = [cell.get(k) for k in (schema.BBOX_X0, schema.BBOX_Y0, schema.BBOX_X1, schema.BBOX_Y1)]
    if any(c is None for c in coords):
        return None
    x0, y0, x1, y1 = (float(c) * scale for c in coords)
    # bbox is half-open [x0, x1): PIL's rectangle includes its far corner.
    return x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)


def _label(draw: ImageDraw.ImageDraw, box, text: str, font, size: tuple[int, int]) -> None:
    """Write `text` white on red just above the box (inside the picture, below the box if no room)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 6, bottom - top + 4
    x = min(max(0.0, box[0]), size[0] - tw)
    y = box[1] - th if box[1] - th >= 0 else min(box[3] + 1, size[1] - th)
    draw.rectangle((x, y, x + tw, y + th), fill=BLAST_RGB)
    draw.text((x + 3 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)


def _data_uri(data: bytes) -> str:
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _e(value) -> str:
    """`value` escaped for HTML; a missing one (None, NaN) shown as UNKNOWN, never as "None" or "nan"."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        value = UNKNOWN
    return html.escape(redact_text(str(value)), quote=True)  # no credentials of a location on the page


def _wrap(text) -> str:
    """Escaped text that may break after a slash: paths wrap at folders, not mid-name."""
    return _e(text).replace("/", "/<wbr>")


def _flag_badges(row: dict, alert, min_cells) -> str:
    """The flag as a coloured badge, plus a "few cells" badge when an alert hides that too."""
    flag = row[FLAG]
    text = {
        FLAG_ALERT: f"Blasts &ge; {_e(alert)} %" if alert is not None else "Blasts above alert",
        FLAG_FEW: f"Too few cells (&lt; {_e(min_cells)})" if min_cells is not None else "Too few cells",
        FLAG_OK: "OK",
    }.get(flag, _e(flag))
    badge = f"<span class='flag {FLAG_CLASSES.get(flag, 'other')}' title='{_e(flag)}'>{text}</span>"
    if flag == FLAG_ALERT and min_cells is not None and row[schema.N_CELLS] < min_cells:
        badge += f" <span class='flag few' title='{_e(FLAG_FEW)}'>Few cells (&lt; {_e(min_cells)})</span>"
    return badge


def _ci_bar(row: dict, alert) -> str:
    """A 0-100 % track with the 95% interval shaded, the estimate as a tick and the alert line dashed."""
    lo, hi, pct = (min(100.0, max(0.0, float(row[k]))) for k in (CI_LOW, CI_HIGH, BLAST_PCT))
    alert_mark = f"<i class='ci-alert' style='left:{float(alert):.2f}%'></i>" if alert is not None else ""
    return (
        f"<div class='ci' role='img' aria-label='95% interval {lo:.1f} to {hi:.1f} percent'>"
        f"<i class='ci-range' style='left:{lo:.2f}%;width:{max(hi - lo, 0.5):.2f}%'></i>{alert_mark}"
        f"<i class='ci-point' style='left:{pct:.2f}%'></i></div>"
    )


def _header(rows: list[dict], info: dict) -> str:
    facts = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in describe_info(rows, info))
    n_alert = sum(r[FLAG] == FLAG_ALERT for r in rows)
    n_few = sum(r[FLAG] == FLAG_FEW for r in rows)
    summary = (
        f"<p class='lead'><b>{n_alert}</b> of {len(rows)} patient{'s' * (len(rows) != 1)} at or above the "
        f"blast alert; <b>{n_few}</b> with too few cells for a reliable count.</p>"
    )
    return (
        f"<header><h1>Lymphoblast count report</h1>{summary}<dl class='facts'>{facts}</dl>"
        "<p class='note'>Automated count to support, not replace, microscopy review: check flagged patients "
        "and the blast gallery. The 95% interval (Wilson) reflects how many cells were counted; it does not "
        "include classifier error.</p></header>"
    )


def _patient_table(rows: list[dict], alert, min_cells) -> str:
    head = (
        "<tr><th>Patient</th><th class='n'>Samples</th><th class='n'>Images</th><th class='n'>Cells</th>"
        "<th class='n'>Blasts</th><th class='n'>Blast %</th><th class='n'>95% interval</th>"
        "<th>0&ndash;100 %</th><th>Flag</th><th class='n'>Smudge</th></tr>"
    )
    body = []
    for i, r in enumerate(rows):
        body.append(
            f"<tr class='{FLAG_CLASSES.get(r[FLAG], 'other')}'><td><a href='#p{i}'>{_e(r[schema.PATIENT_ID])}</a></td>"
            f"<td class='n'>{r.get(N_SAMPLES, '')}</td><td class='n'>{r[N_IMAGES]:,}</td>"
            f"<td class='n'>{r[schema.N_CELLS]:,}</td><td class='n'>{r[N_BLASTS]:,}</td>"
            f"<td class='n pct'>{r[BLAST_PCT]:.2f}</td><td class='n'>{r[CI_LOW]:.1f}&ndash;{r[CI_HIGH]:.1f}</td>"
            f"<td>{_ci_bar(r, alert)}</td><td>{_flag_badges(r, alert, min_cells)}</td>"
            f"<td class='n'>{r[N_SMUDGE]:,}</td></tr>"
        )
    empty = "" if rows else "<p>No patients: no readable image had a white cell.</p>"
    return (
        f"<section><h2>Patients by blast fraction</h2>{empty}<table id='patients'><thead>{head}</thead>"
        f"<tbody>{''.join(body)}</tbody></table></section>"
    )


def _patient_section(i: int, row: dict, overlays, gallery, alert, min_cells) -> str:
    pid = _e(row[schema.PATIENT_ID])
    figs = "".join(
        f"<figure class='overlay'><img src='{_data_uri(data)}' alt='overlay {_e(caption)}'>"
        f"<figcaption>{_wrap(caption)}</figcaption></figure>"
        for caption, data in overlays
    )
    crops = "".join(
        f"<figure class='crop'><img src='{_data_uri(data)}' alt='blast crop {_e(caption)}'>"
        f"<figcaption><b>p = {float(prob):.2f}</b><br><small>{_wrap(caption)}</small></figcaption></figure>"
        for data, prob, caption in gallery
    )
    overlay_part = f"<div class='overlays'>{figs}</div>" if figs else "<p class='none'>No overlay images.</p>"
    gallery_part = (
        (f"<h3>Cells called blasts ({len(gallery)} shown of {row[N_BLASTS]:,})</h3><div class='gallery'>{crops}</div>")
        if crops
        else "<p class='none'>No cells called blasts.</p>"
    )
    return (
        f"<section class='patient' id='p{i}'><h2>Patient {pid} {_flag_badges(row, alert, min_cells)}</h2>"
        f"<p class='stats'>{row[BLAST_PCT]:.2f} % blasts ({row[N_BLASTS]:,} of {row[schema.N_CELLS]:,} cells; "
        f"95% interval {row[CI_LOW]:.1f}&ndash;{row[CI_HIGH]:.1f} %) in {row[N_IMAGES]:,} "
        f"image{'s' * (row[N_IMAGES] != 1)}</p>{overlay_part}{gallery_part}"
        "<p class='top'><a href='#patients'>back to table</a></p></section>"
    )


def _differential_table(rows: list[dict], classes: Sequence[str]) -> str:
    """Per patient: each white class as % of white cells (95% interval), cells counted apart per 100."""
    whites, apart = white_classes(classes), apart_classes(classes)
    if not rows or N_WBC not in rows[0]:
        return ""
    head = (
        "<tr><th>Patient</th><th class='n'>White cells</th>"
        + "".join(f"<th class='n' title='{_e(_title(c))}, % of white cells'>{_e(c)} %</th>" for c in whites)
        + "".join(f"<th class='n' title='{_e(_title(c))}, per 100 white cells'>{_e(c)} /100</th>" for c in apart)
        + "</tr>"
    )
    body = []
    for i, r in enumerate(rows):
        cells = [f"<td><a href='#p{i}'>{_e(r[schema.PATIENT_ID])}</a></td>", f"<td class='n'>{r[N_WBC]:,}</td>"]
        for c in (*whites, *apart):
            n, pct, low, high = (r.get(k) for k in taxonomy.column_names(c))
            ci = f"{low:.1f}&ndash;{high:.1f}" if high is not None else f"&ge; {low:.1f}"
            cells.append(f"<td class='n' title='{_e(n)} cells'><b>{pct:.1f}</b> <small>({ci})</small></td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        "Percentages of white cells with 95% intervals (Wilson); nucleated red cells and smudge cells are "
        "counted apart, per 100 white cells. A binary model tells lymphoblasts from other white cells only."
    )
    return (
        f"<section id='differential'><h2>White-cell differential</h2><p class='note'>{note}</p>"
        f"<div class='wide'><table id='differential-table'><thead>{head}</thead><tbody>{''.join(body)}"
        "</tbody></table></div></section>"
    )


def _class_gallery(gallery: dict[str, list[tuple[bytes, float, str]]], classes: Sequence[str]) -> str:
    """A strip of crops per predicted class, most confident first."""
    order = [c for c in (*white_classes(classes), *apart_classes(classes), *classes) if c in gallery]
    strips = []
    for c in dict.fromkeys(order):
        crops = "".join(
            f"<figure class='crop cls'><img src='{_data_uri(data)}' alt='{_e(c)} crop {_e(caption)}'>"
            f"<figcaption><b>p = {float(prob):.2f}</b><br><small>{_wrap(caption)}</small></figcaption>"
            "</figure>"
            for data, prob, caption in gallery[c]
        )
        strips.append(f"<h3>{_e(_title(c))} ({len(gallery[c])} most confident)</h3><div class='strip'>{crops}</div>")
    body = "".join(strips) or "<p class='none'>No cells classified.</p>"
    return f"<section id='classes'><h2>Cells by predicted class</h2>{body}</section>"


def _title(name: str) -> str:
    node = taxonomy.NODES.get(name)
    return node.title if node is not None else str(name)


def _quarantine_table(rows: list[dict]) -> str:
    if not rows:
        return "<section><h2>Quarantined files</h2><p class='none'>None: every input file was read.</p></section>"
    body = "".join(
        f"<tr><td class='path'>{_wrap(r.get(schema.IMAGE, ''))}</td><td>{_e(r.get(schema.REASON, ''))}</td></tr>"
        for r in rows
    )
    return (
        f"<section><h2>Quarantined files ({len(rows):,})</h2><p>These files were not counted.</p>"
        f"<table id='quarantine'><thead><tr><th>File</th><th>Reason</th></tr></thead><tbody>{body}</tbody>"
        "</table></section>"
    )


_LEGEND = (
    "<p class='note'>Slide overlays: <b class='k-blast'>red</b> box = cell called a blast (its probability "
    "beside it), <b class='k-other'>green</b> = other white cell, <b class='k-smudge'>grey</b> = smudge cell "
    "(not counted).</p>"
)

_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>allray: lymphoblast count report</title>
<style>
:root { --ink: #1d2329; --muted: #5b6670; --line: #d8dde2; --alert: #b3261e; --alert-bg: #fdecea;
        --few: #8a5a00; --few-bg: #fff4dc; --ok: #1e6b3a; --ok-bg: #e8f4ec; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #f5f6f7;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 40px; background: #fff; min-height: 100vh; }
h1 { font-size: 24px; margin: 0 0 6px; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 8px; color: var(--muted); }
.lead { font-size: 16px; margin: 0 0 14px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 6px 18px; margin: 0;
         padding: 12px 14px; background: #f8f9fa; border: 1px solid var(--line); border-radius: 6px; }
.facts dt { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.note { font-size: 13px; color: var(--muted); margin: 10px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: middle; }
th { background: #eef1f4; font-weight: 600; font-size: 13px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.pct { font-weight: 700; }
tr.alert td { background: var(--alert-bg); }
tr.few td { background: var(--few-bg); }
td a { color: inherit; font-weight: 600; }
.flag { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 700;
        white-space: nowrap; vertical-align: middle; border: 1px solid; }
.flag.alert { color: #fff; background: var(--alert); border-color: var(--alert); }
.flag.few { color: var(--few); background: var(--few-bg); border-color: #e0b44c; }
.flag.ok { color: var(--ok); background: var(--ok-bg); border-color: #9cc9aa; }
.ci { position: relative; width: 150px; height: 12px; background: #e9ecef; border-radius: 2px; }
.ci i { position: absolute; top: 0; height: 12px; display: block; }
.ci-range { background: #7d95ad; border-radius: 2px; }
.ci-point { width: 3px; margin-left: -1px; background: #111; }
.ci-alert { width: 0; top: -3px !important; height: 18px !important; border-left: 2px dashed var(--alert); }
.patient h2 { display: flex; gap: 10px; align-items: center; }
.stats { margin: 0 0 10px; }
.overlays { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; }
.overlay img { width: 100%; height: auto; border: 1px solid var(--line); display: block; }
.crop { width: 128px; text-align: center; }
.crop img { width: 112px; height: 112px; border: 2px solid #dc1414; display: block; margin: 0 auto; }
figcaption { font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.crop small { font-size: 11px; }
.strip { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 4px; }
.crop.cls img { border-color: #5b6670; }
.wide { overflow-x: auto; }
#differential-table small { color: var(--muted); font-size: 11px; }
.crop figcaption b { color: var(--ink); font-size: 13px; }
.none { color: var(--muted); font-style: italic; }
.top { font-size: 12px; margin: 8px 0 0; }
td.path { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; overflow-wrap: anywhere; }
footer { margin-top: 36px; font-size: 12px; color: var(--muted); border-top: 1px solid var(--line); padding-top: 8px; }
.k-blast { color: #dc1414; } .k-other { color: #14a03c; } .k-smudge { color: #888; }
@media print { body { background: #fff; } main { padding: 0; } .patient { break-inside: avoid-page; } }
</style></head><body><main>"""
