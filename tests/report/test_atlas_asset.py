"""The `round_report` asset writes the round's atlas beside its tables and shows its map in the metadata;
`prism report` writes the same page, and refuses a missing round in one line without writing."""

import base64
import json
import re
import shutil

import pytest
from atlas_store import build
from conftest import run_prism
from dagster import DagsterInstance, materialize

from prism_assets.assets.report import REPORT_FILE, round_report
from prismatic.report.gather import gather
from prismatic.report.page import render
from resources.home import PrismHome
from resources.store import StoreResource


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas-home")
    build(root, rounds=2, seeds=50, problems=30)  # <root>/store, the home's default store
    (root / "prism.yaml").write_text("metrics:\n  names: [gvendi]\n")
    return root


def test_the_asset_writes_the_page_beside_the_tables_with_the_map_inline(home):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r000", "r001", "r002"])
    prism_home = PrismHome(home=str(home))
    result = materialize([round_report], partition_key="r002", instance=instance,
                         resources={"store": StoreResource(prism_home=prism_home)})
    assert result.success
    metadata = result.asset_materializations_for_node("round_report")[0].metadata
    path = home / "store" / "_reports" / "round=r002" / REPORT_FILE
    assert metadata["report_path"].value == str(path) and metadata["report"].value == f"file://{path}"
    page = path.read_text()
    assert page == render(gather(StoreResource(prism_home=prism_home).store(), "r002"))  # one page, deterministic
    assert metadata["report_bytes"].value == len(page.encode())
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", metadata["map"].value)[1])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (480, 336)  # 6 × 4.2 in at 80 dpi
    selection = StoreResource(prism_home=prism_home).store().read("selection", "r002")
    assert metadata["kept_this_round"].value == int(selection["kept"].sum())
    assert metadata["not_kept_this_round"].value == int((~selection["kept"]).sum())


def test_prism_report_writes_the_latest_round_and_refuses_a_missing_one(home, tmp_path):
    out = tmp_path / "atlas.html"
    done = run_prism("report", "--out", out, "--json", home=home)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["round"] == "r002" and payload["bytes"] == out.stat().st_size and payload["projection"] == "pca"
    assert out.read_text().startswith("<!DOCTYPE html>")

    missing = tmp_path / "missing.html"
    refused = run_prism("report", "--round", "r005", "--out", missing, home=home)
    assert refused.returncode == 2 and not missing.exists()
    assert refused.stderr.strip().splitlines() == [
        f"prism: error: round r005 is not in the store at {home / 'store'} (its rounds: r000, r001, r002)"]

    bare = tmp_path / "bare"
    shutil.copytree(home / "store", bare / "store")
    shutil.rmtree(bare / "store" / "gradient_features")
    refused = run_prism("report", "--round", "r001", "--out", missing, home=bare)
    assert refused.returncode == 2 and not missing.exists()
    assert refused.stderr.strip().splitlines() == [
        f"prism: error: the store at {bare / 'store'} has no gradient_features for round r001: the map needs them "
        "(rematerialize gradient_features of r001)"]
