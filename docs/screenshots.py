"""The Dagster UI screenshots of the docs (`make screenshots`): headless Chromium (Debian's, driven by playwright)
against a `dagster-webserver` on 127.0.0.1 over a home that `make demo` filled, saved as docs/images/ui-*.png.

    .venv/bin/python docs/screenshots.py [--home $PRISM_HOME] [--out docs/images]

Only the webserver is started, never the daemon, so nothing runs: the backfill screenshot shows the dialog that
launches one, closed without launching. Exits non-zero, naming the page, when a page does not show what it should.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 900}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_webserver(home: Path, port: int, log: Path) -> subprocess.Popen:
    """`dagster-webserver` on the home's instance, in its own process group; returns once it answers."""
    env = dict(os.environ, DAGSTER_HOME=str(home / "dagster"), PRISM_HOME=str(home))
    with log.open("w") as out:
        process = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1",
                                    "-p", str(port), "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dagster-webserver exited with {process.returncode}; its log: {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"dagster-webserver did not answer within 180 s; its log: {log}")


def graph_area(page) -> dict:
    """The rectangle around every node of the asset graph, with a margin: the graph without the empty canvas."""
    boxes = [box for node in page.locator("svg foreignObject").all() if (box := node.bounding_box())]
    left, top = min(b["x"] for b in boxes) - 24, min(b["y"] for b in boxes) - 24
    right, bottom = max(b["x"] + b["width"] for b in boxes) + 24, max(b["y"] + b["height"] for b in boxes) + 24
    return {"x": max(left, 0), "y": max(top, 0), "width": right - max(left, 0), "height": bottom - max(top, 0)}


def shoot(context, url: str, expect: str, out: Path, action=None, clip=None) -> None:
    """Open `url`, wait for the text `expect` and for the page to settle, run `action(page)`, save `out` (the
    rectangle `clip(page)` when given, else the window)."""
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=90_000)
    try:
        page.get_by_text(expect, exact=False).first.wait_for(timeout=90_000)
    except Exception as exc:  # playwright's TimeoutError
        raise SystemExit(f"{url}: {expect!r} never appeared ({exc.__class__.__name__})") from None
    page.wait_for_load_state("networkidle", timeout=60_000)
    if action is not None:
        action(page)
    page.wait_for_timeout(1500)  # let the graph layout and charts finish drawing
    page.screenshot(path=str(out), clip=clip(page) if clip else None)
    page.close()
    print(out)


def expand_groups(page) -> None:
    """The global lineage shows each asset group folded when there are several: unfold every group, reload."""
    page.locator("foreignObject").first.wait_for(timeout=90_000)
    icons = page.locator('foreignObject [aria-label="unfold_more"]')
    for _ in range(10):  # each click redraws the graph: click the first folded group until none is left
        if icons.count() == 0:
            break
        icons.first.click()
        page.wait_for_timeout(1000)
    page.reload(wait_until="domcontentloaded")  # the unfolded groups are remembered; a fresh load fits the view
    page.get_by_text("diversity_scores", exact=True).first.wait_for(timeout=90_000)
    page.wait_for_load_state("networkidle", timeout=60_000)


def open_backfill_dialog(page) -> None:
    """Unfold the groups, click "Materialize all" and choose every round (partition) in the dialog."""
    expand_groups(page)
    page.get_by_role("button", name="Materialize all").first.click()
    page.get_by_text("Partition selection", exact=False).first.wait_for(timeout=30_000)
    page.get_by_role("button", name="All", exact=True).first.click()  # every round: r000 … the last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("PRISM_HOME", REPO / ".prism")))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    home = args.home.resolve()
    if not (home / "store" / "diversity_scores").is_dir():
        raise SystemExit(f"{home} holds no rounds: run `make demo` (or `prism demo --home {home}`) first")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: run `make browser` (Debian package chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_webserver(home, port, home / "logs" / "screenshots-webserver.log")
    try:
        httpx.post(f"{url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30)  # no first-visit dialog
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=2)  # sharp text when scaled down
            shoot(context, f"{url}/asset-groups", "Global asset lineage", args.out / "ui-asset-graph.png",
                  action=expand_groups, clip=graph_area)
            shoot(context, f"{url}/assets/pool?view=partitions&partition=r002", "dagster/row_count",
                  args.out / "ui-pool-partitions.png")
            shoot(context, f"{url}/assets/diversity_scores?view=partitions&partition=r002", "gvendi",
                  args.out / "ui-diversity-scores.png")
            shoot(context, f"{url}/automation", "next_round_sensor", args.out / "ui-automation.png")
            shoot(context, f"{url}/asset-groups", "Global asset lineage", args.out / "ui-backfill.png",
                  action=open_backfill_dialog)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


if __name__ == "__main__":
    main()
