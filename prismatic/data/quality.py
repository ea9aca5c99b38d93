"""Data quality of generated problems: exact and near-duplicate removal, benchmark decontamination.

Texts are compared after normalization,

    normalize(t) = NFKC(t), case-folded, every run of characters that are not letters or digits
                   replaced by one space, stripped;      words(t) = normalize(t).split(" ").

exact duplicate   normalize(a) = normalize(b); the key is the BLAKE2b-128 digest of normalize(t).
near duplicate    J(a, b) ≥ t (`threshold`), J the Jaccard similarity |S(a) ∩ S(b)| / |S(a) ∪ S(b)| of
                  the sets S of q-word shingles (q consecutive words; a text of fewer than q words is
                  one shingle of all its words). Candidate pairs come from MinHash LSH (datasketch:
                  `permutations` hash functions, seed 1, bands and rows chosen by datasketch for t);
                  every candidate pair is then confirmed with the exact J, so a reported pair always
                  has J ≥ t. LSH can miss a pair with J ≥ t (for J well above t, rarely; for J just
                  above t, with probability up to about one half).
contamination     the problem shares at least one word n-gram (n consecutive words of normalize,
                  n = 10 by default) with a text of a benchmark file. A problem of fewer than n words
                  has no n-gram and is never flagged.

`ProblemFilter.apply` decides the problems of one round in the order given (generation order, i.e.
id order) against the pool and against the problems of this round already kept; the first rule that
matches removes a problem, in this order:

    benchmark_contamination, exact_duplicate_pool, exact_duplicate_round,
    near_duplicate_pool, near_duplicate_round

so of two duplicates within a round the first is kept. Each removal is a `rejections` row
(id, reason, detail) with a JSON detail: the matched pool/round id (and J for near duplicates), or
the benchmark file, its line (JSONL) or row (Parquet, 1-based) and the shared n-gram.

The index over the pool is rebuilt every round, so it is kept small: per indexed text its exact key,
its text (a candidate's shingles are computed again when a query finds it) and its LSH entry, whose
band keys are 8-byte BLAKE2b digests of the bands (a digest collision only adds a candidate, which the
exact J then rejects).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from datasketch import MinHash, MinHashLSH

from prismatic.config import DecontaminationConfig, DedupConfig
from prismatic.data.samples import jsonl_records
from prismatic.errors import InputError
from prismatic.storage.schema import schema

REASONS = ("benchmark_contamination", "exact_duplicate_pool", "exact_duplicate_round",
           "near_duplicate_pool", "near_duplicate_round")
MINHASH_SEED = 1


def normalize(text: str) -> str:
    """NFKC, case-folded, non-alphanumeric runs → one space, stripped (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in folded).split())


def words(text: str) -> list[str]:
    normalized = normalize(text)
    return normalized.split(" ") if normalized else []


def exact_key(text: str) -> str:
    """BLAKE2b-128 hex digest of the normalized text."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


def shingles(text: str, size: int) -> frozenset[str]:
    """The set of `size`-word shingles of normalize(text) (one shingle when it is shorter)."""
    tokens = words(text)
    if len(tokens) <= size:
        return frozenset([" ".join(tokens)]) if tokens else frozenset()
    return frozenset(" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def ngrams(text: str, n: int) -> list[str]:
    tokens = words(text)
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


# ------------------------------------------------------------------------------ benchmark files


@dataclass(frozen=True)
class NgramSource:
    path: str
    line: int


class BenchmarkIndex:
    """Every word n-gram of the benchmark texts, each with the first file and line it occurs on."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"n-gram length must be ≥ 1, got {n}")
        self.n = n
        self.sources: dict[str, NgramSource] = {}
        self.files: list[str] = []
        self.texts = 0

    def add_texts(self, path: str, texts: Iterable[tuple[int, str]]) -> None:
        self.files.append(path)
        for line, text in texts:
            self.texts += 1
            for gram in ngrams(text, self.n):
                self.sources.setdefault(gram, NgramSource(path, line))

    def add_file(self, path: str | Path, field: str) -> None:
        """Index the `field` texts of a JSONL or Parquet file (`InputError` names file, line, field)."""
        self.add_texts(str(path), read_benchmark_texts(path, field))

    def match(self, text: str) -> tuple[str, NgramSource] | None:
        """The first n-gram of `text` that a benchmark text shares, with where it occurs."""
        for gram in ngrams(text, self.n):
            source = self.sources.get(gram)
            if source is not None:
                return gram, source
        return None


def read_benchmark_texts(path: str | Path, field: str) -> list[tuple[int, str]]:
    """(line, text) of every row of a JSONL file, or (row, text) of a Parquet file (1-based).

    Every row must hold `field` as a string; anything else is an `InputError` naming the file, the
    line (or row) and the field. Blank JSONL lines are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "benchmark file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a .jsonl or .parquet benchmark file")
    rows = _parquet_texts(path, field) if path.suffix == ".parquet" else _jsonl_texts(path, field)
    if not rows:
        raise InputError(path, "no rows: the benchmark file is empty")
    return rows


def _jsonl_texts(path: Path, field: str) -> list[tuple[int, str]]:
    """Read like DATA files (`prismatic.data.samples.jsonl_records`): truncated last lines, non-UTF-8 bytes,
    NaN, over-long lines and the like are refused with their line."""
    return [(line, _text_field(path, row, field, line)) for line, row in jsonl_records(path)]


def _parquet_texts(path: Path, field: str) -> list[tuple[int, str]]:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several exception types for corrupt files
        raise InputError(path, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    if field not in frame.columns:
        raise InputError(path, "missing column", field=field)
    return [(row, _text_field(path, {field: value}, field, row))
            for row, value in enumerate(frame.get_column(field).to_list(), start=1)]


def _text_field(path: Path, row: dict, field: str, line: int) -> str:
    if field not in row:
        raise InputError(path, "missing field", line=line, field=field)
    value = row[field]
    if not isinstance(value, str):
        raise InputError(path, f"expected a string, got {type(value).__name__}", line=line, field=field)
    return value


def load_benchmarks(config: DecontaminationConfig) -> BenchmarkIndex | None:
    """The index of every configured benchmark file, or None when none is configured."""
    if not config.benchmarks:
        return None
    index = BenchmarkIndex(config.ngram)
    for benchmark in config.benchmarks:
        index.add_file(benchmark.path, benchmark.field)
    return index


# ------------------------------------------------------------------------------ the filter


class ProblemFilter:
    """Removes contaminated, duplicate and near-duplicate problems of a round (module docstring)."""

    def __init__(self, pool: pl.DataFrame, dedup: DedupConfig, benchmarks: BenchmarkIndex | None = None):
        """`pool`: the previous pool's `id` and `prompt` (repeated prompts are indexed once)."""
        self.dedup = dedup
        self.benchmarks = benchmarks
        self._exact: dict[str, tuple[str, str]] = {}  # key → (origin, id)
        self._texts: dict[str, str] = {}  # id → text of what the LSH holds
        self._origin: dict[str, str] = {}
        self._lsh = (MinHashLSH(threshold=dedup.threshold, num_perm=dedup.permutations, hashfunc=_band_key)
                     if dedup.near else None)
        for row_id, prompt in zip(pool["id"].to_list(), pool["prompt"].to_list(), strict=True):
            if exact_key(prompt) not in self._exact:
                self._index(str(row_id), prompt, "pool")

    def _index(self, row_id: str, text: str, origin: str) -> None:
        self._exact.setdefault(exact_key(text), (origin, row_id))
        if self._lsh is not None:
            self._texts[row_id] = text
            self._origin[row_id] = origin
            self._lsh.insert(row_id, self._minhash(shingles(text, self.dedup.shingle_words)), check_duplication=False)

    def _minhash(self, shingle_set: frozenset[str]) -> MinHash:
        minhash = MinHash(num_perm=self.dedup.permutations, seed=MINHASH_SEED)
        minhash.update_batch(sorted(s.encode("utf-8") for s in shingle_set))
        return minhash

    def check(self, text: str) -> tuple[str, dict] | None:
        """(reason, detail) when `text` must be removed, else None. Does not index `text`."""
        if self.benchmarks is not None:
            found = self.benchmarks.match(text)
            if found is not None:
                gram, source = found
                return "benchmark_contamination", {"benchmark": source.path, "line": source.line, "ngram": gram}
        if self.dedup.exact:
            hit = self._exact.get(exact_key(text))
            if hit is not None:
                return f"exact_duplicate_{hit[0]}", {"match": hit[1]}
        if self._lsh is not None:
            shingle_set = shingles(text, self.dedup.shingle_words)
            best = None
            for other in self._lsh.query(self._minhash(shingle_set)):
                similarity = jaccard(shingle_set, shingles(self._texts[other], self.dedup.shingle_words))
                # Highest J first, then pool before round, then the lowest id.
                rank = (-similarity, self._origin[other] != "pool", other)
                if similarity >= self.dedup.threshold and (best is None or rank < best[0]):
                    best = (rank, other, similarity)
            if best is not None:
                _, other, similarity = best
                return f"near_duplicate_{self._origin[other]}", {"match": other, "jaccard": round(similarity, 4)}
        return None

    def apply(self, problems: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(kept problems, rejections) of `problems` (columns `id`, `prompt`), decided in row order."""
        keep, rejections = [], []
        for row_id, prompt in zip(problems["id"].to_list(), problems["prompt"].to_list(), strict=True):
            found = self.check(prompt)
            if found is None:
                keep.append(True)
                self._index(str(row_id), prompt, "round")
            else:
                keep.append(False)
                reason, detail = found
                rejections.append({"id": str(row_id), "reason": reason, "detail": json.dumps(detail)})
        return (problems.filter(pl.Series(keep, dtype=pl.Boolean)),
                pl.DataFrame(rejections, schema=schema("rejections")))


def _band_key(band: bytes) -> bytes:
    """The key an LSH bucket stores for one band of a MinHash: its 8-byte BLAKE2b digest."""
    return hashlib.blake2b(band, digest_size=8).digest()


def removal_counts(rejections: pl.DataFrame) -> dict[str, int]:
    """How many rejections of each quality reason (every reason listed, zeros included)."""
    counts = Counter(rejections["reason"].to_list()) if len(rejections) else Counter()
    return {reason: counts.get(reason, 0) for reason in REASONS}


def build_filter(pool: pl.DataFrame, dedup: DedupConfig, decontamination: DecontaminationConfig
                 ) -> ProblemFilter:
    """A ProblemFilter from config; benchmark files are read (and validated) here."""
    return ProblemFilter(pool, dedup, load_benchmarks(decontamination))

