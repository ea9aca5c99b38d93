"""`prism report`: the round atlas, one self-contained HTML file (prismatic/report, docs/atlas.md).

`prism_cli.main` registers it (`register`). Like every command, `--json` prints one JSON object on
stdout, and a user-fixable error (a round not in the store, a store without gradient features) is one
line, written before anything is: the file appears only once the page is complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

Home = Annotated[Path | None, typer.Option("--home", help="Prism home (default $PRISM_HOME, else ./.prism).",
                                           show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def register(app: typer.Typer) -> None:
    """Add `report` to the `prism` app."""
    app.command("report")(report)


def report(out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")],
           round_: Annotated[str | None, typer.Option("--round", help="Round key, e.g. r002 (default: the latest "
                                                      "finished round).", show_default=False)] = None,
           projection: Annotated[str, typer.Option("--projection", help="pca (fitted on the pool) | umap.")] = "pca",
           max_points: Annotated[int, typer.Option("--max-points", help="Points on the map; above it, a seeded "
                                                   "sample (the page says so).")] = 100_000,
           store: Annotated[str | None, typer.Option("--store", help="Store URI (overrides prism.yaml and "
                                                     "$PRISM_STORE).", show_default=False)] = None,
           as_json: Json = False, home: Home = None) -> None:
    """Write the atlas of a round: its gradient-space map, clusters, rounds, rejections and samples, as one
    HTML file that opens offline."""
    from prismatic.config_file import load_config
    from prismatic.report.gather import gather, latest_round
    from prismatic.report.page import summary, write_report
    from prismatic.storage.factory import open_store

    started = time.perf_counter()
    config = load_config(home)
    opened = open_store(store or config.store_uri, s3=config.s3)
    atlas = gather(opened, round_ or latest_round(opened), projection=projection, max_points=max_points)
    path = write_report(atlas, out)
    payload = {"out": str(path), "bytes": path.stat().st_size, **summary(atlas),
               "seconds": round(time.perf_counter() - started, 2)}
    if as_json:
        print(json.dumps(payload))
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")
