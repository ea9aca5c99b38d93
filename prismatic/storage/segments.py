"""Append-only journal segments in a store: `JournalSegments`, and `S3JournalSegments`, its S3 backend.

A generation step's journal (`prismatic.generation.journal.Journal`) keeps its finished responses in a
local JSONL file; with an S3 store it also flushes them, a batch at a time, as segment objects

    <prefix>/_journal/<round>/<step>/seg-<UTC time>-<uuid>.jsonl

so a retry on another machine (a k8s pod with an empty `$PRISM_HOME`) reads them back and sends only
the requests that no segment answers. A segment is written once, whole, with one conditional PUT
(`If-None-Match: *`), and never changed: a reader sees a segment entirely or not at all, so nothing
it reads is torn. Names sort by creation time. See docs/data-model.md (store layout).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any

from prismatic.rounds import check_round

JOURNAL_DIR = "_journal"
"""Directory under the store root that holds the journal segments (no table glob matches it)."""


class JournalSegments(ABC):
    """The segments of one step's journal: `read()` all of them, `write(data)` one more."""

    where: str
    """The folder of the segments (an s3:// URL), for messages."""

    @abstractmethod
    def read(self) -> list[tuple[str, bytes]]:
        """(URL, bytes) of every segment, oldest first."""

    @abstractmethod
    def write(self, data: bytes) -> str:
        """Store `data` as a new segment; returns its URL."""


class S3JournalSegments(JournalSegments):
    """Segments of step `step` of round `round_key` under the store's `_journal/` prefix: one LIST and
    one GET per segment to read them all, one PUT per flush."""

    def __init__(self, store: Any, round_key: str, step: str):
        """store: the `S3Store` (its client, bucket and prefix)."""
        self.store = store
        self.folder = store._key(JOURNAL_DIR, check_round(round_key), step) + "/"
        self.where = f"s3://{store.bucket}/{self.folder}"

    def read(self) -> list[tuple[str, bytes]]:
        found = []
        for key in sorted(self.store._list(self.folder)):
            url = f"s3://{self.store.bucket}/{key}"
            found.append((url, self.store._call(url, "get_object", Key=key)["Body"].read()))
        return found

    def write(self, data: bytes) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        key = f"{self.folder}seg-{stamp}-{uuid.uuid4().hex}.jsonl"
        url = f"s3://{self.store.bucket}/{key}"
        self.store._call(url, "put_object", Key=key, Body=data, IfNoneMatch="*")
        return url
