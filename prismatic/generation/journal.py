"""The journal that makes a generation step resumable (docs/architecture.md).

`Journal` keeps the finished responses of one step as JSONL, one `{"key": …, "text": …}` record per
request key (`prismatic.generation.requests.request_key`), each append flushed and fsynced.
`generate_journaled` sends an engine only the requests whose keys are not yet journaled and journals
each response as the engine reports it, so a step that crashed or was interrupted loses only the
responses in flight and, when retried, sends only the requests it has no answer for.
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

log = logging.getLogger(__name__)


class Journal:
    """Finished responses of one generation step: JSONL of `{"key": …, "text": …}`, one per request key.

    Each append is flushed and fsynced before `append_many` returns. Opening a journal whose last
    line was torn by a crash mid-write drops that line (the file is truncated to the last complete
    record); any other unreadable line is an error naming the line. Thread-safe.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._texts: dict[str, str] = {}
        self._lock = threading.Lock()
        self._load()

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
        """Append records for keys not yet journaled; one write, flush and fsync."""
        with self._lock:
            fresh: dict[str, str] = {}
            for key, text in items:
                if key not in self._texts and key not in fresh:
                    fresh[key] = text
            if not fresh:
                return
            payload = "".join(json.dumps({"key": k, "text": t}, ensure_ascii=False) + "\n"
                              for k, t in fresh.items())
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            self._texts.update(fresh)
            fault_point("journal.append")


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
    responses in flight. Requests with the same key are sent once.
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
                             f"kept in the journal {journal.path}; a rerun sends only the other {left})") from None
        if len(texts) != len(missing):
            raise PrismError(f"the engine returned {len(texts)} texts for {len(missing)} requests")
        journal.append_many((request.key, text) for request, text in zip(missing, texts))
    return [journal[request.key] for request in requests]
