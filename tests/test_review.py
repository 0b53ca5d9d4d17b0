"""`allray review` without a browser: the store, counts, exports and the HTTP safety rules (a real uvicorn server)."""

from __future__ import annotations

import csv
import json
import re

import httpx
import pytest
from click.testing import CliRunner
from review_data import XSS_ID, ReviewServer, free_port, write_report

from pipeline import taxonomy
from pipeline.review.cells import ReviewConfig, load_report
from pipeline.review.counts import count_patient
from pipeline.review.exports import neutralise, safe_filename
from pipeline.review.store import ReviewRefused, ReviewStore


@pytest.fixture()
def report(tmp_path):
    return write_report(tmp_path / "report")


def _store(report_dir):
    r = load_report(report_dir)
    return r, ReviewStore(f"sqlite:///{report_dir / 'review.sqlite'}", r.fingerprint, str(report_dir))


def test_corrections_change_counts_and_are_audited_undo_restores(report):
    r, store = _store(report)
    cells = r.patients["P001"]
    blast = next(k for k, p in zip(cells.keys, cells.predicted) if p == taxonomy.LYMPHOBLAST)
    assert count_patient(cells, store.decisions("P001"), 0.8, 20, 5).row["n_blasts"] == 4
    before, rev, _ = store.set_class("P001", blast, taxonomy.LYMPHOCYTE, "ann", before=taxonomy.LYMPHOBLAST)
    c = count_patient(cells, store.decisions("P001"), 0.8, 20, 5)
    assert (before, c.row["n_blasts"], c.row["n_cells"], c.blast_pct, c.n_changed) == ("lymphoblast", 3, 10, 30.0, 1)
    store.set_class("P001", blast, "", "ann", action="undo", before=taxonomy.LYMPHOBLAST)
    assert store.decisions("P001") == {}
    audit = store.audit("P001")
    assert [(a["action"], a["from_class"], a["to_class"]) for a in audit] == [
        ("correct", "lymphoblast", "lymphocyte"),
        ("undo", "lymphocyte", "lymphoblast"),
    ]
    assert store.revision("P001") == audit[-1]["id"] > rev
    store.close()


def test_not_a_cell_and_smudge_leave_the_count(report):
    r, store = _store(report)
    cells = r.patients["P001"]
    others = [k for k, p in zip(cells.keys, cells.predicted) if p == taxonomy.OTHER]
    store.set_class("P001", others[0], "not_a_cell", "ann")
    store.set_class("P001", others[1], taxonomy.SMUDGE, "ann")
    c = count_patient(cells, store.decisions("P001"), 0.8, 20, 5)
    assert (c.row["n_cells"], c.row["n_blasts"], c.row["n_smudge"], c.blast_pct) == (8, 4, 2, 50.0)
    store.close()


def test_sign_off_refused_when_stale_and_read_only_after_reopen_needs_reason(report):
    r, store = _store(report)
    key = r.patients["P002"].keys[0]
    rev = store.revision("P002")
    store.set_class("P002", key, taxonomy.NEUTROPHIL, "bob")  # another session changes the patient
    with pytest.raises(ReviewRefused, match="stale"):
        store.sign_off("P002", "ann", rev, {"signed_at": "t"})
    store.sign_off("P002", "ann", store.revision("P002"), {"signed_at": "t"})
    with pytest.raises(ReviewRefused, match="read-only"):
        store.set_class("P002", key, taxonomy.LYMPHOBLAST, "ann")
    with pytest.raises(ReviewRefused, match="reason"):
        store.reopen("P002", "ann", "  ")
    store.reopen("P002", "ann", "wrong slide")
    store.set_class("P002", key, taxonomy.LYMPHOBLAST, "ann")
    assert [a["action"] for a in store.audit("P002")] == ["correct", "sign_off", "reopen", "correct"]
    assert store.audit("P002")[2]["reason"] == "wrong slide"
    store.close()


def test_audit_is_append_only_in_the_database(report):
    import sqlalchemy as sa

    r, store = _store(report)
    store.set_class("P001", r.patients["P001"].keys[0], taxonomy.MONOCYTE, "ann")
    for sql in ("UPDATE audit SET reviewer = 'eve'", "DELETE FROM audit"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as conn:
            conn.exec_driver_sql(sql)
    assert [a["reviewer"] for a in store.audit()] == ["ann"]
    store.close()


def test_database_of_another_report_is_refused(tmp_path, report):
    other = write_report(tmp_path / "other", patients={"Q1": [0.9, 0.2]})
    _, store = _store(report)
    store.close()
    r2 = load_report(other)
    with pytest.raises(ValueError, match="belongs to another report"):
        ReviewStore(f"sqlite:///{report / 'review.sqlite'}", r2.fingerprint, str(other))


def test_database_is_sqlite_in_wal_mode(report):
    _, store = _store(report)
    with store.engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_neutralise_and_safe_filename():
    assert [neutralise(v) for v in ("=1+1", "+x", "-2", "@a", "\tz", "\rq", "ok", 3)] == [
        "'=1+1",
        "'+x",
        "'-2",
        "'@a",
        "'\tz",
        "'\rq",
        "ok",
        3,
    ]
    name = safe_filename(XSS_ID)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and name != safe_filename("<img src=x onerror=alert(2)>")
    assert safe_filename("P001") == "P001" and safe_filename("../etc").startswith("etc-")


def _cli(*args):
    from jobs.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_export_with_nothing_reviewed_writes_the_header_alone(report, tmp_path):
    out = tmp_path / "labels.csv"
    res = _cli("review", str(report), "--export-labels", str(out), "--export-audit", str(tmp_path / "a.csv"))
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines() == ["image,x,y,r,label"]
    assert (tmp_path / "a.csv").read_text().splitlines()[0].startswith("id,at,reviewer")
    assert not (report / "review.sqlite").exists()  # exporting creates no database


def test_exported_labels_are_what_ingest_reads(report, tmp_path):
    from pipeline.sources import read_labels

    r, store = _store(report)
    cells = r.patients["P001"]
    blast = next(i for i, p in enumerate(cells.predicted) if p == taxonomy.LYMPHOBLAST)
    other = next(i for i, p in enumerate(cells.predicted) if p == taxonomy.OTHER)
    store.set_class("P001", cells.keys[blast], taxonomy.LYMPHOCYTE, "ann")
    store.set_class("P001", cells.keys[other], taxonomy.LYMPHOBLAST, "ann")
    store.set_class("P001", cells.keys[-1], "not_a_cell", "ann")  # not exported: no label for it
    store.close()
    out = tmp_path / "labels.csv"
    assert _cli("review", str(report), "--export-labels", str(out)).exit_code == 0
    labels = read_labels(out)
    assert list(labels) == [cells.image[blast]]  # the image path as the predictions (and ingest) name it
    got = sorted((round(x, 2), round(y, 2), lab) for x, y, _, lab in labels[cells.image[blast]])
    # a binary model's export: the lymphocyte goes out as label 0 (other), the new blast as label 1
    want = sorted(
        [
            (round(float(cells.x[blast]), 2), round(float(cells.y[blast]), 2), taxonomy.OTHER),
            (round(float(cells.x[other]), 2), round(float(cells.y[other]), 2), taxonomy.LYMPHOBLAST),
        ]
    )
    assert got == want
    assert "class" not in out.read_text().splitlines()[0]  # blast / other only: the header ingest always read


def test_binary_model_export_keeps_smudge_moves_with_their_class(report, tmp_path):
    from pipeline.sources import read_labels

    r, store = _store(report)
    cells = r.patients["P001"]
    store.set_class("P001", cells.keys[0], taxonomy.SMUDGE, "ann")
    store.set_class("P001", cells.keys[1], taxonomy.LYMPHOCYTE, "ann")
    store.close()
    out = tmp_path / "labels.csv"
    assert _cli("review", str(report), "--export-labels", str(out)).exit_code == 0
    rows = {(float(row["x"]), float(row["y"])): (row["label"], row["class"]) for row in csv.DictReader(out.open())}
    at = [(round(float(cells.x[i]), 2), round(float(cells.y[i]), 2)) for i in (0, 1)]
    assert [rows[p] for p in at] == [("", taxonomy.SMUDGE), ("0", taxonomy.LYMPHOCYTE)]
    read = {(round(x, 2), round(y, 2)): cls for pts in read_labels(out).values() for x, y, _, cls in pts}
    assert [read[p] for p in at] == [taxonomy.SMUDGE, taxonomy.LYMPHOCYTE]  # ingest reads both back


def test_class_model_labels_carry_the_class(tmp_path):
    report = write_report(tmp_path / "creport", class_model=True)
    r, store = _store(report)
    assert r.has_classes
    store.set_class("P002", r.patients["P002"].keys[0], taxonomy.EOSINOPHIL, "ann")
    store.close()
    out = tmp_path / "labels.csv"
    assert _cli("review", str(report), "--export-labels", str(out)).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert [(row["label"], row["class"]) for row in rows] == [("0", "eosinophil")]


def _server(report, **kw):
    return ReviewServer(ReviewConfig(report=str(report), port=free_port(), **kw))


def test_worklist_escapes_ids_and_forged_posts_are_refused(report):
    with _server(report, reviewer="ann") as srv, httpx.Client(base_url=srv.url) as client:
        page = client.get("/")
        assert page.status_code == 200 and "P001" in page.text and "P002" in page.text
        assert "<img src=x onerror" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        key = load_report(report).patients["P001"].keys[0]
        data = {"patient": "P001", "key": key, "cls": "monocyte", "reviewer": "ann"}
        assert client.post("/cell", data=data).status_code == 403  # session cookie, but no CSRF token
        assert httpx.post(srv.url + "/cell", data={**data, "csrf": "x" * 64}).status_code == 403
        csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', page.text).group(1)
        ok = client.post("/cell", data=data, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.json()["cls"] == "monocyte"
        assert client.get("/", headers={"Host": "evil.example:80"}).status_code == 400  # DNS rebinding
        assert client.get("/patient", params={"id": "nobody"}).status_code == 404


def test_token_required_off_loopback(report):
    with _server(report, host="127.0.0.2", token="s3cret-token") as srv:
        assert httpx.get(srv.url + "/").status_code == 401
        assert httpx.get(srv.url + "/", cookies={"allray_token": "wrong"}).status_code == 401
        assert httpx.get(srv.url + "/static/review.js").status_code == 401
        with httpx.Client(base_url=srv.url, follow_redirects=True) as client:
            page = client.get("/", params={"token": "s3cret-token"})
            assert page.status_code == 200 and "P001" in page.text and "token" not in str(page.url)
            assert client.get("/patient", params={"id": "P001"}).status_code == 200  # the cookie carries it


def test_sign_off_over_http_writes_signed_files_and_reviewed_csv(report):
    r = load_report(report)
    with _server(report) as srv, httpx.Client(base_url=srv.url) as client:
        page = client.get("/patient", params={"id": XSS_ID})
        csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', page.text).group(1)
        rev = int(re.search(r'id="revision" value="(\d+)"', page.text).group(1))
        refused = client.post("/signoff", data={"patient": XSS_ID, "reviewer": "ann", "revision": rev, "csrf": csrf})
        assert refused.status_code == 409 and "unidentified bin" in refused.text  # its 0.35 cell is unsure
        cells = r.patients[XSS_ID]
        for k, c in zip(cells.keys, cells.confidence):
            if c < 0.8:
                rev = client.post(
                    "/cell",
                    data={"patient": XSS_ID, "key": k, "cls": "lymphoblast", "reviewer": "ann"},
                    headers={"X-CSRF-Token": csrf},
                ).json()["revision"]
        done = client.post("/signoff", data={"patient": XSS_ID, "reviewer": "ann", "revision": rev, "csrf": csrf})
        assert done.status_code == 303
    name = safe_filename(XSS_ID)
    record = json.loads((report / "signed" / f"{name}.json").read_text())
    assert record["reviewer"] == "ann" and record["patient_id"] == XSS_ID
    assert "<img" not in (report / "signed" / f"{name}.html").read_text()
    rows = list(csv.DictReader((report / "patients_reviewed.csv").open()))
    assert [(row["patient_id"], row["reviewer"]) for row in rows] == [(XSS_ID, "ann")]
    # its unsure 0.35 cell moved to lymphoblast: 2 blasts of 3, one sample, one cell changed
    assert (rows[0]["n_samples"], rows[0]["n_cells"], rows[0]["n_blasts"], rows[0]["n_changed"]) == ("1", "3", "2", "1")
    assert (record["before_review"]["n_blasts"], record["after_review"]["n_blasts"]) == (1, 2)


def test_cli_refuses_a_folder_without_predictions_in_one_line(tmp_path):
    res = CliRunner().invoke(__import__("jobs.cli", fromlist=["cli"]).cli, ["review", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"error: {tmp_path / 'predictions'}: no predictions (*.parquet): give the folder `allray infer --out` wrote"
    ]


def test_any_host_but_127_0_0_1_needs_the_token_and_the_url_carries_it(report):
    from jobs.review import review_url

    assert not ReviewConfig(report=str(report)).needs_token
    for host in ("127.0.0.2", "0.0.0.0", "localhost", "192.168.1.5"):
        assert ReviewConfig(report=str(report), host=host).needs_token
    assert (
        review_url(ReviewConfig(report=str(report), host="0.0.0.0", port=9000, token="abc"))
        == "http://127.0.0.1:9000/?token=abc"
    )
    with pytest.raises(ValueError, match="unsure-below"):
        ReviewConfig(report=str(report), unsure_below=1.5)


def test_class_model_page_shows_the_differential_live(tmp_path):
    report = write_report(tmp_path / "creport", class_model=True)
    cells = load_report(report).patients["P001"]
    neutrophil = next(k for k, p in zip(cells.keys, cells.predicted) if p == taxonomy.NEUTROPHIL)
    with _server(report, reviewer="ann") as srv, httpx.Client(base_url=srv.url) as client:
        page = client.get("/patient", params={"id": "P001"})
        assert "Differential" in page.text and 'id="g-neutrophil"' in page.text
        diff = re.search(r'<table class="diff".*?</table>', page.text, re.S).group(0)
        assert re.search(r"neutrophil</td><td class=\"num\">6</td><td class=\"num\">60.00 %", diff)
        csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', page.text).group(1)
        res = client.post(
            "/cell",
            data={"patient": "P001", "key": neutrophil, "cls": "monocyte", "reviewer": "ann"},
            headers={"X-CSRF-Token": csrf},
        ).json()
        assert re.search(r"neutrophil</td><td class=\"num\">5</td><td class=\"num\">50.00 %", res["counts_html"])
        assert re.search(r"monocyte</td><td class=\"num\">1</td><td class=\"num\">10.00 %", res["counts_html"])
        assert res["blast_pct"] == 40.0
