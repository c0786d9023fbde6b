"""The run folder as a report site, opened in a real headless Chromium (Debian's, via `make browser`).

Table 1 -> its links (CAM gallery, localization table) -> every page: each image loads, no console
error, no failed request, no page error. The gallery's screenshot is kept as a test artifact in
``SDFN_TEST_ARTIFACTS`` (default ``reports/test-artifacts/`` of the repository).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cam_helpers import CLASS, fake_cams_run

from sdfn_bench.report.gallery import link_reports, screenshot, write_gallery
from sdfn_bench.report.localization import localize_run

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("SDFN_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "reports" / "test-artifacts"))


def _browser_or_skip():
    if not CHROMIUM.is_file():
        pytest.skip("no /usr/bin/chromium: `make browser` installs Debian's chromium (needs root and apt)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    return playwright.sync_playwright


def _visit(page, url: str) -> dict[str, object]:
    """Open ``url`` in a fresh page; collect problems, images (src, loaded) and links."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.goto(url, wait_until="load")
    images = page.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
    links = page.evaluate("[...document.links].map(a => a.href)")
    return {"problems": problems, "images": images, "links": links}


def test_report_site_opens_in_chromium(tmp_path):
    sync_playwright = _browser_or_skip()
    run_dir, boxes = fake_cams_run(tmp_path)
    # Table 1 as `compare` writes it is tested with the demo; here a bare page, linked the same way
    (run_dir / "table1.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>Table 1</title>"
                                         "</head><body><h1>Table 1</h1></body></html>\n")
    localize_run(run_dir, boxes, n_boot=20)
    write_gallery(run_dir, CLASS, top=4)
    write_gallery(run_dir, "Mass", images=["images/img_01.png"])
    assert link_reports(run_dir)  # idempotent: the links appear once
    assert (run_dir / "table1.html").read_text().count("gallery/index.html") == 1
    user_data = tmp_path / "chromium-profile"  # a fresh profile every run
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(user_data), executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            table = _visit(page, (run_dir / "table1.html").as_uri())
            assert table["problems"] == []
            targets = [u for u in table["links"] if u.startswith("file:")]
            assert {Path(u.removeprefix("file://")).name for u in targets} >= {"index.html", "localization.html"}
            seen_images = 0
            for url in targets:
                page = browser.new_page()
                visit = _visit(page, url)
                assert visit["problems"] == [], url
                assert all(ok for _, ok in visit["images"]), visit["images"]
                seen_images += len(visit["images"])
                if url.endswith("gallery/index.html"):
                    assert len(visit["images"]) == 5  # 4 Nodule + 1 Mass overlays
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    shot = tmp_path / "gallery.png"
                    page.screenshot(path=str(shot), full_page=True)
                    assert shot.stat().st_size > 10_000
                    shutil.copyfile(shot, ARTIFACTS / "gallery.png")
                page.close()
            assert seen_images == 5
        finally:
            browser.close()
    # the demo's README picture: the browser's own --screenshot with the flags of CHROMIUM_FLAGS
    shot = screenshot(run_dir / "gallery" / "index.html", tmp_path / "cli.png", width=800, height=600)
    assert shot is not None and shot.stat().st_size > 10_000
