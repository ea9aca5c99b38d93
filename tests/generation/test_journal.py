"""The journal (prismatic.generation.journal): a retried step sends only the requests it has no answer for;
torn and corrupt journals; the record format, pinned."""

from __future__ import annotations

import json

import pytest

from prismatic.config import SynthesisConfig
from prismatic.errors import InputError
from prismatic.generation.journal import Journal, generate_journaled
from prismatic.generation.prompts import solution_prompt
from prismatic.generation.requests import GenerationRequest, Sampling

SOLUTION = Sampling.from_config(SynthesisConfig().solution_sampling, seed=0)


def make_requests(n: int, model: str = "m") -> list[GenerationRequest]:
    return [GenerationRequest.build(model, solution_prompt(f"What is {i} + {i}?", "math"), SOLUTION, 0)
            for i in range(n)]


class FakeEngine:
    """Answers `text:<key prefix>` and reports each answer at once; crashes after `fail_after` answers."""

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.sent: list[str] = []
        self.output_tokens = 0

    def generate(self, requests, on_results=None):
        texts = []
        for position, request in enumerate(requests):
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise RuntimeError("engine crashed")
            self.sent.append(request.key)
            text = f"text:{request.key[:10]}"
            texts.append(text)
            if on_results is not None:
                on_results([(position, text)])
        return texts


def test_interrupted_run_resends_only_missing_keys(tmp_path):
    requests = make_requests(10)
    path = tmp_path / "journal.jsonl"
    crashing = FakeEngine(fail_after=4)
    with pytest.raises(RuntimeError, match="crashed"):
        generate_journaled(crashing, requests, Journal(path))
    assert len(crashing.sent) == 4
    assert len(path.read_text().splitlines()) == 4

    retry = FakeEngine()
    texts = generate_journaled(retry, requests, Journal(path))
    assert sorted(retry.sent) == sorted(r.key for r in requests[4:])
    assert texts == [f"text:{r.key[:10]}" for r in requests]

    again = FakeEngine()
    assert generate_journaled(again, requests, Journal(path)) == texts
    assert again.sent == []


def test_duplicate_keys_are_sent_once(tmp_path):
    requests = make_requests(3)
    engine = FakeEngine()
    texts = generate_journaled(engine, requests + requests[:2], Journal(tmp_path / "j.jsonl"))
    assert len(engine.sent) == 3 and texts[3:] == texts[:2]


def test_engine_without_callbacks_is_still_journaled(tmp_path):
    class Silent(FakeEngine):
        def generate(self, requests, on_results=None):
            return super().generate(requests, None)

    journal = Journal(tmp_path / "j.jsonl")
    texts = generate_journaled(Silent(), make_requests(2), journal)
    assert len(Journal(tmp_path / "j.jsonl")) == 2 and journal.texts == {r.key: t for r, t in
                                                                         zip(make_requests(2), texts)}


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append_many([("k1", "one"), ("k2", "two\nlines ✓")])
    with path.open("a") as handle:
        handle.write('{"key": "k3", "te')  # crash mid-write
    reopened = Journal(path)
    assert reopened.texts == {"k1": "one", "k2": "two\nlines ✓"}
    reopened.append("k3", "three")
    assert Journal(path).texts == {"k1": "one", "k2": "two\nlines ✓", "k3": "three"}
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "text": "x"}\n{"key": "b", "text": "y"}')
    journal = Journal(path)
    journal.append("c", "z")
    assert Journal(path).texts == {"a": "x", "b": "y", "c": "z"}


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "text": "x"}\nnot json\n{"key": "b", "text": "y"}\n')
    with pytest.raises(InputError, match=r"j.jsonl:2"):
        Journal(path)


def test_appends_keep_the_first_text_of_a_key(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append("a", "first")
    journal.append("a", "second")
    assert Journal(path)["a"] == "first" and len(path.read_text().splitlines()) == 1


def test_record_format_is_pinned(tmp_path):
    """One JSON object per line, keys in this order, non-ASCII kept, as journals of earlier runs were written."""
    path = tmp_path / "j.jsonl"
    Journal(path).append_many([("k1", "one"), ("k2", "two\nlines ✓")])
    assert path.read_bytes() == '{"key": "k1", "text": "one"}\n{"key": "k2", "text": "two\\nlines ✓"}\n'.encode()
