"""`open_store(uri)`: the one way to open a table store, a `LocalStore` for a directory (or `file://`
URI) and an `S3Store` for `s3://bucket/prefix`. Callers with a home's configuration pass
`open_store(config.store_uri, s3=config.s3)`. See docs/data-model.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prismatic.config import S3Config
from prismatic.storage.base import Store
from prismatic.storage.local import LocalStore
from prismatic.storage.s3 import S3Store


def open_store(uri: str | Path, *, s3: S3Config | None = None, client: Any = None, run_cache: bool = False) -> Store:
    """The store at `uri`: `s3://bucket[/prefix]` → `S3Store` with the `s3` settings (default `S3Config()`),
    `client` (a boto3 S3 client; None: one built from `s3`) and `run_cache` (`S3Store`: for a store opened
    for one run); a path or `file://` URI → `LocalStore` (`s3`, `client` and `run_cache` unused: local
    lookups cost no request). Any other scheme is refused with a `PrismError`."""
    text = str(uri)
    if text.startswith("s3://"):
        return S3Store(text, client=client, settings=s3, run_cache=run_cache)
    return LocalStore(text)
