"""The atlas in a real browser: Debian's Chromium, headless, driven by playwright, with the network off. The
page loads without a console error, plots the pool and every candidate, shows a sample on hover and on click,
filters its table by text and by status, and its screenshot is not blank; 100,000 pool rows stay under 25 MB
and draw."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from atlas_store import AtlasStore, build

from prismatic.report.gather import gather
from prismatic.report.page import write_report
from prismatic.storage.deltas import read_as_of

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (Debian package chromium)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Opened:
    """A page of the atlas opened offline: its console errors and every request that left file://."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(offline=True, viewport={"width": 1500, "height": 1000})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context.route(re.compile(r"^(?!file:).*"), self._refuse)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready='1']", timeout=120_000)

    def _refuse(self, route):
        self.requests.append(route.request.url)
        route.abort()

    def plotted(self) -> int:
        """Points Plotly drew on the map: the length of each of its traces after its own processing."""
        return self.page.evaluate("document.getElementById('map')._fullData.reduce((n, t) => n + t._length, 0)")


def count_text(page) -> tuple[int, int]:
    shown, total = re.fullmatch(r"([\d,]+) of ([\d,]+) rows", page.inner_text("#table-count")).groups()
    return int(shown.replace(",", "")), int(total.replace(",", ""))


def test_the_atlas_works_offline_in_chromium(browser, tmp_path):
    store = build(tmp_path, rounds=2, seeds=60, problems=40).store
    out = write_report(gather(store, "r002"), tmp_path / "atlas.html")
    opened = Opened(browser, out)
    page = opened.page
    assert opened.errors == [] and opened.requests == []
    previous, selection = read_as_of(store, "pool", "r001"), store.read("selection", "r002")
    assert opened.plotted() == len(previous) + len(selection)
    assert page.evaluate("window.atlas.shown") == len(previous) + len(selection)

    # hovering a point of the map shows its problem, answer and votes; clicking it shows the whole sample
    verified = store.read("verified_samples", "r002").join(selection, on="id").filter(~pl.col("kept"))
    sample = verified.row(0, named=True)
    position = page.evaluate("""(id) => {
        const gd = document.getElementById('map'), records = window.atlas.records;
        const index = records.id.indexOf(id);
        for (const trace of gd._fullData) {
            const at = Array.from(trace.customdata).indexOf(index);
            if (at < 0) continue;
            const size = gd._fullLayout._size, box = gd.getBoundingClientRect();
            return [box.left + size.l + gd._fullLayout.xaxis.l2p(trace.x[at]),
                    box.top + size.t + gd._fullLayout.yaxis.l2p(trace.y[at])];
        }
    }""", sample["id"])
    page.mouse.move(*position)
    page.wait_for_selector("#tooltip:not([hidden])", timeout=10_000)
    tooltip = page.inner_text("#tooltip")
    assert sample["id"] in tooltip and sample["prompt"][:60] in tooltip and sample["response"][:40] in tooltip
    assert f"final answer {sample['answer']}" in tooltip
    assert f"votes {sample['majority_size']} of {sample['votes']} agree" in tooltip
    assert f"selection gain {sample['gain']:.4f}" in tooltip and f"cluster {sample['cluster']}" in tooltip
    page.mouse.click(*position)
    page.wait_for_selector("#detail:not([hidden])", timeout=10_000)
    assert sample["response"] in page.inner_text("#detail-body")
    page.keyboard.press("Escape")

    # the table: every row at first, then the rows whose text holds the searched word (counted here)
    records = page.evaluate("window.atlas.records")
    assert count_text(page)[0] == count_text(page)[1] == len(records["id"])
    word = "garden"
    fields = ("id", "prompt", "response", "answer", "reason")
    expected = sum(any(word in (records[f][i] or "").lower() for f in fields) for i in range(len(records["id"])))
    page.fill("#search", word)
    assert 0 < count_text(page)[0] == expected < len(records["id"])
    cells = page.locator("#samples tbody tr").all_inner_texts()
    assert len(cells) == min(expected, 50)
    page.fill("#search", "")
    page.select_option("#filter-status", "rejected: no_majority")
    assert count_text(page)[0] == store.read("rejections", "r002").filter(reason="no_majority").height
    page.select_option("#filter-status", "kept this round")
    assert count_text(page)[0] == int(selection["kept"].sum())
    page.select_option("#filter-status", "")
    page.select_option("#filter-round", "r000")
    assert count_text(page)[0] == 60

    shot = tmp_path / "atlas.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = plt_image(shot)
    assert pixels.shape[0] > 2000 and pixels.std() > 0.05  # a tall page with something on it
    assert len(np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200  # not blank


def plt_image(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


def test_a_pool_of_100000_rows_stays_under_25_mb_and_draws(browser, tmp_path):
    built = AtlasStore(tmp_path, cluster_ratio=0.01, prompt_words=45, response_words=100)
    built.seed_round(100_000)
    built.round("r001", "r000", 1_000)
    atlas = gather(built.store, "r001")
    out = write_report(atlas, tmp_path / "atlas.html")
    assert out.stat().st_size < 25 * 2**20
    candidates = len(built.store.read("selection", "r001"))
    assert atlas.total_points == 100_000 + candidates and len(atlas.points) == 100_000
    opened = Opened(browser, out)
    assert opened.errors == [] and opened.requests == []
    assert opened.plotted() == 100_000
    assert f"The map shows 100,000 of {100_000 + candidates:,} points" in opened.page.inner_text("#notes")
    opened.page.fill("#search", "seed-099999")
    assert count_text(opened.page)[0] == (1 if "seed-099999" in set(atlas.points["id"]) else 0)
