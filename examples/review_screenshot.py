"""Take examples/review.png: a patient's page of `allray review` in headless Chromium (Debian's package).

    .venv/bin/python examples/review_screenshot.py [REPORT]

REPORT is an `allray infer` output (e.g. demo-out/report); without it, the synthetic report of
benchmarks/review_speed.py is used (crops cut from pipeline.synth smears). Two cells are corrected
by keyboard first, so the page shows a review in progress.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def main() -> None:
    import uvicorn
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from review_speed import copy_report, synthetic_base

    from jobs.review import create_app
    from pipeline.review.cells import ReviewConfig

    tmp = Path(tempfile.mkdtemp())
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else synthetic_base(tmp / "base", 150)
    report = tmp / "report"
    copy_report(src, report, 450, 3)
    config = ReviewConfig(report=str(report), port=8797, reviewer="A. Tech")
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=config.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{config.port}/patient?id=P000")
        page.wait_for_load_state("load")
        for gallery, key in (("#g-lymphoblast", "3"), ("#g-unsure", "c"), ("#g-unsure", "1")):
            n = page.locator("#n-changed").inner_text()
            page.locator(f"{gallery} .cell").first.click()
            page.keyboard.press(key)
            page.wait_for_function("n => document.getElementById('n-changed').textContent !== n", arg=n)
        page.locator("#g-unsure .cell").nth(1).click()
        page.evaluate("() => window.scrollTo(0, 0)")
        time.sleep(0.3)
        png = page.screenshot(full_page=False)
        browser.close()
    server.should_exit = True
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=96)
    out = REPO / "examples" / "review.png"
    image.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
