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
VIEWPORT = {"width": 1440, "height": 860}


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


def shoot(context, url: str, expect: str, out: Path, action=None) -> None:
    """Open `url`, wait for the text `expect` and for the page to settle, run `action(page)`, save `out`."""
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
    page.screenshot(path=str(out))
    page.close()
    print(out)


def open_backfill_dialog(page) -> None:
    """Click "Materialize all" on the asset graph: Dagster asks which rounds (partitions) to launch."""
    page.get_by_role("button", name="Materialize all").first.click()
    page.get_by_text("Launch", exact=False).last.wait_for(timeout=30_000)


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
            context = browser.new_context(viewport=VIEWPORT)
            shoot(context, f"{url}/asset-groups", "diversity_scores", args.out / "ui-asset-graph.png")
            shoot(context, f"{url}/assets/pool?view=partitions", "r002", args.out / "ui-pool-partitions.png")
            shoot(context, f"{url}/assets/diversity_scores?view=partitions&partition=r002", "gvendi",
                  args.out / "ui-diversity-scores.png")
            shoot(context, f"{url}/automation", "next_round_sensor", args.out / "ui-automation.png")
            shoot(context, f"{url}/asset-groups", "diversity_scores", args.out / "ui-backfill.png",
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
