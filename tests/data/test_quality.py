"""Dedup and decontamination of generated problems (prismatic.data.quality) on hand-made corpora."""

import json

import polars as pl
import pytest

from prismatic.config import BenchmarkFile, DecontaminationConfig, DedupConfig, SynthesisConfig
from prismatic.data.quality import (
    BenchmarkIndex,
    ProblemFilter,
    build_filter,
    exact_key,
    jaccard,
    normalize,
    removal_counts,
    shingles,
)
from prismatic.errors import InputError
from prismatic.generation.journal import Journal
from prismatic.synthesis.generate import generate_round
from prismatic.synthesis.steps import verify_round

POOL = pl.DataFrame({
    "id": ["s0", "s0b", "s1", "s2"],
    "prompt": [
        "Tom has 3 apples and buys 5 more at the market. How many apples does Tom have now?",
        "Tom has 3 apples and buys 5 more at the market. How many apples does Tom have now?",  # 2nd solution
        "A train travels 60 miles per hour for 3 hours, then 40 miles per hour for 2 hours. How far did it go?",
        "What is the sum of the first ten positive odd numbers?",
    ],
})
# 20 words; the planted benchmark 10-gram is words 5…14 of the benchmark's second question.
BENCH_Q = ("Every morning the baker puts twelve loaves of rye bread into the big oven before the shop opens "
           "its doors")


def _problems(*texts):
    return pl.DataFrame({"id": [f"r001-p{i:03d}-0" for i in range(len(texts))], "prompt": list(texts)})


def _rejections(frame):
    return {r["id"]: (r["reason"], json.loads(r["detail"])) for r in frame.iter_rows(named=True)}


def test_normalization_and_exact_keys():
    assert normalize("  Tom has 3 Apples!!  How many?\n") == "tom has 3 apples how many"
    assert normalize("Ｔｏｍ — ＨＡＳ ３") == "tom has 3"  # NFKC full-width forms, case folding, dash
    assert exact_key("Tom has 3 apples.") == exact_key("tom   HAS 3 apples")
    assert exact_key("Tom has 3 apples.") != exact_key("Tom has 4 apples.")


def test_shingles_and_jaccard_by_hand():
    a = shingles("one two three four five", 3)
    assert a == {"one two three", "two three four", "three four five"}
    b = shingles("One two three four SIX", 3)
    assert jaccard(a, b) == 2 / 4  # {123, 234} shared of {123, 234, 345, 346}
    assert shingles("two words", 3) == {"two words"}
    assert shingles("...", 3) == frozenset()


def test_exact_duplicates_of_the_pool_and_within_the_round():
    problems = _problems(
        "tom HAS 3 apples, and buys 5 more at the market -- how many apples does Tom have now",  # pool s0
        "How many legs do 7 spiders have in total if each spider has 8 legs?",
        "How many legs do 7 spiders have in total, if each spider has 8 legs",  # round dup of p001
        "What is the product of the first five positive even numbers?",
    )
    kept, rejected = ProblemFilter(POOL, DedupConfig(near=False)).apply(problems)
    assert kept["id"].to_list() == ["r001-p001-0", "r001-p003-0"]
    assert _rejections(rejected) == {
        "r001-p000-0": ("exact_duplicate_pool", {"match": "s0"}),
        "r001-p002-0": ("exact_duplicate_round", {"match": "r001-p001-0"}),
    }
    assert removal_counts(rejected) == {"benchmark_contamination": 0, "exact_duplicate_pool": 1,
                                        "exact_duplicate_round": 1, "near_duplicate_pool": 0,
                                        "near_duplicate_round": 0}


def test_near_duplicates_are_confirmed_by_the_exact_jaccard():
    train = POOL["prompt"][2]
    near_train = train.replace("go?", "travel?")
    # 23 words → 21 windows; "miles per hour" and "per hour for" occur twice → 19 shingles. Changing
    # the last word changes only the last shingle: 18 shared of 20 → J = 0.9.
    sa, sb = shingles(train, 3), shingles(near_train, 3)
    assert (len(sa), len(sa & sb), len(sa | sb)) == (19, 18, 20)
    first = "Sara reads 12 pages of her book every day for 9 days. How many pages has she read in total?"
    second = "Sara reads 12 pages of her book every day for 9 days. How many pages has she read altogether?"
    # 20 words → 18 shingles and 19 words → 17; the first 16 are shared: J = 16 / 19 ≈ 0.842.
    assert jaccard(shingles(first, 3), shingles(second, 3)) == 16 / 19
    far = "Sara reads 15 pages of a novel each night for 4 weeks. How many pages did she finish?"
    assert jaccard(shingles(first, 3), shingles(far, 3)) < 0.1
    problems = _problems(near_train, first, second, far)
    kept, rejected = ProblemFilter(POOL, DedupConfig(threshold=0.8)).apply(problems)
    assert kept["id"].to_list() == ["r001-p001-0", "r001-p003-0"]
    got = _rejections(rejected)
    assert got["r001-p000-0"] == ("near_duplicate_pool", {"match": "s1", "jaccard": 0.9})
    assert got["r001-p002-0"] == ("near_duplicate_round", {"match": "r001-p001-0", "jaccard": round(16 / 19, 4)})
    # A threshold of 0.85 keeps the 0.842 pair (and still drops the 0.9 one); near dedup off keeps all four.
    strict_kept, _ = ProblemFilter(POOL, DedupConfig(threshold=0.85)).apply(problems)
    assert strict_kept["id"].to_list() == ["r001-p001-0", "r001-p002-0", "r001-p003-0"]
    off_kept, _ = ProblemFilter(POOL, DedupConfig(near=False)).apply(problems)
    assert off_kept.height == 4


def test_planted_benchmark_ngram_is_caught_and_located(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is two plus two?", "answer": "4"},
        {"question": BENCH_Q, "answer": "12"},
    ]) + "\n")
    planted = "In a small town, " + " ".join(BENCH_Q.split()[5:15]) + ", and sells each loaf for $3."
    nine_words = "In a small town, " + " ".join(BENCH_Q.split()[5:14]) + ", and sells each loaf for $3."
    config = DecontaminationConfig(benchmarks=[BenchmarkFile(path=str(bench))], ngram=10)
    problem_filter = build_filter(POOL, DedupConfig(), config)
    kept, rejected = problem_filter.apply(_problems(planted, nine_words))
    assert kept["id"].to_list() == ["r001-p001-0"]  # 9 shared words are not a 10-gram
    reason, detail = _rejections(rejected)["r001-p000-0"]
    assert reason == "benchmark_contamination"
    assert detail == {"benchmark": str(bench), "line": 2,
                      "ngram": "twelve loaves of rye bread into the big oven before"}


def test_parquet_benchmark_and_ngram_index(tmp_path):
    path = tmp_path / "bench.parquet"
    pl.DataFrame({"text": ["short one", BENCH_Q]}).write_parquet(path)
    index = BenchmarkIndex(10)
    index.add_file(path, "text")
    assert index.texts == 2 and len(index.sources) == 20 - 10 + 1  # "short one" has no 10-gram
    gram, source = index.match("x " + BENCH_Q)
    assert source.line == 2 and gram == " ".join(normalize(BENCH_Q).split()[:10])


@pytest.mark.parametrize(("content", "line", "field", "message"), [
    ('{"question": "a b c"}\n{"answer": "4"}\n', 2, "question", "missing field"),
    ('{"question": "a b c"}\n\n{"question": 7}\n', 3, "question", "expected a string, got int"),
    ('{"question": "a b c"}\nnot json\n', 2, None, "invalid JSON"),
    ('["a", "b"]\n', 1, None, "expected a JSON object"),
    ("", None, None, "no rows"),
])
def test_bad_benchmark_files_name_file_line_and_field(tmp_path, content, line, field, message):
    path = tmp_path / "bench.jsonl"
    path.write_text(content)
    config = DecontaminationConfig(benchmarks=[BenchmarkFile(path=str(path))])
    with pytest.raises(InputError) as info:
        build_filter(POOL, DedupConfig(), config)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field) and message in err.message
    where = f"{path}:{line}" if line else str(path)
    assert str(err).startswith(where)


def test_bad_parquet_benchmark_and_missing_file(tmp_path):
    path = tmp_path / "bench.parquet"
    pl.DataFrame({"question": ["fine", None]}).write_parquet(path)
    with pytest.raises(InputError, match=r"bench.parquet:2: field 'question': expected a string, got NoneType"):
        build_filter(POOL, DedupConfig(), DecontaminationConfig(benchmarks=[BenchmarkFile(path=str(path))]))
    with pytest.raises(InputError, match="field 'prompt': missing column"):
        build_filter(POOL, DedupConfig(), DecontaminationConfig(benchmarks=[BenchmarkFile(path=str(path),
                                                                                          field="prompt")]))
    with pytest.raises(InputError, match="benchmark file not found"):
        build_filter(POOL, DedupConfig(), DecontaminationConfig(benchmarks=[BenchmarkFile(path="nope.jsonl")]))


class _Engine:
    """Problem requests: the same two problems for every prompt; solution requests: \\boxed{4}."""

    def __init__(self):
        self.output_tokens, self.problem_requests, self.solution_requests = 0, 0, 0

    def generate(self, requests, on_results=None):
        texts = []
        for request in requests:
            if request.json_schema is not None:
                n = self.problem_requests = self.problem_requests + 1
                texts.append(json.dumps({"problems": [
                    f"How many pears are left if Ann has {10 * n} pears and eats {n} of them?",
                    "What is the sum of the first ten positive odd numbers?"]}))  # = pool row s2
            else:
                self.solution_requests += 1
                texts.append("so \\boxed{4}")
        if on_results:
            on_results(list(enumerate(texts)))
        return texts


def test_round_drops_duplicates_before_solving_them(tmp_path):
    pool = POOL.with_columns(response=pl.lit("r"), answer=pl.lit("1"), task=pl.lit("math"))
    config = SynthesisConfig(tasks=["math"], prompts_per_round=3, solutions_per_problem=2, problem_format="json")
    engine = _Engine()
    problem_filter = ProblemFilter(pool, config.dedup)
    gens, problems, rejections, _ = generate_round(engine, Journal(tmp_path / "j.jsonl"), pool, config, "m", "r001",
                                                problem_filter=problem_filter)
    # Three prompts × two problems: each prompt's second problem copies pool row s2.
    assert problems["id"].to_list() == ["r001-p000-0", "r001-p001-0", "r001-p002-0"]
    assert _rejections(rejections) == {f"r001-p00{i}-1": ("exact_duplicate_pool", {"match": "s2"})
                                       for i in range(3)}
    assert gens.filter(kind="problem").height == 6  # raw outputs are all kept, with provenance
    assert gens.filter(kind="solution").height == 3 * 2 and engine.solution_requests == 6
    verified, no_majority = verify_round(gens)
    assert verified["problem_id"].unique().sort().to_list() == problems["id"].to_list()
    assert no_majority.is_empty()  # removed problems are not reported again as unverified


def test_the_pool_index_stays_small_and_decides_as_with_raw_band_keys(monkeypatch):
    """The index rebuilt over the pool every round keeps per text its key, its text and 8-byte band keys
    (no shingle sets): under 5 kB per text of 40 words (the index with shingle sets and raw band keys
    held about 8 kB). On 400 pool problems and 200 new ones, 100 of them a pool problem with its last
    word changed (J ≈ 0.95), it removes exactly what an index with datasketch's raw band keys removes,
    each removal confirmed by the exact Jaccard, and LSH finds at least 95 of the 100 copies."""
    import random
    import tracemalloc

    from prismatic.data import quality

    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(3000)]
    pool_texts = [" ".join(rng.choices(vocabulary, k=40)) + "?" for _ in range(400)]
    pool = pl.DataFrame({"id": [f"s{i}" for i in range(400)], "prompt": pool_texts})
    planted = [pool_texts[i].rsplit(" ", 1)[0] + " changed?" for i in range(0, 400, 4)]
    fresh = [" ".join(rng.choices(vocabulary, k=40)) + "?" for _ in range(100)]
    problems = _problems(*planted, *fresh)
    tracemalloc.start()
    index = ProblemFilter(pool, DedupConfig())
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held / len(pool) < 5000
    kept, rejected = index.apply(problems)
    monkeypatch.setattr(quality, "_band_key", None)  # datasketch's own raw band bytes
    raw_kept, raw_rejected = ProblemFilter(pool, DedupConfig()).apply(problems)
    assert kept.equals(raw_kept) and rejected.equals(raw_rejected)
    got = _rejections(rejected)
    texts = dict(zip(problems["id"], problems["prompt"], strict=True)) | dict(zip(pool["id"], pool["prompt"],
                                                                               strict=True))
    for row_id, (reason, detail) in got.items():
        exact = jaccard(shingles(texts[row_id], 3), shingles(texts[detail["match"]], 3))
        assert reason == "near_duplicate_pool" and round(exact, 4) == detail["jaccard"] and exact >= 0.8
    assert set(got) <= set(problems["id"][:100]) and len(got) >= 95
