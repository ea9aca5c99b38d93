"""`prism export`: the store's samples as training data in four formats, each with its dataset card, read
back by `read_training_chats` as exactly the chats written; the same on a local and an S3 store (moto's
server on 127.0.0.1; only AWS itself is replaced); bad options and bad files refused, nothing written."""

from __future__ import annotations

import json
import os
from unittest import mock

import boto3
import datasets
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from student_store import fill_rounds, prism

from prismatic.config import S3Config
from prismatic.data.export import export_dataset, read_training_chats
from prismatic.errors import InputError, PrismError
from prismatic.metrics.vendi import gvendi
from prismatic.storage.catalog import Catalog
from prismatic.storage.deltas import read_as_of
from prismatic.storage.factory import open_store


@pytest.fixture
def home(tmp_path):
    """A home whose local store holds r000 and r001 (`fill_rounds`), with its catalog."""
    home = tmp_path / "home"
    home.mkdir()
    store = open_store(home / "store")
    features = fill_rounds(store)
    Catalog(home / "catalog.duckdb", store).refresh()
    return home, store, features


def chats_of(frame: pl.DataFrame) -> list[list[dict]]:
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            for p, r in zip(frame["prompt"], frame["response"])]


def test_hf_export_loads_back_with_the_rows_of_prism_query(home, tmp_path):
    home, store, features = home
    out = tmp_path / "hf"
    code, stdout, stderr = prism("export", "--format", "hf", "--out", out, "--json", home=home)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["rows"] == 9 and summary["rounds"] == {"r000": 6, "r001": 3}

    loaded = datasets.load_from_disk(str(out))
    code, stdout, stderr = prism("query", "--json", "select id, round_added, task, prompt, response, answer "
                                 "from pool where round = 'r001'", home=home)
    assert code == 0, stderr
    queried = json.loads(stdout)["rows"]
    assert sorted((r["id"], r["round"], r["task"], r["prompt"], r["response"], r["answer"]) for r in loaded) == sorted(
        (r["id"], r["round_added"], r["task"], r["prompt"], r["response"], r["answer"]) for r in queried)
    pool = read_as_of(store, "pool", "r001")
    assert loaded["id"] == pool["id"].to_list()  # the pool's own order
    assert loaded["messages"] == chats_of(pool)

    card = json.loads((out / "dataset_card.json").read_text())
    assert card["per_round"]["r000"]["rows"] == 6 and card["per_round"]["r001"]["rows"] == 3
    scores = dict(store.read("diversity_scores", "r001").select("metric", "value").iter_rows())
    assert card["per_round"]["r001"]["pool_gvendi"] == scores["gvendi"]
    kept = store.read("selection", "r001")["kept"].to_numpy()
    pool_x = np.concatenate([features["r000"], features["r001"][kept]])
    assert card["gvendi"] == pytest.approx(gvendi(pool_x), rel=1e-9)
    assert card["config"]["student"]["base"] == "smollm2-135m-instruct" and card["store"] == str(home / "store")
    assert len(card["commit"]["sha"]) == 40
    assert list(card["sources"]) == ["pool/r000", "pool/r001"]  # the pool as of r001: what each round added
    assert card["sources"]["pool/r001"]["data_version"] == store.data_version("pool", "r001")
    assert "| r001 | 3 |" in (out / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["chat-jsonl", "openai", "hf", "parquet"])
def test_every_format_reads_back_as_the_chats_written(home, tmp_path, fmt):
    _, store, _ = home
    verified = store.read("verified_samples", "r001")
    kept = verified.filter(pl.Series(store.read("selection", "r001")["kept"]))
    for table, rounds, expected in (("verified_samples", "r001", verified), ("selection", "r001:r001", kept),
                                    ("pool", "r001:", kept)):
        out = tmp_path / f"{fmt}-{table}"
        card = export_dataset(store, out, table=table, rounds=rounds, fmt=fmt)
        assert read_training_chats(out) == chats_of(expected), (fmt, table)
        assert card["rows"] == expected.height and list(card["per_round"]) == ["r001"]
    if fmt == "openai":
        assert [set(json.loads(line)) for line in (out / "train.jsonl").read_text().splitlines()] == [{"messages"}] * 3
        assert read_training_chats(out / "train.jsonl") == chats_of(kept)  # the data file alone reads the same
    if fmt == "chat-jsonl":
        rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
        assert [(r["id"], r["round"], r["answer"]) for r in rows] == list(zip(kept["id"], ["r001"] * 3, kept["answer"]))
    if fmt == "parquet":
        assert pq.read_schema(out / "train.parquet").names == ["id", "round", "task", "prompt", "response", "answer",
                                                               "messages"]


def test_an_export_is_the_same_from_an_s3_store(home, tmp_path):
    from moto.server import ThreadedMotoServer

    _, local, _ = home
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with mock.patch.dict(os.environ, aws):
            endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="prism-export")
            remote = open_store("s3://prism-export/store", s3=S3Config(endpoint_url=endpoint))
            fill_rounds(remote)
            cards = {name: export_dataset(store, tmp_path / name, fmt="chat-jsonl")
                     for name, store in (("local", local), ("s3", remote))}
    finally:
        server.stop()
    assert (tmp_path / "s3" / "train.jsonl").read_bytes() == (tmp_path / "local" / "train.jsonl").read_bytes()
    same = ("rows", "per_round", "gvendi", "rounds", "table", "format")
    assert {k: cards["s3"][k] for k in same} == {k: cards["local"][k] for k in same}
    assert cards["s3"]["store"] == "s3://prism-export/store"
    assert cards["s3"]["sources"] == cards["local"]["sources"]  # the same bytes: the same data versions


@pytest.mark.parametrize("args, message", [
    (["--format", "csv"], "option --format: expected one of chat-jsonl, openai, hf, parquet, got 'csv'"),
    (["--table", "clusters"], "option --table: expected one of pool, verified_samples, selection, got 'clusters'"),
    (["--rounds", "r003:r001"], "option --rounds: r003 comes after r001"),
    (["--rounds", "1:3"], "option --rounds: expected FIRST:LAST round keys like r001:r003, got '1:3'"),
    (["--rounds", "r005:"], "table 'pool' has no round in r005..the last round in the store at"),
])
def test_bad_export_options_are_one_line_and_write_nothing(home, tmp_path, args, message):
    home, _, _ = home
    out = tmp_path / "out"
    code, stdout, stderr = prism("export", "--out", out, *args, home=home)
    assert (code, stdout) == (2, "") and stderr.count("\n") == 1 and message in stderr, stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["home"]


def test_an_export_never_overwrites_a_folder_of_other_files(home, tmp_path):
    home, store, _ = home
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, stderr = prism("export", "--out", out, home=home)
    assert code == 2 and "holds other files and no earlier export" in stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    export_dataset(store, tmp_path / "again", fmt="parquet")
    export_dataset(store, tmp_path / "again", fmt="openai", rounds="r001")  # an earlier export is replaced
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["README.md", "dataset_card.json", "train.jsonl"]
    assert len(read_training_chats(tmp_path / "again")) == 3


@pytest.mark.parametrize("content, line, field, fragment", [
    (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{"prompt": "q"}\n',
     2, "messages", "missing"),
    (b'{"prompt": "q", "response": 7}\n', 1, "response", "expected a string, got int"),
    (b'{"messages": [{"role": "user", "content": "q"}]}\n', 1, "messages", "one user turn then one assistant turn"),
    (b'{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}\n', 1, "messages",
     "message 0"),
    (b'{"messages": []}\n', 1, "messages", "non-empty list"),
    (b"\n\n", None, None, "no rows: nothing to train on"),
])
def test_bad_training_files_name_file_line_and_field(tmp_path, content, line, field, fragment):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        read_training_chats(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), line, field)
    assert fragment in str(caught.value)


def test_a_folder_without_an_export_is_refused(tmp_path):
    with pytest.raises(PrismError, match="a folder without an export"):
        read_training_chats(tmp_path)
