"""`prism train` and `prism evaluate`: the student trains on exactly what `prism export` wrote (the same
weights from two formats of one export), prints one JSON object, and is evaluated per set, a
`student.eval_sets` entry of prism.yaml giving a set's fields; bad data and options are one line naming
file, line and field, before any model loads and with nothing written."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from student_store import fill_rounds, prism, reference_nll, tiny_student_base

from prismatic.data.export import export_dataset, read_training_chats
from prismatic.storage.factory import open_store

CUSTOM = [{"q": "Sam has 4 apples and buys 3 more. How many apples does he have?", "sol": "4 + 3 = 7. \\boxed{7}",
           "ans": "7", "id": "c1"},
          {"q": "A box holds 6 pens. How many pens are in 5 boxes?", "sol": "6 * 5 = 30. \\boxed{30}", "ans": "30",
           "id": "c2"}]
GSM = [{"question": "Ann has 3 cats and each cat eats 2 cans a day. How many cans a day?",
        "answer": "3 * 2 = <<3*2=6>>6\n#### 6"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smollm2_dir):
    """(home, export folders, the models `prism train` wrote from the chat-jsonl and the parquet export)."""
    root = tmp_path_factory.mktemp("student-cli")
    home = root / "home"
    home.mkdir()
    custom = root / "custom.jsonl"
    custom.write_text("".join(json.dumps(row) + "\n" for row in CUSTOM))
    (home / "prism.yaml").write_text(
        f"student:\n  epochs: 1\n  batch_size: 4\n  max_tokens: 256\n  eval_sets:\n"
        f"    - {{path: {custom}, name: custom, format: fields, prompt_field: q, response_field: sol, "
        f"answer_field: ans}}\n")
    store = open_store(home / "store")
    fill_rounds(store)
    base = tiny_student_base(root / "tiny", smollm2_dir)
    exports = {fmt: root / fmt for fmt in ("chat-jsonl", "parquet")}
    reports = {}
    for fmt, out in exports.items():
        export_dataset(store, out, fmt=fmt)
        code, stdout, stderr = prism("train", out, "--out", root / f"model-{fmt}", "--base", base, "--seed", 3,
                                     "--json", home=home)
        assert code == 0, stderr
        reports[fmt] = json.loads(stdout)  # one JSON object: the trainer's log lines went to stderr
    return {"home": home, "root": root, "base": base, "exports": exports, "reports": reports, "custom": custom}


def test_train_uses_exactly_the_exported_rows_whatever_the_format(trained):
    reports = trained["reports"]
    chats = read_training_chats(trained["exports"]["chat-jsonl"])
    assert len(chats) == 9 and read_training_chats(trained["exports"]["parquet"]) == chats
    for report in reports.values():
        assert report["samples"] == 9 and report["method"] == "full" and report["steps"] == 3  # ceil(9 / 4) × 1 epoch
        assert report["base_model"] == str(trained["base"]) and len(report["losses"]) == 3
    weights = {fmt: load_file(trained["root"] / f"model-{fmt}" / "model.safetensors") for fmt in reports}
    base = load_file(trained["base"] / "model.safetensors")
    assert weights["chat-jsonl"].keys() == weights["parquet"].keys()
    for name, tensor in weights["chat-jsonl"].items():
        assert tensor.equal(weights["parquet"][name]), name  # same rows, same seed: the same weights
    assert any(not tensor.equal(base[name]) for name, tensor in weights["chat-jsonl"].items())


def test_evaluate_reports_each_set_with_prism_yaml_fields(trained):
    gsm = trained["root"] / "gsm.jsonl"
    gsm.write_text(json.dumps(GSM[0]) + "\n")
    model = trained["root"] / "model-parquet"
    code, stdout, stderr = prism("evaluate", model, "custom", gsm, "--limit", 0, "--json", home=trained["home"])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert list(result["sets"]) == ["custom", "gsm"]
    assert result["sets"]["gsm"] | {"nll": None} == {"n": 1, "nll": None, "accuracy": None, "accuracy_n": 0}
    custom = [reference_nll(model, row["q"], row["sol"]) for row in CUSTOM]
    assert result["sets"]["custom"]["nll"] == pytest.approx(sum(custom) / 2, rel=1e-4)
    reference = "3 * 2 = 6\n\\boxed{6}"  # GSM8K's solution without its calculator note, the answer boxed
    assert result["sets"]["gsm"]["nll"] == pytest.approx(reference_nll(model, GSM[0]["question"], reference), rel=1e-4)


@pytest.mark.parametrize("command, content, expected", [
    ("train", b'{"prompt": "q", "response": "a"}\n{"prompt": "q2"}\n', "data.jsonl:2: field 'messages': missing"),
    ("train", b"", "data.jsonl: no rows: nothing to train on"),
    ("evaluate", b'{"question": "How many?", "answer": "12\\n#### 12"}\n{"question": "And now?"}\n',
     "data.jsonl:2: field 'answer': missing or empty"),
    ("evaluate", b"\n", "data.jsonl: the evaluation set has no rows"),
    ("evaluate", b'{"prompt": "p", "response": "r"}\n', "data.jsonl:1: field 'format': neither GSM8K"),
])
def test_bad_data_is_one_line_and_nothing_is_written(tmp_path, command, content, expected):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    out = tmp_path / "model"
    args = ("train", data, "--out", out, "--base", tmp_path / "no-model") if command == "train" else (
        "evaluate", tmp_path / "no-model", data)
    code, stdout, stderr = prism(*args, home=tmp_path / "home")
    assert (code, stdout) == (2, "") and stderr.count("\n") == 1, stderr
    assert expected in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


@pytest.mark.parametrize("args, expected", [
    (("--lora-rank", "-1"), "option --lora-rank: Input should be greater than or equal to 0"),
    (("--epochs", "0"), "option --epochs: Input should be greater than 0"),
])
def test_bad_train_options_are_named(tmp_path, args, expected):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "q", "response": "a"}\n')
    code, stdout, stderr = prism("train", data, "--out", tmp_path / "model", *args, home=tmp_path / "home")
    assert (code, stdout) == (2, "") and expected in stderr and not (tmp_path / "model").exists()
