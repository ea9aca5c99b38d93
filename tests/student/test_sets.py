"""Evaluation sets: GSM8K, SVAMP and mapped rows become (prompt, reference, answer); bad rows name file, line, field;
and a greedy answer is scored against either shape of reference."""

from __future__ import annotations

import json

import pytest

from prismatic.config import EvalSetConfig
from prismatic.errors import InputError
from prismatic.student.evaluate import accuracy_of
from prismatic.student.sets import load_eval_set, plain_number

GSM8K_ROW = {"question": "Tom has 3 boxes of 1,200 pens. How many pens?",
             "answer": "He has 3 * 1200 = <<3*1200=3600>>3600 pens.\n#### 3,600"}
SVAMP_ROW = {"id": "chal-9", "body": "Each pack costs 7.5 dollars. Amy buys 2 packs",
             "question": "How much does she pay?", "equation": "( 7.5 * 2.0 )", "answer": 15.0,
             "type": "Multiplication"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_gsm8k_reference_drops_calculator_notes_and_boxes_the_final_answer(tmp_path):
    evaluation = load_eval_set(write_jsonl(tmp_path / "gsm8k.jsonl", [GSM8K_ROW]))
    item = evaluation.items[0]
    assert (evaluation.name, item.prompt, item.answer) == ("gsm8k", GSM8K_ROW["question"], "3600")
    assert item.reference == "He has 3 * 1200 = 3600 pens.\n\\boxed{3600}"


def test_svamp_reference_is_the_equation_and_its_value(tmp_path):
    item = load_eval_set(write_jsonl(tmp_path / "svamp.jsonl", [SVAMP_ROW])).items[0]
    assert item.id == "chal-9"
    assert item.prompt == "Each pack costs 7.5 dollars. Amy buys 2 packs. How much does she pay?"
    assert item.reference == "7.5 * 2 = 15. \\boxed{15}"
    assert item.answer == "15"


def test_a_mapping_from_prism_yaml_reads_other_fields_and_limit_cuts(tmp_path):
    rows = [{"q": f"What is {i} + 1?", "sol": f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}", "final": i + 1}
            for i in range(5)]
    spec = EvalSetConfig(path=str(write_jsonl(tmp_path / "mine.jsonl", rows)), name="plus-one", format="fields",
                         prompt_field="q", response_field="sol", answer_field="final")
    evaluation = load_eval_set(spec, limit=3)
    assert evaluation.name == "plus-one"
    assert [(item.prompt, item.answer) for item in evaluation.items] == [(f"What is {i} + 1?", str(i + 1))
                                                                        for i in range(3)]


@pytest.mark.parametrize(("rows", "line", "field"), [
    ([GSM8K_ROW, {"question": "No answer here"}], 2, "answer"),  # the first row made the set GSM8K
    ([GSM8K_ROW, {"question": "Q", "answer": "  "}], 2, "answer"),
    ([GSM8K_ROW, {"question": "Q", "answer": "no final marker"}], 2, "answer"),
    ([SVAMP_ROW, {**SVAMP_ROW, "equation": None}], 2, "equation"),
    ([{"text": "neither shape"}], 1, "format"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, rows, line, field):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError) as caught:
        load_eval_set(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), line, field)


def test_an_empty_or_missing_set_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="no rows"):
        load_eval_set(empty)
    with pytest.raises(InputError, match="not found"):
        load_eval_set(tmp_path / "absent.jsonl")


def test_plain_number():
    assert [plain_number(v) for v in (51.0, "2.50", 7, "-3.0", "1/2")] == ["51", "2.5", "7", "-3", "1/2"]


def test_accuracy_parses_boxed_and_spelled_out_answers_of_both_shapes(tmp_path):
    gsm = load_eval_set(write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW])).items[0]
    svamp = load_eval_set(write_jsonl(tmp_path / "s.jsonl", [SVAMP_ROW])).items[0]
    texts = ["3 boxes of 1200 is \\boxed{3,600}.", "So she pays 15.00 dollars. The answer is 15.",
             "She pays \\boxed{\\frac{30}{2}}", "\\boxed{3599}", "no final answer at all"]
    answers = [gsm.answer, svamp.answer, svamp.answer, gsm.answer, gsm.answer]
    assert accuracy_of(texts, answers) == pytest.approx(3 / 5)
    assert accuracy_of([], []) is None
