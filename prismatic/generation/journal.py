"""The journal that makes a generation step resumable (docs/architecture.md).

`Journal` keeps the finished responses of one step as JSONL, one `{"key": …, "text": …}` record per
request key (`prismatic.generation.requests.request_key`), each append flushed and fsynced to a local
file. With an S3 store it also flushes them to the store as immutable segments
(`prismatic.storage.segments`), so a step retried on another machine, with an empty `$PRISM_HOME`,
finds them. `generate_journaled` sends an engine only the requests whose keys are not yet journaled
and journals each response as the engine reports it, so a step that crashed or was interrupted loses
only the responses in flight (and, on another machine, those not yet flushed) and, when retried,
sends only the requests it has no answer for.
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
from prismatic.storage.segments import JournalSegments

log = logging.getLogger(__name__)


class Journal:
    """Finished responses of one generation step: JSONL of `{"key": …, "text": …}`, one per request key.

    Each append is flushed and fsynced to the local file `path` before `append_many` returns. Opening
    a journal whose last line was torn by a crash mid-write drops that line (the file is truncated to
    the last complete record); any other unreadable line is an error naming the line. Thread-safe.

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
                 flush_s: float = 30.0):
        self.path = Path(path)
        self.segments = segments
        self.flush_responses = flush_responses
        self.flush_s = flush_s
        self._texts: dict[str, str] = {}
        self._unflushed: dict[str, str] = {}
        """Records in the local file that no segment holds yet (segments only)."""
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._timer: threading.Timer | None = None
        if segments is not None:
            for url, data in segments.read():
                self._load_segment(url, data)
        from_segments = set(self._texts)
        self._load()
        if segments is not None:
            self._unflushed = {key: text for key, text in self._texts.items() if key not in from_segments}
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
                    raise InputError(url, "not a journal record {\"key\", \"text\"}", line=line_no)
                self._texts.setdefault(*record)

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
                        raise InputError(self.path, "not a journal record {\"key\", \"text\"}", line=line_no)
                    log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(raw))
                    os.truncate(self.path, offset)
                    return
                self._texts.setdefault(*record)
                if final:  # a complete record that lost its newline
                    with self.path.open("ab") as handle:
                        handle.write(b"\n")
            offset += len(raw) + 1

    def __contains__(self, key: object) -> bool:
        return key in self._texts

    def __len__(self) -> int:
        return len(self._texts)

    def get(self, key: str) -> str | None:
        return self._texts.get(key)

    def __getitem__(self, key: str) -> str:
        return self._texts[key]

    @property
    def texts(self) -> dict[str, str]:
        """A copy of key → text of every finished response."""
        return dict(self._texts)

    def append(self, key: str, text: str) -> None:
        self.append_many([(key, text)])

    def append_many(self, items: Iterable[tuple[str, str]]) -> None:
        """Append records for keys not yet journaled; one write, flush and fsync. With segments, flush
        them to the store when `flush_responses` are waiting, else start the `flush_s` clock."""
        due = False
        with self._lock:
            fresh: dict[str, str] = {}
            for key, text in items:
                if key not in self._texts and key not in fresh:
                    fresh[key] = text
            if not fresh:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(_records(fresh))
                handle.flush()
                os.fsync(handle.fileno())
            self._texts.update(fresh)
            if self.segments is not None:
                self._unflushed.update(fresh)
                due = len(self._unflushed) >= self.flush_responses
                if not due:
                    self._start_timer()
        if due:
            self.flush()
        fault_point("journal.append")

    def flush(self) -> None:
        """Write the responses that no segment holds yet as one new segment (no request when there are
        none). A failed write is logged and tried again `flush_s` seconds later (and at the next flush):
        the responses stay in the local file meanwhile."""
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
        """Flush what waits (see `flush`) and stop the flush clock."""
        self.flush()
        with self._lock:
            self._stop_timer()

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


def _records(texts: dict[str, str]) -> str:
    """JSONL of `{"key": …, "text": …}` records, keys in this order, non-ASCII kept."""
    return "".join(json.dumps({"key": k, "text": t}, ensure_ascii=False) + "\n" for k, t in texts.items())


def _journal_record(raw: bytes) -> tuple[str, str] | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("key"), str) \
            or not isinstance(value.get("text"), str):
        return None
    return value["key"], value["text"]


def generate_journaled(engine: Engine, requests: Sequence[GenerationRequest], journal: Journal) -> list[str]:
    """Texts of all `requests` in order, sending only those whose key is not in `journal`.

    Each finished response is journaled as the engine reports it, so an interrupted call loses only
    responses in flight. Requests with the same key are sent once. The journal's segments are
    flushed when the call returns or fails.
    """
    missing: list[GenerationRequest] = []
    queued: set[str] = set()
    for request in requests:
        if request.key not in journal and request.key not in queued:
            missing.append(request)
            queued.add(request.key)
    if missing:
        def record(pairs: list[tuple[int, str]]) -> None:
            journal.append_many((missing[position].key, text) for position, text in pairs)

        try:
            texts = engine.generate(missing, on_results=record)
        except PrismError as exc:
            left = sum(1 for request in missing if request.key not in journal)
            raise PrismError(f"{exc} ({len(missing) - left} of the {len(missing)} requests sent finished and are "
                             f"kept in the journal {journal.where}; a rerun sends only the other {left})") from None
        finally:
            journal.flush()
        if len(texts) != len(missing):
            raise PrismError(f"the engine returned {len(texts)} texts for {len(missing)} requests")
        journal.append_many((request.key, text) for request, text in zip(missing, texts))
        journal.flush()
    return [journal[request.key] for request in requests]
