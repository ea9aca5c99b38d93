"""The journal (prismatic.generation.journal): a retried step sends only the requests it has no answer for;
torn and corrupt journals; the record format, pinned; segments flushed to a store every N responses, after T
seconds, on close and on failure, and read back by a retry from an empty home."""

from __future__ import annotations

import json
import time

import pytest

from prismatic.config import SynthesisConfig
from prismatic.errors import InputError
from prismatic.generation.journal import Journal, generate_journaled
from prismatic.generation.prompts import solution_prompt
from prismatic.generation.requests import GenerationRequest, Sampling
from prismatic.generation.usage import Completion
from prismatic.storage.segments import JournalSegments

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


@pytest.mark.parametrize("middle", ['not json', '{"key": "b", "text": "y", "prompt_tokens": "many"}',
                                    '{"key": "b", "text": "y", "completion_tokens": -1}',
                                    '{"key": "b", "text": "y", "latency_s": "slow"}'])
def test_corrupt_middle_line_is_an_error(tmp_path, middle):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "text": "x"}\n' + middle + '\n{"key": "c", "text": "y"}\n')
    with pytest.raises(InputError, match=r"j.jsonl:2: not a journal record"):
        Journal(path)


def test_appends_keep_the_first_text_of_a_key(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append("a", "first")
    journal.append("a", "second")
    assert Journal(path)["a"] == "first" and len(path.read_text().splitlines()) == 1


def test_record_format_is_pinned(tmp_path):
    """One JSON object per line, keys in this order, non-ASCII kept, as journals of earlier runs were written;
    a response with counts adds them after the text, and earlier code's reader (key and text) still reads it."""
    path = tmp_path / "j.jsonl"
    Journal(path).append_many([("k1", "one"), ("k2", "two\nlines ✓"), ("k3", Completion("three", 12, 4, 0.5))])
    assert path.read_bytes() == ('{"key": "k1", "text": "one"}\n{"key": "k2", "text": "two\\nlines ✓"}\n'
                                 '{"key": "k3", "text": "three", "prompt_tokens": 12, "completion_tokens": 4, '
                                 '"latency_s": 0.5}\n').encode()
    assert Journal(path).completion("k3") == Completion("three", 12, 4, 0.5)


class MemorySegments(JournalSegments):
    """Journal segments kept in a dict, in write order (the S3 ones are tested against moto in
    tests/storage/test_s3_store.py and tests/integration/test_journal_in_store.py)."""

    def __init__(self, objects: dict[str, bytes] | None = None):
        self.objects = {} if objects is None else objects
        self.where = "mem://journal/"

    def read(self):
        return sorted(self.objects.items())

    def write(self, data):
        url = f"{self.where}seg-{len(self.objects):04d}.jsonl"
        self.objects[url] = data
        return url

    def keys(self) -> list[list[str]]:
        """The keys of each segment, oldest first."""
        return [[json.loads(line)["key"] for line in data.decode().splitlines()] for _, data in self.read()]


def test_segments_are_flushed_every_n_responses_and_on_close(tmp_path):
    segments = MemorySegments()
    with Journal(tmp_path / "j.jsonl", segments=segments, flush_responses=3, flush_s=3600) as journal:
        journal.append_many([(f"k{i}", f"t{i}") for i in range(2)])
        assert segments.objects == {}  # 2 < 3 waiting
        journal.append_many([("k2", "t2"), ("k3", "t3")])
        assert segments.keys() == [["k0", "k1", "k2", "k3"]]  # 4 ≥ 3: one segment of all that waited
        journal.append("k4", "t4")
        journal.append("k1", "again")  # already journaled: neither written nor flushed
    assert segments.keys() == [["k0", "k1", "k2", "k3"], ["k4"]]  # the rest on close
    journal.flush()
    assert len(segments.objects) == 2  # nothing waits: no empty segment


def test_a_waiting_response_is_flushed_after_flush_s_without_more_responses(tmp_path):
    segments = MemorySegments()
    journal = Journal(tmp_path / "j.jsonl", segments=segments, flush_responses=100, flush_s=0.2)
    journal.append("k0", "t0")
    deadline = time.monotonic() + 30
    while not segments.objects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert segments.keys() == [["k0"]]
    journal.close()
    assert segments.keys() == [["k0"]]


def test_a_retry_from_an_empty_home_sends_only_what_no_segment_holds(tmp_path):
    """A step dies on machine A (SIGKILL: no flush after it) after 7 responses, 6 of them flushed (every 3); a
    retry on machine B, whose home is empty, sends only the 4 others; each key lands in one segment."""
    requests = make_requests(10)
    segments = MemorySegments()

    class DyingJournal(Journal):
        dead = False

        def flush(self):
            if not self.dead:
                super().flush()

    journal_a = DyingJournal(tmp_path / "a" / "j.jsonl", segments=segments, flush_responses=3, flush_s=3600)

    class DyingEngine(FakeEngine):
        def generate(self, requests, on_results=None):
            try:
                return super().generate(requests, on_results)
            except RuntimeError:
                journal_a.dead = True
                raise

    crashing = DyingEngine(fail_after=7)
    with pytest.raises(RuntimeError, match="crashed"):
        generate_journaled(crashing, requests, journal_a)
    assert len(crashing.sent) == 7 and len(Journal(tmp_path / "a" / "j.jsonl")) == 7
    flushed = {key for keys in segments.keys() for key in keys}
    assert flushed == set(crashing.sent[:6])

    retry = FakeEngine()
    with Journal(tmp_path / "b" / "j.jsonl", segments=segments, flush_responses=3, flush_s=3600) as journal_b:
        texts = generate_journaled(retry, requests, journal_b)
    assert sorted(retry.sent) == sorted(r.key for r in requests if r.key not in flushed)  # 4: one was not flushed
    assert texts == [f"text:{r.key[:10]}" for r in requests]
    everything = [key for keys in segments.keys() for key in keys]
    assert sorted(everything) == sorted(r.key for r in requests)  # each key in exactly one segment


def test_a_failing_engine_still_flushes_what_finished(tmp_path):
    segments = MemorySegments()
    journal = Journal(tmp_path / "j.jsonl", segments=segments, flush_responses=64, flush_s=3600)
    with pytest.raises(RuntimeError, match="crashed"):
        generate_journaled(FakeEngine(fail_after=5), make_requests(10), journal)
    assert segments.keys() == [[r.key for r in make_requests(10)[:5]]]


def test_opening_merges_segments_and_the_local_file_first_text_wins(tmp_path):
    """Segments first (oldest first), then the local file; records only in the local file (journaled by a
    process killed before it flushed them) go to the store with the next flush."""
    segments = MemorySegments({"mem://journal/seg-0000.jsonl": b'{"key": "a", "text": "from seg 0"}\n',
                               "mem://journal/seg-0001.jsonl": b'{"key": "a", "text": "from seg 1"}\n'
                                                            b'{"key": "b", "text": "from seg 1"}\n'})
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "b", "text": "local"}\n{"key": "c", "text": "local"}\n')
    journal = Journal(path, segments=segments, flush_responses=64, flush_s=3600)
    assert journal.texts == {"a": "from seg 0", "b": "from seg 1", "c": "local"}
    assert journal.where == f"{path} and mem://journal/"
    journal.close()
    assert segments.keys()[-1] == ["c"]  # only what no segment held
    assert Journal(tmp_path / "empty.jsonl", segments=segments).texts == journal.texts


def test_a_corrupt_segment_is_an_error_naming_it_and_the_line(tmp_path):
    segments = MemorySegments({"mem://journal/seg-0.jsonl": b'{"key": "a", "text": "x"}\n{"key": 1}\n'})
    with pytest.raises(InputError, match=r"^mem://journal/seg-0.jsonl:2: not a journal record"):
        Journal(tmp_path / "j.jsonl", segments=segments)


def test_a_killed_process_loses_no_appended_response_and_fsyncs_are_grouped(tmp_path, monkeypatch):
    """Each append reaches the kernel before it returns (a SIGKILLed process loses none); fsync comes once
    per `sync_s` interval for all the appends in it, and at once on `sync`, `flush` and `close`."""
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "killed.jsonl"
    script = ("import os, signal, sys\nfrom prismatic.generation.journal import Journal\n"
              "journal = Journal(sys.argv[1], sync_s=3600)\n"
              "for i in range(500):\n    journal.append(f'k{i}', f'text {i}')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    reopened = Journal(path)
    assert len(reopened) == 500 and reopened["k499"] == "text 499"

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    journal = Journal(tmp_path / "grouped.jsonl", sync_s=2.0)
    journal.append("a", "first")
    for i in range(999):
        journal.append(f"b{i}", "more")
    assert synced == []  # nothing waits on disk within the interval
    deadline = time.monotonic() + 10
    while not synced and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(synced) == 1  # one fsync for the 1000 appends of the interval
    journal.append("c", "after")
    journal.sync()
    assert len(synced) == 2
    journal.close()
    assert len(synced) == 2 and len(Journal(tmp_path / "grouped.jsonl")) == 1001  # nothing was left to sync
