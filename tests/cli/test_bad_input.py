"""Bad input anywhere a user supplies data or config: one clear line naming file, line and field,
exit code 2, and nothing written (no store, no Dagster instance, no output file).

The CLI runs in-process (`prismatic.cli.main`, as the `prism` script runs it) so that hundreds of
generated files cost seconds; test_cli.py runs the same readers as a subprocess. Where a valid file
would go on to load the proxy, `load_proxy` is replaced by a stub that stops with a known message.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prism_cli.main import main
from prismatic.config import DataFields
from prismatic.data.quality import read_benchmark_texts
from prismatic.data.samples import load_samples, load_seeds
from prismatic.errors import InputError, PrismError
from prismatic.storage.schema import conform
from prismatic.storage.schema import schema as store_schema

NOT_LOADED = "proxy not loaded in this test"


def prism(*args, home: Path, env: dict | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `prism ARGS` run in this process with PRISM_HOME=home."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    environ = {"PRISM_HOME": str(home), **(env or {})}
    with mock.patch.dict(os.environ, environ), mock.patch.object(sys, "argv", ["prism", *map(str, args)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def stub_proxy(*args, **kwargs):
    raise PrismError(NOT_LOADED)


def features_cli(data: Path, workdir: Path) -> tuple[int, str]:
    """`prism features DATA --out ...` with the proxy stubbed; checks that nothing was written."""
    home, out = workdir / "home", workdir / "out.parquet"
    with mock.patch("prismatic.gradients.proxy.load_proxy", stub_proxy):
        code, stdout, stderr = prism("features", data, "--out", out, home=home)
    assert not out.exists() and not home.exists()
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return code, lines[0]


# ------------------------------------------------------------------------------------------ explicit cases

GOOD = b'{"id": "a", "prompt": "p", "response": "r"}\n'
BAD_DATA = {
    # name: (file content, file suffix, line, field, message fragment)
    "empty file": (b"", ".jsonl", None, None, "no samples: the file is empty"),
    "only blank lines": (b"\n  \n\r\n", ".jsonl", None, None, "no samples"),
    "truncated last line": (GOOD + b'{"id": "b", "prompt": "p", "resp', ".jsonl", 2, None, "was it cut short"),
    "invalid JSON": (GOOD + b'{"id": "b" "prompt": "p"}\n' + GOOD, ".jsonl", 2, None, "invalid JSON"),
    "not an object": (GOOD + b'["b", "p", "r"]\n', ".jsonl", 2, None, "expected a JSON object, got array"),
    "prompt is a number": (b'{"id": "a", "prompt": 5, "response": "r"}\n', ".jsonl", 1, "prompt",
                           "expected a string, got int"),
    "id is a boolean": (b'{"id": true, "prompt": "p", "response": "r"}\n', ".jsonl", 1, "id",
                        "expected a string, got bool"),
    "response is null": (b'{"id": "a", "prompt": "p", "response": null}\n', ".jsonl", 1, "response",
                         "expected a string, got null"),
    "missing field": (GOOD + b'{"id": "b", "prompt": "p"}\n', ".jsonl", 2, "response", "missing required field"),
    "blank prompt": (b'{"id": "a", "prompt": " \\n ", "response": "r"}\n', ".jsonl", 1, "prompt",
                     "must not be empty"),
    "duplicate ids": (GOOD + GOOD, ".jsonl", 2, "id", "duplicate id 'a' (first on line 1)"),
    "ids 1 and '1'": (b'{"id": 1, "prompt": "p", "response": "r"}\n{"id": "1", "prompt": "p", "response": "r"}\n',
                      ".jsonl", 2, "id", "duplicate id '1'"),
    "NaN": (b'{"id": "a", "prompt": "p", "response": "r", "score": NaN}\n', ".jsonl", 1, "score",
            "NaN is not a valid JSON number"),
    "-Infinity nested": (b'{"id": "a", "prompt": "p", "response": "r", "meta": {"x": [1, -Infinity]}}\n', ".jsonl",
                         1, "meta", "-Infinity is not a valid JSON number"),
    "number out of range": (b'{"id": "a", "prompt": "p", "response": "r", "score": 1e999}\n', ".jsonl", 1, "score",
                            "1e999 is out of the range of a 64-bit float"),
    "non-UTF-8 bytes": (GOOD + b'{"id": "b", "prompt": "caf\xe9", "response": "r"}\n', ".jsonl", 2, "prompt",
                        "not UTF-8 (byte 0xe9 at column 27)"),
    "unpaired surrogate": (b'{"id": "a", "prompt": "x\\ud800y", "response": "r"}\n', ".jsonl", 1, "prompt",
                           "unpaired surrogate"),
    "field twice": (b'{"id": "a", "prompt": "p", "response": "r", "prompt": "q"}\n', ".jsonl", 1, "prompt",
                    "appears twice in this record"),
    "nested too deeply": (b'{"id": "a", "prompt": "p", "response": ' + b"[" * 200000 + b"]" * 200000 + b"}\n",
                          ".jsonl", 1, None, "nested too deeply"),
    "corrupt Parquet": (b"PAR1" + b"\0" * 64, ".parquet", None, None, "not a readable Parquet file"),
}


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


BAD_DATA |= {
    "Parquet null prompt": (parquet_bytes(pl.DataFrame({"id": ["a", "b"], "prompt": ["p", None],
                                                        "response": ["r", "s"]})), ".parquet", 2, "prompt",
                            "expected a string, got null"),
    "Parquet NaN": (parquet_bytes(pl.DataFrame({"id": ["a", "b"], "prompt": ["p", "q"], "response": ["r", "s"],
                                                "score": [0.5, float("nan")]})), ".parquet", 2, "score",
                    "NaN or infinite value"),
    "Parquet duplicate ids": (parquet_bytes(pl.DataFrame({"id": [7, 7], "prompt": ["p", "q"],
                                                          "response": ["r", "s"]})), ".parquet", 2, "id",
                              "duplicate id '7'"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_file_is_one_line_naming_file_line_and_field(tmp_path, case):
    content, suffix, line, field, fragment = BAD_DATA[case]
    data = tmp_path / f"data{suffix}"
    data.write_bytes(content)
    _, message = features_cli(data, tmp_path)
    where = f"{data}:{line}: " if line else f"{data}: "
    what = f"field '{field}': " if field else ""
    assert message.startswith(f"prism: error: {where}{what}") and fragment in message, message


def test_a_50_mb_line_is_refused_without_reading_it(tmp_path):
    data = tmp_path / "big.jsonl"
    with data.open("wb") as handle:
        handle.write(GOOD)
        handle.write(b'{"id": "b", "prompt": "' + b"x" * (50 * 2**20) + b'", "response": "r"}\n')
    _, message = features_cli(data, tmp_path)
    assert message == f"prism: error: {data}:2: line longer than 16 MiB (data.max_line_mb); not read"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "prism.yaml").write_text("data:\n  max_line_mb: 64\n")
    with mock.patch("prismatic.gradients.proxy.load_proxy", stub_proxy):
        code, _, err = prism("features", data, "--out", tmp_path / "o.parquet", home=tmp_path / "home")
    assert code == 2 and err.strip() == f"prism: error: {NOT_LOADED}"  # read in full once allowed


BAD_CONFIG = {
    # prism.yaml content: (line, field, message fragment)
    "colour: red\n": (1, "colour", "Extra inputs are not permitted"),
    "features:\n  dim: 64\n  mdoe: fast\n": (3, "features.mdoe", "Extra inputs are not permitted"),
    "generator:\n  base_url: http://x\n": (2, "generator.base_url", "Extra inputs are not permitted"),
    "features:\n  overlong: cut\n": (2, "features.overlong", "'refuse' or 'truncate'"),
    "data:\n  max_line_mb: -1\n": (2, "data.max_line_mb", "greater than 0"),
    "synthesis:\n  prompts_per_round: many\n": (2, "synthesis.prompts_per_round", "valid integer"),
}


@pytest.mark.parametrize("text", list(BAD_CONFIG))
def test_bad_config_is_one_line_naming_file_line_and_field(tmp_path, text):
    line, field, fragment = BAD_CONFIG[text]
    home = tmp_path / "home"
    home.mkdir()
    (home / "prism.yaml").write_text(text)
    data = tmp_path / "d.jsonl"
    data.write_bytes(GOOD)
    for args in (["features", data, "--out", tmp_path / "o.parquet"], ["run", "--round", "r000"]):
        code, _, err = prism(*args, home=home)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"prism: error: {home / 'prism.yaml'}:{line}: field '{field}': ") and fragment in err
    assert sorted(p.name for p in home.iterdir()) == ["prism.yaml"]


def test_non_utf8_and_invalid_yaml_config(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for content, fragment in ((b"features:\n  proxy: caf\xe9\n", "not UTF-8"),
                              (b"features:\n  dim: [1, 2\n", "invalid YAML")):
        (home / "prism.yaml").write_bytes(content)
        code, _, err = prism("run", "--round", "r000", home=home)
        assert code == 2 and err.startswith(f"prism: error: {home / 'prism.yaml'}") and fragment in err, err
    assert sorted(p.name for p in home.iterdir()) == ["prism.yaml"]


SEED = {"id": "s1", "prompt": "What is 1 + 1?", "response": "1 + 1 = 2. \\boxed{2}", "answer": "2", "task": "math"}
BAD_SEEDS = [
    ({"answer": None}, "answer", "missing required field"),
    ({"answer": ["2"]}, "answer", "expected a string, got array"),
    ({"task": "chemistry"}, "task", "expected one of math, nli, got 'chemistry'"),
    ({"level": 0}, "level", "must be at least 1, got 0"),
    ({"level": "3"}, "level", "expected an integer, got str"),
    ({"level": 2.5}, "level", "expected an integer, got float"),
    ({"source": 5}, "source", "expected a string, got int"),
]


@pytest.mark.parametrize("change, field, fragment", BAD_SEEDS)
def test_bad_seed_file_stops_the_round_before_anything_is_written(tmp_path, change, field, fragment):
    home = tmp_path / "home"
    home.mkdir()
    seeds = tmp_path / "seeds.jsonl"
    rows = [SEED, {**SEED, "id": "s2", **change}]
    seeds.write_text("".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in rows))
    (home / "prism.yaml").write_text(f"synthesis:\n  seeds: {seeds}\n")
    code, _, err = prism("run", "--round", "r000", home=home)
    assert code == 2 and err == f"prism: error: {seeds}:2: field '{field}': {fragment}\n"
    assert sorted(p.name for p in home.iterdir()) == ["prism.yaml"]  # no store, no Dagster instance


BAD_BENCHMARKS = [
    (b'{"question": "What is 2 + 2?"}\n{"question": "What is', 2, None, "was it cut short"),
    (b'{"question": "caf\xe9"}\n', 1, "question", "not UTF-8"),
    (b'{"question": "q", "score": NaN}\n', 1, "score", "NaN is not a valid JSON number"),
    (b'{"question": ["q"]}\n', 1, "question", "expected a string, got list"),
    (b'{"answer": "4"}\n', 1, "question", "missing field"),
]


@pytest.mark.parametrize("content, line, field, fragment", BAD_BENCHMARKS)
def test_bad_decontamination_list_stops_the_round_before_anything_is_written(tmp_path, content, line, field,
                                                                             fragment):
    from prismatic.storage.factory import open_store

    home = tmp_path / "home"
    home.mkdir()
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(content)
    (home / "prism.yaml").write_text(f"synthesis:\n  decontamination:\n    benchmarks: [{{path: {bench}}}]\n")
    store = open_store(home / "store")  # a finished r000, as far as `prism run --round r001` looks
    for table in ("seeds", "diversity_scores"):
        store.write(table, "r000", pl.DataFrame(schema=dict(store_schema(table))))
    before = sorted((p, p.stat().st_mtime_ns) for p in home.rglob("*"))
    code, _, err = prism("run", "--round", "r001", home=home)
    where = f"{bench}:{line}: " + (f"field '{field}': " if field else "")
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"prism: error: {where}") and fragment in err, err
    assert sorted((p, p.stat().st_mtime_ns) for p in home.rglob("*")) == before


def test_a_chat_longer_than_the_proxys_context_is_refused_or_truncated_by_config(tmp_path, tiny_model_dir):
    """The tiny proxy's context is 4096 tokens; the third sample's response is longer."""
    data = tmp_path / "long.jsonl"
    rows = [{"id": f"s{i}", "prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(2)]
    rows.append({"id": "long", "prompt": "Tell me everything.", "response": " ".join(["word"] * 5000)})
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    home = tmp_path / "home"
    home.mkdir()
    args = ("features", data, "--out", tmp_path / "f.parquet", "--proxy", tiny_model_dir, "--dim", 16, "--json")
    code, _, err = prism(*args, home=home)
    err = err.strip().splitlines()[-1]  # after the proxy's loading progress
    assert code == 2 and err.startswith(f"prism: error: {data}:3: field 'response': sample 'long' is ")
    assert "more than the proxy's context of 4096 (features.overlong: truncate" in err
    assert not (tmp_path / "f.parquet").exists()

    (home / "prism.yaml").write_text("features:\n  overlong: truncate\n")
    code, out, err = prism(*args, home=home)
    assert code == 0, err
    assert json.loads(out)["truncated"] == 1
    frame = pl.read_parquet(tmp_path / "f.parquet")
    assert frame["truncated"].to_list() == [False, False, True] and frame["n_tokens"][2] == 4096

    rows[2] = {"id": "long", "prompt": " ".join(["word"] * 5000), "response": "Short."}
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    code, _, err = prism(*args, home=home)
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        f"prism: error: {data}:3: field 'prompt': the prompt of sample 'long' alone is ")


# ------------------------------------------------------------------------------------------ properties

_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12).filter(str.strip)
_not_an_id = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
                       st.lists(st.integers(), max_size=2), st.dictionaries(_text, _text, max_size=1))
"""Ids may be integers (they become strings); nothing else that is not a string."""
DEFECTS = ["cut", "cut_last", "not_object", "wrong_type", "missing", "blank", "duplicate_id", "non_finite",
           "non_utf8", "surrogate", "field_twice", "too_long"]


@st.composite
def jsonl_files(draw):
    """(file bytes, expected): expected is the list of ids of a valid file, or (line, field, fragment)
    of the one defect drawn, at a random line."""
    n = draw(st.integers(1, 6))
    records = [{"id": draw(st.one_of(st.just(f"s{i}"), st.just(i))), "prompt": draw(_text),
                "response": draw(_text)} | draw(st.fixed_dictionaries({}, optional={"answer": _text,
                                                                                  "level": st.integers(1, 5)}))
               for i in range(n)]
    lines = [json.dumps(record).encode() for record in records]
    defect = draw(st.sampled_from([None, *DEFECTS]))
    at = draw(st.integers(0, n - 1))
    field = draw(st.sampled_from(["id", "prompt", "response"]))
    expected: object = [str(record["id"]) for record in records]
    record = dict(records[at])
    if defect in ("cut", "cut_last"):
        at = n - 1 if defect == "cut_last" else at
        lines[at] = lines[at][:draw(st.integers(1, len(lines[at]) - 1))]
        expected = (at, None, "was it cut short" if defect == "cut_last" else "invalid JSON")
    elif defect == "not_object":
        lines[at] = json.dumps(draw(st.one_of(st.lists(_text, max_size=2), st.integers(), _text))).encode()
        expected = (at, None, "expected a JSON object")
    elif defect == "wrong_type":
        value = draw(_not_an_id if field == "id" else st.one_of(st.integers(), _not_an_id))
        lines[at] = json.dumps(record | {field: value}).encode()
        expected = (at, field, "expected a string")
    elif defect == "missing":
        del record[field]
        lines[at] = json.dumps(record).encode()
        expected = (at, field, "missing required field")
    elif defect == "blank":
        lines[at] = json.dumps(record | {field: draw(st.sampled_from(["", " ", "\t\n"]))}).encode()
        expected = (at, field, "must not be empty")
    elif defect == "duplicate_id" and at > 0:
        earlier = draw(st.integers(0, at - 1))
        lines[at] = json.dumps(record | {"id": records[earlier]["id"]}).encode()
        expected = (at, "id", earlier)  # the message names the earlier record's line
    elif defect == "non_finite":
        name = draw(st.sampled_from([field, "score"]))
        number = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-2E999"]))
        lines[at] = json.dumps(record | {name: "@@"}).replace('"@@"', number).encode()
        expected = (at, name, "NaN" if number == "NaN" else "Infinity" if "Inf" in number else "out of the range")
    elif defect == "non_utf8":
        name = draw(st.sampled_from(["prompt", "response"]))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]))
        lines[at] = json.dumps(record | {name: "@@"}).encode().replace(b"@@", b"ab" + bad + b"cd")
        expected = (at, name, "not UTF-8")
    elif defect == "surrogate":
        lines[at] = json.dumps(record | {field: "@@"}).replace("@@", "x\\udc80").encode()
        expected = (at, field, "unpaired surrogate")
    elif defect == "field_twice":
        lines[at] = json.dumps(record).encode()[:-1] + b', "' + field.encode() + b'": "again"}'
        expected = (at, field, "appears twice")
    elif defect == "too_long":
        lines[at] = json.dumps(record | {"prompt": "x" * 1100}).encode()
        expected = (at, None, "line longer than")
    # Blank lines between records, a byte-order mark, CRLF: all valid, and lines still count.
    output, number_of = [], {}
    if draw(st.booleans()):
        output.append(b"\xef\xbb\xbf")
    line_no = 0
    for i, line in enumerate(lines):
        for _ in range(draw(st.integers(0, 1))):
            output.append(b"\n")
            line_no += 1
        line_no += 1
        number_of[i] = line_no
        last = i == n - 1
        end = b"" if last and defect == "cut_last" else draw(st.sampled_from([b"\n", b"\r\n"]))
        output.append(line + end)
    if isinstance(expected, tuple):
        at, field, fragment = expected
        if isinstance(fragment, int):
            fragment = f"(first on line {number_of[fragment]})"
        expected = (number_of[at], field, fragment)
    return b"".join(output), expected


LIMIT = DataFields(max_line_mb=1024 / 2**20)  # 1 KiB lines, so "too_long" needs no 50 MB file


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jsonl_files())
def test_generated_files_load_or_fail_with_the_right_line_and_field(case):
    content, expected = case
    event("valid file" if isinstance(expected, list) else f"defect: {expected[2][:24]}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_bytes(content)
        if isinstance(expected, list):
            frame = load_samples(path, LIMIT)
            assert frame["id"].to_list() == expected
            return
        line, field, fragment = expected
        with pytest.raises(InputError) as info:
            load_samples(path, LIMIT)
        assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
        assert fragment in info.value.message


_json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["id", "prompt", "response", "x"]), inner, max_size=4), max_leaves=8)
_record = st.builds(lambda i, p, r: json.dumps({"id": i, "prompt": p, "response": r}).encode(),
                    st.uuids().map(str), _text, _text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_record, st.binary(max_size=60), st.builds(lambda v: json.dumps(v).encode(), _json_value)),
                max_size=5))
def test_arbitrary_bytes_through_the_cli_give_a_load_or_one_clear_line(lines):
    """Any file: `prism features` either gets to the proxy (the data loaded) or prints one line that
    names the file, with exit code 2 and nothing written; never a traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        content = b"\n".join(lines)
        data.write_bytes(content)
        try:
            load_samples(data)
            loads = True
        except InputError as exc:
            loads = False
            assert exc.path == str(data) and (exc.line is None or 1 <= exc.line <= content.count(b"\n") + 1)
        try:  # the same file as a decontamination list
            read_benchmark_texts(data, "prompt")
        except InputError as exc:
            assert exc.path == str(data) and (exc.line is None or 1 <= exc.line <= content.count(b"\n") + 1)
        _, message = features_cli(data, Path(tmp))
        event("loads" if loads else "refused")
        if loads:
            assert message == f"prism: error: {NOT_LOADED}"
        else:
            assert message.startswith(f"prism: error: {data}")


_seed_value = st.one_of(st.none(), _text, st.integers(-2, 7), st.floats(allow_nan=False, allow_infinity=False),
                        st.booleans(), st.lists(_text, max_size=1), st.sampled_from(["math", "nli"]))
_seed_change = st.one_of(st.just({}), st.fixed_dictionaries({}, optional={
    "answer": _seed_value, "task": _seed_value, "level": _seed_value, "source": _seed_value}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_seed_change, min_size=1, max_size=4))
def test_generated_seed_files_give_a_storable_seed_table_or_one_clear_error(changes):
    """The seed loader's output always fits the `seeds` table; a bad seed stops `prism run` before
    it writes anything."""
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        rows = [{k: v for k, v in ({**SEED, "id": f"s{i}"} | change).items() if v is not None}
                for i, change in enumerate(changes)]
        seeds.write_text("".join(json.dumps(row) + "\n" for row in rows))
        try:
            frame = load_seeds(str(seeds))
        except InputError as exc:
            event("refused")
            assert exc.path == str(seeds) and 1 <= exc.line <= len(rows) and exc.field in SEED | {"level": 0,
                                                                                               "source": 0}
            home = Path(tmp) / "home"
            home.mkdir()
            (home / "prism.yaml").write_text(f"synthesis:\n  seeds: {seeds}\n")
            code, _, err = prism("run", "--round", "r000", home=home)
            assert code == 2 and err == f"prism: error: {exc}\n"
            assert sorted(p.name for p in home.iterdir()) == ["prism.yaml"]
            return
        event("loads")
        conform("seeds", frame)
        assert frame["task"].is_in(["math", "nli"]).all() and (frame["level"] >= 1).all()
        assert frame["answer"].str.strip_chars().str.len_chars().min() > 0
