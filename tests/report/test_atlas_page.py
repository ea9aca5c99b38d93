"""The atlas page: self-contained HTML, records that decode to the atlas's rows, texts cut to a budget."""

import base64
import gzip
import json
import re

import numpy as np
import pytest
from atlas_store import build

from prismatic.report.gather import gather
from prismatic.report.page import ELLIPSIS, _records, fit_records, render, write_report


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return gather(build(tmp_path_factory.mktemp("atlas"), rounds=1, seeds=40, problems=20).store, "r001")


def decode(encoded: str) -> dict:
    return json.loads(gzip.decompress(base64.b64decode(encoded)))


def values(array) -> list:
    """A Plotly array: a list, or a typed array {dtype, bdata} (base64 of little-endian values)."""
    if isinstance(array, dict):
        dtype = np.dtype(array["dtype"]).newbyteorder("<")
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=dtype).tolist()
    return list(array)


def test_the_page_holds_everything_it_needs(atlas, tmp_path):
    page = render(atlas)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|url\(http", page)  # nothing to fetch
    meta = json.loads(re.search(r'<script type="application/json" id="atlas-meta">(.*?)</script>', page, re.S)[1])
    assert set(meta["figures"]) == {"map", "clusters", "gvendi", "gains", "counts", "tokens", "reasons"}
    traces = meta["figures"]["map"]["data"]
    assert [t["type"] for t in traces] == ["scattergl"] * 4
    records = decode(re.search(r'id="atlas-records">(.*?)</script>', page, re.S)[1])
    assert records["id"][:len(atlas.points)] == atlas.points["id"].to_list()
    assert records["prompt"][:len(atlas.points)] == atlas.points["prompt"].to_list()  # whole: within the budget
    assert records["reason"][len(atlas.points):] == atlas.rejections["reason"].to_list()
    # every trace point refers to the record of the same sample, whose status is the trace's
    for trace in traces:
        indices = values(trace["customdata"])
        status = trace["name"].rsplit(" (", 1)[0]
        assert {meta["statuses"][records["status"][i]] for i in indices} <= {status}
    assert sum(len(values(t["x"])) for t in traces) == len(atlas.points)
    out = write_report(atlas, tmp_path / "deep" / "atlas.html")
    assert out.read_text() == page


def test_texts_are_cut_at_one_length_to_fit_the_budget(atlas):
    records = _records(atlas)
    whole, cut, _ = fit_records(records)
    assert cut is None and decode(whole) == json.loads(json.dumps(records))
    budget = len(whole) // 3
    encoded, limit, only_others = fit_records(records, budget=budget)
    assert len(encoded) <= budget and limit is not None and limit >= 8 and not only_others
    clipped = decode(encoded)
    for name in ("prompt", "response", "detail"):
        for before, after in zip(records[name], clipped[name]):
            assert after == (before if before is None or len(before) <= limit else before[:limit] + ELLIPSIS)
    assert clipped["id"] == records["id"] and clipped["gain"] == records["gain"]


def test_this_rounds_texts_stay_whole_while_the_earlier_ones_make_room(atlas):
    records = _records(atlas)
    current = np.zeros(len(records["id"]), dtype=bool)
    current[-8:] = True  # a few of this round's records (the page marks its candidates and rejections)
    full, _, _ = fit_records(records)
    budget = int(len(full) * 0.7)
    encoded, limit, only_others = fit_records(records, budget=budget, whole=current)
    assert len(encoded) <= budget and only_others and limit is not None
    clipped = decode(encoded)
    for name in ("prompt", "response"):
        for before, after, keep in zip(records[name], clipped[name], current):
            expected = before if keep or before is None or len(before) <= limit else before[:limit] + ELLIPSIS
            assert after == expected
    assert any(after.endswith(ELLIPSIS) for after in clipped["prompt"] if after)
    # when this round's texts alone would not leave the others room, every text is cut at one length
    _, limit, only_others = fit_records(records, budget=len(full) // 4, whole=np.ones(len(current), dtype=bool))
    assert not only_others and limit is not None
