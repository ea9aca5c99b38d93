import re

import polars as pl
import pytest

from prismatic.config import DataFields
from prismatic.data.samples import bundled_seeds_path, load_samples
from prismatic.errors import InputError


def test_bundled_seed_set_is_complete_and_well_formed():
    seeds = load_samples(bundled_seeds_path())
    counts = dict(seeds.group_by("task").len().iter_rows())
    assert counts["math"] >= 40 and counts["nli"] >= 30
    assert set(seeds.columns) >= {"id", "prompt", "response", "answer", "task", "level"}
    for row in seeds.iter_rows(named=True):
        boxed = re.findall(r"\\boxed\{([^{}]*)\}\s*$", row["response"])
        assert boxed == [row["answer"]], row["id"]
        if row["task"] == "nli":
            assert row["answer"] in {"entailment", "neutral", "contradiction"}
        assert 1 <= row["level"] <= 5


def test_parquet_input_and_configurable_field_names(tmp_path):
    path = tmp_path / "d.parquet"
    pl.DataFrame({"uid": [1, 2], "question": ["a?", "b?"], "solution": ["x", "y"], "extra": [0.5, 1.5]}) \
        .write_parquet(path)
    frame = load_samples(path, DataFields(id_field="uid", prompt_field="question", response_field="solution"))
    assert frame["id"].to_list() == ["1", "2"] and frame["prompt"].to_list() == ["a?", "b?"]
    assert frame["extra"].to_list() == [0.5, 1.5]


def test_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "d.parquet"
    pl.DataFrame({"id": ["a", "b"], "prompt": ["p", None], "response": ["r", "s"]}).write_parquet(path)
    with pytest.raises(InputError) as info:
        load_samples(path)
    assert (info.value.line, info.value.field) == (2, "prompt")


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "prompt": NaN, "response": "r"}', "NaN is not a valid JSON number"),
    ('{"id": "a", "prompt": "p", "response": "   "}', "must not be empty"),
    ('["id", "prompt"]', "expected a JSON object"),
    ('{"id": true, "prompt": "p", "response": "r"}', "expected a string, got bool"),
])
def test_jsonl_errors(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "z", "prompt": "p", "response": "r"}\n' + line + "\n")
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_samples(path)
    assert info.value.line == 2


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_samples(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a directory"):
        load_samples(tmp_path)
