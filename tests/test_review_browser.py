"""`allray review` driven in headless Chromium (Debian's /usr/bin/chromium through Playwright): marked slow.

The server is the real app on uvicorn in a thread on a free 127.0.0.1 port (127.0.0.2 for the token test).
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from click.testing import CliRunner
from review_data import XSS_ID, ReviewServer, free_port, write_report

from pipeline.review.cells import ReviewConfig, load_report
from pipeline.review.exports import safe_filename

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def expect(locator):
    from playwright.sync_api import expect as _expect

    return _expect(locator)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian's chromium package; `make test` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is needed for the browser tests")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def report(tmp_path):
    return write_report(tmp_path / "report")


def _page(browser):
    ctx = browser.new_context()
    page = ctx.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return ctx, page, dialogs


def _cli(*args):
    from jobs.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_review_scenario_correct_sign_off_reopen_export(browser, report, tmp_path):
    cfg = ReviewConfig(report=str(report), port=free_port(), reviewer="ann")
    with ReviewServer(cfg) as srv:
        ctx, page, dialogs = _page(browser)
        page.goto(srv.url + "/")
        assert page.locator("#worklist").get_by_role("link", name="P001").count() == 1
        page.get_by_role("link", name="P001").click()
        blast_pct = page.locator("#blast-pct")
        assert blast_pct.inner_text() == "40.00"
        # keyboard: select a blast, press 3 (lymphocyte): 4 -> 3 blasts of 10
        page.locator("#g-lymphoblast .cell").first.click()
        page.keyboard.press("3")
        expect(blast_pct).to_have_text("30.00")
        assert page.locator("#g-lymphocyte .cell").count() == 1
        # click: another blast, then the neutrophil button: 2 of 10
        page.locator("#g-lymphoblast .cell").first.click()
        page.locator('#toolbar button[data-cls="neutrophil"]').click()
        expect(blast_pct).to_have_text("20.00")
        page.keyboard.press("u")  # undo the click: back to 3 blasts
        expect(blast_pct).to_have_text("30.00")
        page.locator("#g-lymphoblast .cell").first.click()
        page.locator('#toolbar button[data-cls="neutrophil"]').click()
        expect(blast_pct).to_have_text("20.00")
        # sign-off with three unsure cells left: refused, with the reason
        assert page.locator("#g-unsure .cell").count() == 3
        page.locator("#signoff-button").click()
        assert "3 cell(s) are still in the unidentified bin" in page.locator("#error").inner_text()
        assert not (report / "signed").exists()
        # empty the bin: confirm each unsure cell with `c`
        page.goto(srv.url + "/patient?id=P001")
        for _ in range(3):
            n = page.locator("#g-unsure .cell").count()
            page.locator("#g-unsure .cell").first.click()
            page.keyboard.press("c")
            expect(page.locator("#g-unsure .cell")).to_have_count(n - 1)
        assert page.locator("#n-unsure").inner_text() == "0" and blast_pct.inner_text() == "20.00"
        page.locator("#signoff-button").click()
        page.wait_for_selector("#signed")
        page.reload()
        assert page.locator("#status").inner_text() == "signed off" and page.locator("#toolbar").count() == 0
        assert page.locator("#blast-pct").inner_text() == "20.00"
        page.locator(".cell").first.click()
        page.keyboard.press("1")  # read-only: nothing is sent
        record = json.loads((report / "signed" / "P001.json").read_text())
        assert (record["before_review"]["blast_pct"], record["after_review"]["blast_pct"]) == (40.0, 20.0)
        assert (record["n_cells_changed"], record["n_cells_reviewed"], record["reviewer"]) == (2, 5, "ann")
        rows = list(csv.DictReader((report / "patients_reviewed.csv").open()))
        assert [(r["patient_id"], r["n_blasts"], r["blast_pct"]) for r in rows] == [("P001", "2", "20.0")]
        labels_signed = tmp_path / "signed_labels.csv"
        assert _cli("review", str(report), "--export-labels", str(labels_signed)).exit_code == 0
        signed_rows = list(csv.DictReader(labels_signed.open()))
        # signed: all 11 cells reviewed, the 10 white cells with a label, the smudge cell with its class alone
        assert len(signed_rows) == 11 and [r["class"] for r in signed_rows if not r["label"]] == ["smudge"]
        # reopen with a reason
        page.locator("#reopen-reason").fill("recount requested")
        page.locator("#reopen-button").click()
        page.wait_for_selector("#toolbar")
        assert page.locator("#status").inner_text() == "in review"
        assert "recount requested" in page.locator("#audit").inner_text()
        assert not (report / "signed" / "P001.json").exists()
        assert dialogs == []
        ctx.close()
    labels, audit = tmp_path / "labels.csv", tmp_path / "audit.csv"
    assert _cli("review", str(report), "--export-labels", str(labels), "--export-audit", str(audit)).exit_code == 0
    cells = load_report(report).patients["P001"]
    by_pos = {(round(float(x), 2), round(float(y), 2)): (p, float(c)) for x, y, p, c in
              zip(cells.x, cells.y, cells.predicted, cells.confidence)}  # fmt: skip
    got = [(by_pos[(float(r["x"]), float(r["y"]))], r["label"]) for r in csv.DictReader(labels.open())]
    # two blasts moved to lymphocyte / neutrophil (label 0), three unsure confirmed as they were
    assert sorted(label for _, label in got) == ["0", "0", "0", "0", "1"]
    assert sum(1 for (p, c), label in got if p == "lymphoblast" and label == "0") == 2
    assert sum(1 for (p, c), _ in got if c < 0.8) == 3
    actions = [(r["action"], r["from_class"], r["to_class"], r["reason"]) for r in csv.DictReader(audit.open())]
    assert [a[0] for a in actions] == [
        "correct",
        "correct",
        "undo",
        "correct",
        "correct",
        "correct",
        "correct",
        "sign_off",
        "reopen",
    ]
    assert actions[0][1:3] == ("lymphoblast", "lymphocyte") and actions[2][1:3] == ("neutrophil", "lymphoblast")
    assert actions[-1][3] == "recount requested"


def test_token_csrf_and_escaping_in_the_browser(browser, report):
    cfg = ReviewConfig(report=str(report), port=free_port(), host="127.0.0.2", token="tok-123", reviewer="ann")
    with ReviewServer(cfg) as srv:
        ctx, page, dialogs = _page(browser)
        assert page.goto(srv.url + "/").status == 401
        assert page.goto(srv.url + "/?token=tok-123").status == 200
        assert page.goto(srv.url + "/").status == 200  # the cookie carries the token from now on
        link = page.get_by_role("link", name=XSS_ID)
        assert link.count() == 1 and page.locator("img[src=x]").count() == 0
        link.click()
        assert page.locator("#patient-id").inner_text() == XSS_ID
        key = load_report(report).patients["P001"].keys[0]
        status = page.evaluate(
            """async (key) => (await fetch('/cell', {method: 'POST', body: new URLSearchParams(
            {patient: 'P001', key: key, cls: 'monocyte', reviewer: 'mallory'})})).status""",
            key,
        )
        assert status == 403
        assert srv.app.state.store.audit() == []
        assert dialogs == []
        ctx.close()
        other = browser.new_context()  # a browser that never had the token
        assert other.new_page().goto(srv.url + "/patient?id=P001").status == 401
        other.close()


def test_two_sessions_on_one_patient_lose_no_change(browser, report):
    cfg = ReviewConfig(report=str(report), port=free_port())
    cells = load_report(report).patients["P002"]
    with ReviewServer(cfg) as srv:
        pages = []
        for name in ("ann", "bob"):
            ctx, page, _ = _page(browser)
            page.goto(srv.url + "/patient?id=P002")
            page.locator("#reviewer").fill(name)
            pages.append((ctx, page))
        (_, a), (_, b) = pages
        first = cells.keys[0]
        sel = f'.cell[data-key="{first}"]'
        a.locator(sel).click()
        a.keyboard.press("3")  # ann: lymphocyte
        expect(a.locator(f"#g-lymphocyte {sel}")).to_have_count(1)
        b.locator(sel).click()
        b.keyboard.press("4")  # bob, later: monocyte wins
        expect(b.locator(f"#g-monocyte {sel}")).to_have_count(1)
        # a burst at once from both: each page sends its corrections concurrently
        burst = """async ([keys, cls, who]) => {
            const csrf = document.querySelector('meta[name=csrf]').content;
            const r = await Promise.all(keys.map((k) => fetch('/cell', {method: 'POST', headers: {'X-CSRF-Token': csrf},
                body: new URLSearchParams({patient: 'P002', key: k, cls: cls, reviewer: who})})));
            return r.map((x) => x.status); }"""
        rest = cells.keys[1:]
        pa_ = a.evaluate_handle(burst, [rest, "eosinophil", "ann"])
        pb_ = b.evaluate_handle(burst, [rest[::-1], "basophil", "bob"])
        assert pa_.json_value() == [200] * len(rest) and pb_.json_value() == [200] * len(rest)
        store = srv.app.state.store
        audit = store.audit("P002")
        assert len(audit) == 2 + 2 * len(rest)  # every write is in the trail
        decided = store.decisions("P002")
        assert decided[first] == "monocyte" and set(decided) == set(cells.keys)
        for key in rest:  # the later write of each cell wins, and its "from" is the earlier one's "to"
            rows = [r for r in audit if r["cell_key"] == key]
            assert decided[key] == rows[-1]["to_class"] and rows[1]["from_class"] == rows[0]["to_class"]
        first_rows = [(r["reviewer"], r["from_class"], r["to_class"]) for r in audit if r["cell_key"] == first]
        assert first_rows == [("ann", cells.predicted[0], "lymphocyte"), ("bob", "lymphocyte", "monocyte")]
        # ann's page still shows the counts of her own last change, from before bob's: refused as stale
        a.locator("#signoff-button").click()
        assert "stale" in a.locator("#error").inner_text()
        for ctx, _ in pages:
            ctx.close()
    assert not (report / "signed" / f"{safe_filename('P002')}.json").exists()
