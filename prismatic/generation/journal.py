"""The journal that makes a generation step resumable (docs/architecture.md).

`Journal` keeps the finished responses of one step as JSONL, one record per request key
(`prismatic.generation.requests.request_key`): `{"key", "text", "prompt_tokens", "completion_tokens",
"latency_s"}` (what the response cost, `prismatic.generation.usage.Completion`; journals written before
the counts existed hold `{"key", "text"}` records, read as responses without counts), each append
written to a local file before it returns (a killed process loses none) and fsynced within `sync_s`
(one fsync for all the responses of that interval). With an S3 store it also flushes them to the
store as immutable segments (`prismatic.storage.segments`), so a step retried on another machine,
with an empty `$PRISM_HOME`, finds them. `generate_journaled` sends an engine only the requests whose
keys are not yet journaled and journals each response as the engine reports it, so a step that
crashed or was interrupted loses only the responses in flight (and, on another machine, those not
yet flushed) and, when retried, sends only the requests it has no answer for. With a `Budget` it
stops sending once the round's spending (the journal's responses and those since) reaches it, and
fails with one line saying so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from prismatic.errors import InputError, PrismError
from prismatic.faults import fault_point
from prismatic.generation.engines.base import Engine
from prismatic.generation.requests import GenerationRequest
from prismatic.generation.usage import Budget, BudgetExhausted, Completion, Usage
from prismatic.storage.segments import JournalSegments

log = logging.getLogger(__name__)


class Journal:
    """Finished responses of one generation step: JSONL of `{"key", "text", "prompt_tokens",
    "completion_tokens", "latency_s"}` records (a value not known left out), one per request key.

    Each append is written to the local file `path` (handed to the kernel, through one handle kept
    open) before `append_many` returns, so a process killed at any point loses no journaled response;
    the file is fsynced `sync_s` seconds after the first write it does not yet hold on disk, and by
    `sync()`, `flush()` and `close()`: a machine that loses power loses at most the responses of the
    last `sync_s` seconds, and a step appending thousands of responses a second pays one fsync per
    interval, not one per response. Opening a journal whose last line was torn by a crash mid-write
    drops that line (the file is truncated to the last complete record); any other unreadable line
    is an error naming the line. Thread-safe.

    segments: the store's segments of this step (`Store.journal_segments`; None: the local file only).
    Responses appended are then also written to the store as one new segment when
    `flush_responses` of them are waiting, or `flush_s` seconds after the oldest waiting one arrived,
    whichever comes first, and by `flush()`/`close()` (`generate_journaled` flushes when it returns or
    fails). Opening reads every segment, oldest first, then the local file; a key's first text wins,
    so a key in two places counts once. Records of the local file that no segment holds are flushed
    with the next segment. A process killed without closing loses from the store at most the
    responses of the last `flush_s` seconds (fewer than `flush_responses`); its local file keeps them.
    """

    def __init__(self, path: str | Path, *, segments: JournalSegments | None = None, flush_responses: int = 64,
                 flush_s: float = 30.0, sync_s: float = 0.05):
        self.path = Path(path)
        self.segments = segments
        self.flush_responses = flush_responses
        self.flush_s = flush_s
        self.sync_s = sync_s
        self._handle = None
        """The local file, opened for appending on the first append and kept open until `close`."""
        self._sync_timer: threading.Timer | None = None
        """Set while written records wait for their fsync."""
        self._records: dict[str, Completion] = {}
        self._unflushed: dict[str, Completion] = {}
        """Records in the local file that no segment holds yet (segments only)."""
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._timer: threading.Timer | None = None
        if segments is not None:
            for url, data in segments.read():
                self._load_segment(url, data)
        from_segments = set(self._records)
        self._load()
        if segments is not None:
            self._unflushed = {key: record for key, record in self._records.items() if key not in from_segments}
            if self._unflushed:
                self._start_timer()

    @property
    def where(self) -> str:
        """The local file, and the store's folder of segments when there is one (for messages)."""
        return str(self.path) if self.segments is None else f"{self.path} and {self.segments.where}"

    def _load_segment(self, url: str, data: bytes) -> None:
        for line_no, raw in enumerate(data.split(b"\n"), start=1):
            if raw.strip():
                record = _journal_record(raw)
                if record is None:
                    raise InputError(url, _NOT_A_RECORD, line=line_no)
                self._records.setdefault(*record)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        offset = 0
        chunks = data.split(b"\n")
        for line_no, raw in enumerate(chunks, start=1):
            final = line_no == len(chunks)  # the bytes after the last newline
            if raw.strip():
                record = _journal_record(raw)
                if record is None:
                    if not final:
                        raise InputError(self.path, _NOT_A_RECORD, line=line_no)
                    log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(raw))
                    os.truncate(self.path, offset)
                    return
                self._records.setdefault(*record)
                if final:  # a complete record that lost its newline
                    with self.path.open("ab") as handle:
                        handle.write(b"\n")
            offset += len(raw) + 1

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> str | None:
        record = self._records.get(key)
        return None if record is None else record.text

    def __getitem__(self, key: str) -> str:
        return self._records[key].text

    def completion(self, key: str) -> Completion:
        """The journaled response of `key`: text, tokens and latency (None where unknown)."""
        return self._records[key]

    @property
    def texts(self) -> dict[str, str]:
        """A copy of key → text of every finished response."""
        return {key: record.text for key, record in self._records.items()}

    def usage(self, keys: Iterable[str] | None = None) -> Usage:
        """The summed tokens and latencies of the responses of `keys` (each once; keys not journaled are
        skipped), or of every journaled response."""
        if keys is None:
            return Usage.of(self._records.values())
        return Usage.of(self._records[key] for key in dict.fromkeys(keys) if key in self._records)

    def append(self, key: str, text: str | Completion) -> None:
        self.append_many([(key, text)])

    def append_many(self, items: Iterable[tuple[str, str | Completion]]) -> None:
        """Append records (a text alone counts nothing) for keys not yet journaled: one write, handed to
        the kernel before this returns, fsynced within `sync_s` (class docstring). With segments, flush
        them to the store when `flush_responses` are waiting, else start the `flush_s` clock."""
        due = False
        with self._lock:
            fresh: dict[str, Completion] = {}
            for key, value in items:
                if key not in self._records and key not in fresh:
                    fresh[key] = Completion.of(value)
            if not fresh:
                return
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("a", encoding="utf-8")
            self._handle.write(_records(fresh))
            self._handle.flush()
            if self._sync_timer is None:
                self._sync_timer = threading.Timer(self.sync_s, self.sync)
                self._sync_timer.daemon = True
                self._sync_timer.start()
            self._records.update(fresh)
            if self.segments is not None:
                self._unflushed.update(fresh)
                due = len(self._unflushed) >= self.flush_responses
                if not due:
                    self._start_timer()
        if due:
            self.flush()
        fault_point("journal.append")

    def sync(self) -> None:
        """fsync the local file if a written record is not yet on disk."""
        with self._lock:
            if self._sync_timer is None:
                return
            self._sync_timer.cancel()
            self._sync_timer = None
            descriptor = self._handle.fileno()
            os.fsync(descriptor)  # under the lock: `close` cannot close the file meanwhile

    def flush(self) -> None:
        """`sync`, then write the responses that no segment holds yet as one new segment (no request when
        there are none). A failed write is logged and tried again `flush_s` seconds later (and at the
        next flush): the responses stay in the local file meanwhile."""
        self.sync()
        if self.segments is None:
            return
        with self._flushing:
            with self._lock:
                batch, self._unflushed = self._unflushed, {}
                self._stop_timer()
            if not batch:
                return
            try:
                url = self.segments.write(_records(batch).encode("utf-8"))
            except PrismError as exc:
                with self._lock:
                    self._unflushed = {**batch, **self._unflushed}
                    self._start_timer()
                log.warning("could not flush %d journaled response(s) to the store (%s); they stay in %s and "
                            "the flush is tried again", len(batch), exc, self.path)
                return
            log.debug("flushed %d journaled response(s) to %s", len(batch), url)

    def close(self) -> None:
        """Flush what waits (see `flush`), stop the flush clock and close the local file."""
        self.flush()
        with self._lock:
            self._stop_timer()
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_timer(self) -> None:
        """Flush in `flush_s` seconds unless a flush comes first (call with `_lock` held)."""
        if self._timer is None:
            self._timer = threading.Timer(self.flush_s, self._timed_flush)
            self._timer.daemon = True
            self._timer.start()

    def _stop_timer(self) -> None:
        """(call with `_lock` held)"""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_flush(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()


_NOT_A_RECORD = 'not a journal record {"key", "text", "prompt_tokens", "completion_tokens", "latency_s"}'


def _records(records: dict[str, Completion]) -> str:
    """JSONL records, keys in this order, non-ASCII kept; a count or latency not known is left out (a
    response without any is the `{"key", "text"}` record earlier code wrote, and reads)."""
    lines = []
    for key, c in records.items():
        record = {"key": key, "text": c.text, "prompt_tokens": c.prompt_tokens,
                  "completion_tokens": c.completion_tokens, "latency_s": c.latency_s}
        lines.append(json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False) + "\n")
    return "".join(lines)


def _journal_record(raw: bytes) -> tuple[str, Completion] | None:
    """(key, response) of one line; None when it is not a record. Records written before counts were
    journaled have only key and text."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("key"), str) \
            or not isinstance(value.get("text"), str):
        return None
    counts = [value.get(name) for name in ("prompt_tokens", "completion_tokens")]
    latency = value.get("latency_s")
    if any(c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 0) for c in counts) \
            or latency is not None and (not isinstance(latency, int | float) or isinstance(latency, bool)):
        return None
    return value["key"], Completion(value["text"], *counts, latency)


def generate_journaled(engine: Engine, requests: Sequence[GenerationRequest], journal: Journal,
                       budget: Budget | None = None, what: str = "") -> list[str]:
    """Texts of all `requests` in order, sending only those whose key is not in `journal`.

    Each finished response is journaled, with its tokens and latency, as the engine reports it, so an
    interrupted call loses only responses in flight. Requests with the same key are sent once. The
    journal's segments are flushed when the call returns or fails.

    budget: charged with every response journaled (`Budget.charge`; it should start from
      `journal.usage()`); when the engine stops because it is reached (`BudgetExhausted`), one
      `PrismError` line names the budget, what was spent and how many of these requests are left, and
      says that a rerun with a larger budget resumes from the journal. Nothing journaled is lost or
      sent again. what: the kind of request, for that line (e.g. "solution").
    """
    missing: list[GenerationRequest] = []
    queued: set[str] = set()
    for request in requests:
        if request.key not in journal and request.key not in queued:
            missing.append(request)
            queued.add(request.key)
    if missing:
        def record(pairs: list[tuple[int, str | Completion]]) -> None:
            fresh = [(missing[position].key, Completion.of(value)) for position, value in pairs]
            new = [completion for key, completion in fresh if key not in journal]
            journal.append_many(fresh)
            if budget is not None:
                for completion in new:
                    budget.charge(completion)

        kind = f"{what} requests" if what else "requests"
        try:
            if budget is not None and budget.reached():
                raise BudgetExhausted("the generation budget is reached")
            texts = engine.generate(missing, on_results=record, **({"budget": budget} if budget is not None else {}))
        except BudgetExhausted:
            left = sum(1 for request in missing if request.key not in journal)
            raise PrismError(f"{budget.describe()}; {left} of the {len(missing)} {kind} to send are unanswered. "
                             f"Nothing answered is lost: a rerun with a larger budget resumes from the journal "
                             f"{journal.where} and sends only those {left}") from None
        except PrismError as exc:
            left = sum(1 for request in missing if request.key not in journal)
            raise PrismError(f"{exc} ({len(missing) - left} of the {len(missing)} {kind} sent finished and are "
                             f"kept in the journal {journal.where}; a rerun sends only the other {left})") from None
        finally:
            journal.flush()
        if len(texts) != len(missing):
            raise PrismError(f"the engine returned {len(texts)} texts for {len(missing)} requests")
        journal.append_many((request.key, text) for request, text in zip(missing, texts))
        journal.flush()
    return [journal[request.key] for request in requests]
