"""`Store.write_report`: a round's report beside its tables, on a local store and on S3 (moto's server),
seen by no table listing or glob."""

import glob

import boto3
import polars as pl
import pytest
from moto_server import moto_server

from prismatic.storage.factory import open_store

BUCKET = "prism-report-test"
PAGE = b"<!DOCTYPE html><title>atlas</title>" * 100


def one_table(store) -> None:
    store.write("diversity_scores", "r001", pl.DataFrame({"metric": ["gvendi"], "value": [2.0], "n": [3],
                                                          "details": ["{}"]}))


def test_a_local_report_is_published_beside_the_round_tables(tmp_path):
    store = open_store(tmp_path / "store")
    one_table(store)
    where = store.write_report("r001", "atlas.html", PAGE)
    assert where == str(tmp_path / "store" / "_reports" / "round=r001" / "atlas.html")
    assert (tmp_path / "store" / "_reports" / "round=r001" / "atlas.html").read_bytes() == PAGE
    assert store.write_report("r001", "atlas.html", PAGE[:50]) == where  # replaced whole
    assert (tmp_path / "store" / "_reports" / "round=r001" / "atlas.html").read_bytes() == PAGE[:50]
    assert len(list((tmp_path / "store" / "_reports" / "round=r001").iterdir())) == 1  # no temporary file left
    assert store.tables() == ["diversity_scores"] and glob.glob(store.glob("diversity_scores")) == [
        store.location("diversity_scores", "r001")]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log", BUCKET) as env:
        yield env


def test_an_s3_report_is_one_object_beside_the_round_tables(s3_env):
    store = open_store(f"s3://{BUCKET}/runs/a")
    one_table(store)
    where = store.write_report("r001", "atlas.html", PAGE)
    assert where == f"s3://{BUCKET}/runs/a/_reports/round=r001/atlas.html"
    reply = boto3.client("s3").get_object(Bucket=BUCKET, Key="runs/a/_reports/round=r001/atlas.html")
    assert reply["Body"].read() == PAGE and reply["ContentType"] == "text/html; charset=utf-8"
    assert store.tables() == ["diversity_scores"] and store.rounds("diversity_scores") == ["r001"]
