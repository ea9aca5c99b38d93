"""Evaluation sets of the student: JSONL problems with a reference solution and a final answer.

Every item becomes (prompt, reference, answer), with the reference written the way the pipeline's
solutions end, with the final answer in `\\boxed{}`:

- GSM8K (`question`, `answer` = worked solution ending in `#### n`): prompt = question; reference = the
  solution with its `<<a*b=c>>` calculator notes removed, then `\\boxed{n}`.
- SVAMP (`body`, `question`, `equation`, `answer`): prompt = body (closed with a period) + question; reference =
  "equation = answer. \\boxed{answer}" (numbers written without a trailing `.0`).
- fields: the `prompt_field`, `response_field` and `answer_field` of `EvalSetConfig`, as they are.

`auto` picks GSM8K or SVAMP from the first row's fields. A bad row is an `InputError` naming the
file, the line and the field; an empty set is one too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prismatic.config import EvalSetConfig
from prismatic.errors import InputError

GSM8K_FIELDS = ("question", "answer")
SVAMP_FIELDS = ("body", "question", "equation", "answer")
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d+\.\d+|-?\d+")


@dataclass(frozen=True)
class EvalItem:
    """One problem: the user turn, the reference assistant turn whose NLL is measured, the final answer."""

    id: str
    prompt: str
    reference: str
    answer: str


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path
    items: tuple[EvalItem, ...]

    def __len__(self) -> int:
        return len(self.items)


def plain_number(value: float | int | str) -> str:
    """`51.0` → `51`, `2.50` → `2.5`, other text unchanged."""
    text = str(value).strip()
    if _NUMBER.fullmatch(text) and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def gsm8k_item(row: dict, index: int) -> EvalItem:
    """A GSM8K row: the worked solution without calculator notes, ending in `\\boxed{n}`."""
    solution, marker, final = row["answer"].rpartition("####")
    if not marker or not final.strip():
        raise ValueError("answer does not end in '#### <final answer>'")
    answer = final.strip().replace(",", "")
    steps = _CALCULATOR_NOTE.sub("", solution).strip()
    return EvalItem(str(row.get("id", index)), row["question"].strip(), f"{steps}\n\\boxed{{{answer}}}", answer)


def svamp_item(row: dict, index: int) -> EvalItem:
    """A SVAMP row: "equation = answer. \\boxed{answer}" as the reference."""
    answer = plain_number(row["answer"])
    equation = _NUMBER.sub(lambda number: plain_number(number.group()), str(row["equation"])).strip()
    if equation.startswith("(") and equation.endswith(")") and equation.count("(") == 1:
        equation = equation[1:-1].strip()
    body = str(row["body"]).strip()
    prompt = f"{body if body.endswith(('.', '?', '!')) else body + '.'} {str(row['question']).strip()}"
    return EvalItem(str(row.get("id", index)), prompt, f"{equation} = {answer}. \\boxed{{{answer}}}", answer)


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not valid JSON ({exc.msg})", line=number) from None
            if not isinstance(row, dict):
                raise InputError(path, "a row must be a JSON object", line=number)
            yield number, row


def _format_of(row: dict) -> str:
    if all(name in row for name in SVAMP_FIELDS):
        return "svamp"
    if all(name in row for name in GSM8K_FIELDS):
        return "gsm8k"
    return "unknown"


def load_eval_set(spec: EvalSetConfig | str | Path, *, limit: int | None = None) -> EvalSet:
    """The first `limit` items (None: all) of the JSONL set `spec` describes (a path: format `auto`)."""
    if not isinstance(spec, EvalSetConfig):
        spec = EvalSetConfig(path=str(spec))
    path = Path(spec.path)
    if not path.is_file():
        raise InputError(path, "evaluation set not found")
    name = spec.name or path.stem
    form = spec.format
    items: list[EvalItem] = []
    for number, row in _rows(path):
        if limit is not None and len(items) >= limit:
            break
        if form == "auto":
            form = _format_of(row)
            if form == "unknown":
                raise InputError(path, f"neither GSM8K ({', '.join(GSM8K_FIELDS)}) nor SVAMP "
                                       f"({', '.join(SVAMP_FIELDS)}) rows; set `format: fields` and the fields",
                                 line=number, field="format")
        needed = {"gsm8k": GSM8K_FIELDS, "svamp": SVAMP_FIELDS,
                  "fields": (spec.prompt_field, spec.response_field, spec.answer_field)}[form]
        for field_name in needed:
            value = row.get(field_name)
            if value is None or not str(value).strip():
                raise InputError(path, "missing or empty", line=number, field=field_name)
        try:
            if form == "gsm8k":
                item = gsm8k_item(row, number)
            elif form == "svamp":
                item = svamp_item(row, number)
            else:
                item = EvalItem(str(row.get("id", number)), str(row[spec.prompt_field]).strip(),
                                str(row[spec.response_field]).strip(), plain_number(row[spec.answer_field]))
        except ValueError as exc:
            raise InputError(path, str(exc), line=number, field="answer") from None
        items.append(item)
    if not items:
        raise InputError(path, "the evaluation set has no rows")
    return EvalSet(name, path, tuple(items))
