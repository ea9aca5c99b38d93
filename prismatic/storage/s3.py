"""The S3 backend: `S3Store` (one PUT or a multipart upload per partition, the footer read with one
ranged GET, an optional run cache of what this process wrote and read), `S3RoundLock` (a lock object
created and refreshed with conditional PUTs), `parse_s3_uri`, and `s3_client`, the one place a boto3
client is built from `S3Config`.

Layout and guarantees are those of `base.Store`; see docs/data-model.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from prismatic.config import S3Config
from prismatic.errors import PrismError
from prismatic.faults import fault_point
from prismatic.rounds import ROUND_RE, check_round, round_sort_key
from prismatic.storage.base import LOCK_DIR, PART_FILE, REPORT_DIR, Store
from prismatic.storage.locks import BaseRoundLock, parse_record
from prismatic.storage.schema import PARTITION_COLUMN, check_table
from prismatic.storage.segments import S3JournalSegments

log = logging.getLogger(__name__)

FOOTER_GUESS = 64 * 1024
"""Bytes an S3 store reads from an object's end to get its Parquet footer (schema, provenance) in one GET."""
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
"""S3 error codes of a missing object."""
CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
"""S3 error codes of a conditional write that lost (the object exists, or changed)."""


class S3Store(Store):
    """Tables under `s3://bucket/prefix`: `<prefix>/<table>/round=<rNNN>/part-0.parquet`.

    `client` is a boto3 S3 client (the Dagster resource passes dagster-aws's `S3Resource` client);
    None: one from the standard AWS chain (`AWS_ENDPOINT_URL`, profiles, roles), with `settings`.

    Atomic by S3's own rule: an object appears only when its upload completes. A file up to
    `settings.part_size_mb` is one PUT; a larger one is a multipart upload whose object appears only
    at `CompleteMultipartUpload` (a failed upload is aborted; one whose writer was killed stays an
    invisible incomplete upload until the round's next lock holder aborts it). Each object carries
    the SHA-256 of its bytes (`x-amz-meta-sha256`), its data version without reading it back.
    Provenance is read from the file's footer with one ranged GET.

    run_cache: remember, for this instance's life, each partition this process wrote or read: that it
    exists, its SHA-256 and its footer (schema and provenance), all taken from the bytes written or
    from the one GET that read them. `exists`, `data_version`, `read_schema` and `read_metadata` of
    such a partition then make no request. The Dagster store resource turns it on: its store lives for
    one run in one process (`resources.store.StoreResource`), during which the round's partitions are
    written only by that run (the round lock) and earlier rounds are finished. What is never cached:
    the data (`read` always GETs the object, in one request, so it is never torn), an absent partition
    (asked again each time), listings (`rounds`), the lock and the journal segments.
    """

    def __init__(self, uri: str, *, client: Any = None, settings: S3Config | None = None, run_cache: bool = False):
        self.bucket, self.prefix = parse_s3_uri(str(uri))
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.settings = settings or S3Config()
        self.client = client if client is not None else s3_client(self.settings)
        self.run_cache = run_cache
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._seen_lock = threading.Lock()

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def key(self, table: str, round_key: str) -> str:
        return self._key(check_table(table), f"{PARTITION_COLUMN}={check_round(round_key)}", PART_FILE)

    def location(self, table: str, round_key: str) -> str:
        return f"s3://{self.bucket}/{self.key(table, round_key)}"

    def glob(self, table: str) -> str:
        return f"s3://{self.bucket}/{self._key(check_table(table), f'{PARTITION_COLUMN}=*', '*.parquet')}"

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        """`client.<method>(Bucket=..., **kwargs)` with errors as one-line `PrismError`s naming `what`."""
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise PrismError(f"{what}: S3 {method} failed: {error.get('Code')} {error.get('Message', '')}".strip()
                             ) from None
        except BotoCoreError as exc:
            raise PrismError(f"{what}: S3 {method} failed: {exc}") from None

    def exists(self, table: str, round_key: str) -> bool:
        return self._cached(table, round_key) is not None or self._head(table, round_key, missing_ok=True) is not None

    def _list(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            kwargs = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self._call(f"s3://{self.bucket}/{prefix}", "list_objects_v2", **kwargs)
            keys += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def rounds(self, table: str) -> list[str]:
        prefix = self._key(check_table(table), f"{PARTITION_COLUMN}=")
        found = set()
        for key in self._list(prefix):
            directory, _, name = key[len(prefix):].partition("/")
            if name == PART_FILE and ROUND_RE.fullmatch(directory):
                found.add(directory)
        return sorted(found, key=round_sort_key)

    def data_version(self, table: str, round_key: str) -> str:
        seen = self._cached(table, round_key)
        digest = seen.sha256 if seen is not None else None
        if digest is None:
            digest = self._head(table, round_key).get("Metadata", {}).get("sha256")
        if digest is None:  # an object written without x-amz-meta-sha256 (not by this store): hash its bytes
            digest = hashlib.sha256(self._get(table, round_key)[0]).hexdigest()
        return digest[:16]

    # -- requests, and what the run cache learns from them -----------------------------------------

    def _head(self, table: str, round_key: str, *, missing_ok: bool = False) -> dict | None:
        """The object's HEAD reply (None when it is missing and `missing_ok`); remembers its digest."""
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=self.key(table, round_key))
        except ClientError as exc:
            if _s3_code(exc) in NOT_FOUND:
                if missing_ok:
                    return None
                raise self._missing(table, round_key) from None
            raise PrismError(f"{self.location(table, round_key)}: S3 head_object failed: {_s3_code(exc)}") from None
        self._remember(table, round_key, reply.get("Metadata", {}).get("sha256"))
        return reply

    def _get(self, table: str, round_key: str, **kwargs: Any) -> tuple[bytes, str | None]:
        """The object's bytes (a `Range` of them when given) and its recorded SHA-256 (None: not recorded)."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key(table, round_key), **kwargs)
        except ClientError as exc:
            if _s3_code(exc) in NOT_FOUND:
                raise self._missing(table, round_key) from None
            raise PrismError(f"{self.location(table, round_key)}: S3 get_object failed: {_s3_code(exc)}") from None
        return reply["Body"].read(), reply.get("Metadata", {}).get("sha256")

    @contextmanager
    def _read_file(self, table: str, round_key: str, *, footer_only: bool = False):
        if footer_only:
            digests = []

            def tail(size: int) -> bytes:
                data, digest = self._get(table, round_key, Range=f"bytes=-{size}")
                digests.append(digest)
                return data

            reader = _footer_reader(tail)
        else:
            data, digest = self._get(table, round_key)
            digests = [digest]
            reader = pa.BufferReader(data)
        if self.run_cache:
            self._remember(table, round_key, digests[-1], footer=_schema_of(reader))
            reader.seek(0)
        yield reader

    def _footer(self, table: str, round_key: str) -> pa.Schema:
        seen = self._cached(table, round_key)
        return seen.footer if seen is not None and seen.footer is not None else super()._footer(table, round_key)

    def _cached(self, table: str, round_key: str) -> _Seen | None:
        """What the run cache knows of the partition (None: nothing, or no run cache)."""
        with self._seen_lock:
            return self._seen.get((check_table(table), check_round(round_key))) if self.run_cache else None

    def _remember(self, table: str, round_key: str, sha256: str | None, footer: pa.Schema | None = None) -> None:
        """Record in the run cache that the partition's object exists, with digest `sha256` and, when given,
        footer `footer`. A different digest replaces what was known of the older object. An object
        without a recorded digest (not written by this store) is remembered only as existing."""
        if not self.run_cache:
            return
        with self._seen_lock:
            seen = self._seen.get((table, round_key))
            if sha256 is None:
                self._seen[(table, round_key)] = _Seen(None, None)
            elif seen is None or seen.sha256 != sha256:
                self._seen[(table, round_key)] = _Seen(sha256, footer)
            elif footer is not None:
                seen.footer = footer

    def journal_segments(self, round_key: str, step: str) -> S3JournalSegments:
        return S3JournalSegments(self, round_key, step)

    def lock_round(self, round_key: str, owner: str, *, run_id: str | None = None) -> S3RoundLock:
        return S3RoundLock(self, round_key, owner, run_id=run_id)

    def lock_key(self, round_key: str) -> str:
        return self._key(LOCK_DIR, f"{PARTITION_COLUMN}={check_round(round_key)}.json")

    def remove_temporary_files(self, round_key: str) -> int:
        """Abort the round's incomplete multipart uploads (invisible objects that killed writers left)."""
        marker = f"/{PARTITION_COLUMN}={check_round(round_key)}/"
        aborted, kwargs = 0, {"Prefix": self._key("")}
        while True:
            page = self._call(self.uri, "list_multipart_uploads", **kwargs)
            for upload in page.get("Uploads", []):
                if marker in f"/{upload['Key']}":
                    self._call(self.uri, "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])

    def write_report(self, round_key: str, name: str, data: bytes) -> str:
        key = self._key(REPORT_DIR, f"{PARTITION_COLUMN}={check_round(round_key)}", name.rsplit("/", 1)[-1])
        where = f"s3://{self.bucket}/{key}"
        self._call(where, "put_object", Key=key, Body=data,
                   ContentType="text/html; charset=utf-8" if name.endswith(".html") else "application/octet-stream")
        return where

    def _publish(self, table: str, round_key: str, data: bytes) -> None:
        key, where = self.key(table, round_key), self.location(table, round_key)
        metadata = {"sha256": hashlib.sha256(data).hexdigest()}
        part_size = self.settings.part_size_mb * 2**20
        if len(data) <= part_size:
            fault_point(f"store.write:{table}")
            self._call(where, "put_object", Key=key, Body=data, Metadata=metadata)
        else:
            upload = self._call(where, "create_multipart_upload", Key=key, Metadata=metadata)["UploadId"]
            try:
                parts = []
                for number, start in enumerate(range(0, len(data), part_size), start=1):
                    if number > 1:
                        fault_point(f"store.upload_part:{table}")
                    reply = self._call(where, "upload_part", Key=key, UploadId=upload, PartNumber=number,
                                       Body=data[start:start + part_size])
                    parts.append({"ETag": reply["ETag"], "PartNumber": number})
                fault_point(f"store.write:{table}")
                self._call(where, "complete_multipart_upload", Key=key, UploadId=upload,
                           MultipartUpload={"Parts": parts})
            except BaseException:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
                except (ClientError, BotoCoreError) as exc:  # the lock's next holder aborts it then
                    log.warning("%s: could not abort the failed upload %s (%s)", where, upload, exc)
                raise
        if self.run_cache:
            self._remember(table, round_key, metadata["sha256"], footer=_schema_of(pa.BufferReader(data)))
        partition = key.rsplit("/", 1)[0] + "/"
        for stray in self._list(partition):
            if stray.endswith(".parquet") and stray != key:
                self._call(where, "delete_object", Key=stray)


class S3RoundLock(BaseRoundLock):
    """The round lock of an `S3Store`, which has no flock: the holder record is the object
    `<prefix>/_locks/round=<rNNN>.json`, created with a conditional PUT (`If-None-Match: *`), so of
    two writers exactly one creates it.

    - The holder refreshes the record's `heartbeat` every `lease/4` seconds in a daemon thread (a
      PUT conditional on the record it last wrote, `If-Match: <ETag>`).
    - A record is stale when its holder is on this host and its pid is gone, or when its heartbeat
      is older than `s3.lock_lease_s`; a stale record is replaced by a PUT conditional on its ETag,
      so of two processes taking over one dead lock exactly one succeeds. The new holder then aborts
      the round's incomplete multipart uploads (`S3Store.remove_temporary_files`).
    - Re-entrant in a process; a process of the run named in the record (`run_id`: multiprocess or
      k8s steps of one run) may write without holding it, as with `RoundLock`.
    - Releasing deletes the record (conditional on its ETag: a record another process took over stays).
    """

    removed_what = "aborted %d incomplete upload(s) left by an interrupted write"

    def __init__(self, store: S3Store, round_key: str, owner: str, *, run_id: str | None = None):
        super().__init__(store, round_key, owner, run_id=run_id)
        self.key = store.lock_key(round_key)
        self.url = f"s3://{store.bucket}/{self.key}"
        self.lease = store.settings.lock_lease_s
        self._etag: str | None = None
        self._holder: dict[str, Any] = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"S3RoundLock({self.url!r}, owner={self.owner!r})"

    def _put(self, record: dict[str, Any], **condition: str) -> str:
        reply = self.store.client.put_object(Bucket=self.store.bucket, Key=self.key,
                                             Body=json.dumps(record).encode(), **condition)
        return reply["ETag"]

    def _current(self) -> tuple[dict[str, Any], str | None]:
        """The record in the lock object and its ETag ({}, None when there is none)."""
        try:
            reply = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)
        except ClientError as exc:
            if _s3_code(exc) in NOT_FOUND:
                return {}, None
            raise PrismError(f"cannot read the lock {self.url}: {_s3_code(exc)}") from None
        return parse_record(reply["Body"].read()), reply["ETag"]

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return time.time() - float(holder.get("heartbeat", 0)) > self.lease

    def acquire(self) -> S3RoundLock:
        """Take the lock, or raise `RoundLockedError` naming the holder."""
        with self._guard:
            if self._reenter(self.url):
                return self
            self._holder = {**self._record(), "heartbeat": time.time()}
            for _ in range(3):  # a record deleted between our PUT and our GET: try again
                try:
                    self._etag = self._put(self._holder, IfNoneMatch="*")
                    break
                except ClientError as exc:
                    if _s3_code(exc) not in CONDITION_FAILED:
                        raise PrismError(f"cannot lock round {self.round_key} at {self.url}: {_s3_code(exc)}") from None
                holder, etag = self._current()
                if etag is None:
                    continue
                if self.run_id and holder.get("run_id") == self.run_id:
                    return self  # a process of the run that holds the lock
                refusal = self._refusal(holder, where=f"lock object: {self.url}")
                if not self._stale(holder):
                    raise refusal
                try:
                    self._etag = self._put(self._holder, IfMatch=etag)
                except ClientError:
                    raise refusal from None  # another process took it over first
                self.replaced = holder
                break
            else:
                raise PrismError(f"cannot lock round {self.round_key} at {self.url}: the lock object keeps changing")
            self._register(self.url, self)
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._refresh, name=f"lock {self.round_key}", daemon=True)
        self._heartbeat.start()
        self._taken()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(self.lease / 4):
            self._holder["heartbeat"] = time.time()
            try:
                self._etag = self._put(self._holder, IfMatch=self._etag)
            except ClientError as exc:
                log.error("round %s: lost the lock %s (%s): another process took it over", self.round_key,
                          self.url, _s3_code(exc))
                return
            except BotoCoreError as exc:  # a network hiccup: the next beat tries again
                log.warning("round %s: could not refresh the lock %s (%s)", self.round_key, self.url, exc)

    def release(self) -> None:
        """Give the lock back (the outermost release of this process deletes the record)."""
        if not self._holding:
            return
        self._holding = False
        with self._guard:
            outermost, _ = self._unregister(self.url)
        if not outermost:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            self.store.client.delete_object(Bucket=self.store.bucket, Key=self.key, IfMatch=self._etag)
        except ClientError as exc:
            log.warning("round %s: did not delete the lock %s (%s)", self.round_key, self.url, _s3_code(exc))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at its ends) of `s3://bucket[/prefix]`."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", uri)
    if not match:
        raise PrismError(f"store {uri!r}: expected s3://bucket or s3://bucket/prefix with a valid bucket name")
    return match.group(1), (match.group(2) or "").strip("/")


def s3_client(settings: S3Config) -> Any:
    """A boto3 S3 client from the standard AWS chain, with `settings`' endpoint, region and profile."""
    session = boto3.session.Session(profile_name=settings.profile_name)
    return session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region_name)


def _footer_reader(tail: Any) -> pa.BufferReader:
    """The last bytes of a Parquet file, enough for `pq.read_schema`: `tail(size)` returns the file's last
    `size` bytes (all of them when it is shorter); one call unless the footer is longer than a guess.
    The footer is its metadata (length: the little-endian int32 before the closing `PAR1`) plus 8 bytes."""
    data = tail(FOOTER_GUESS)
    footer = int.from_bytes(data[-8:-4], "little") + 8 if len(data) >= 8 else 0
    if footer > len(data):  # a footer longer than the guess (very wide tables)
        data = tail(footer)
    return pa.BufferReader(data)


@dataclass
class _Seen:
    """What an `S3Store`'s run cache knows of one partition's object: it exists; its SHA-256 (hex; None:
    not recorded) and its Parquet footer (None: not read yet), both of one and the same version."""

    sha256: str | None
    footer: pa.Schema | None


def _schema_of(reader: pa.BufferReader) -> pa.Schema | None:
    """The footer schema in `reader` (a whole file or its tail), None when it is not readable Parquet."""
    try:
        return pq.read_schema(reader)
    except (pa.ArrowException, OSError, ValueError):
        return None


def _s3_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
