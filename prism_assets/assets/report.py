"""The round's atlas (prismatic/report): one self-contained HTML page per round, written beside its tables
(`<store>/_reports/round=<rNNN>/atlas.html`), with a small PNG of its map in the metadata."""

import base64
import hashlib

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue

from prism_assets.assets.clusters import clusters
from prism_assets.assets.diversity import diversity_scores
from prism_assets.automation.jobs import REPORT_GROUP
from prism_assets.partitions import round_asset
from prismatic.report.gather import gather
from prismatic.report.page import render, summary
from prismatic.report.png import map_png
from resources.store import StoreResource

REPORT_FILE = "atlas.html"


@round_asset(deps=[clusters, diversity_scores], kinds={"plotly"}, code_version="1", group_name=REPORT_GROUP,
             description="The round's atlas: one HTML file that opens offline (`prism report` writes the same page): a "
                         "2-D PCA map of the gradient features of the pool and the round's candidates (seed, kept "
                         "earlier, kept this round, not kept; sparse clusters outlined), the clusters the round was "
                         "judged against with the sparse threshold, G-Vendi and its gain against chance per round, the "
                         "rejections with examples, and a searchable sample table. Written to "
                         "<store>/_reports/round=<rNNN>/atlas.html; the metadata shows the map.")
def round_report(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    atlas = gather(store.store(), key)
    page = render(atlas).encode()
    location = store.store().write_report(key, REPORT_FILE, page)
    png = base64.b64encode(map_png(atlas)).decode()
    link = location if location.startswith("s3://") else f"file://{location}"
    facts = {k: v for k, v in summary(atlas).items() if v is not None}
    return MaterializeResult(data_version=DataVersion(hashlib.sha256(page).hexdigest()[:16]), metadata={
        "report": MetadataValue.url(link), "report_path": MetadataValue.path(location),
        "report_bytes": len(page),
        "map": MetadataValue.md(f"![map of {key}](data:image/png;base64,{png})\n\n"
                                f"The whole atlas: [{REPORT_FILE}]({link}) (open it in a browser)."),
        **facts})
