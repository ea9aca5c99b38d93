"""The opt-in `student_eval` asset: the round's pool without the evaluation sets' problems (each a
`rejections` row), a student trained on the rest (a random 2-layer Llama with SmolLM2's tokenizer, so
it takes seconds), and per set its NLL beside the base model's, checked against an NLL computed here
with plain transformers; in the job only with `student.enabled`; a bad set refused before a round starts."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize
from student_store import fill_rounds, prism, reference_nll, tiny_student_base

from prism_assets.assets.student import student_eval
from prism_assets.definitions import build_definitions
from prismatic.storage.factory import open_store
from prismatic.storage.schema import schema
from prismatic.student.sets import load_eval_set
from prismatic.student.step import REASON, decontaminate
from resources.home import PrismHome
from resources.store import StoreResource

GSM = [
    {"question": "A farmer packs 12 eggs into each carton and fills 7 cartons before lunch. How many eggs did "
                 "the farmer pack before lunch?", "answer": "12 * 7 = <<12*7=84>>84 eggs.\n#### 84"},
    {"question": "Lena reads 15 pages every evening for 6 evenings and then 10 more pages on Sunday. How many "
                 "pages does she read?", "answer": "15 * 6 = 90 and 90 + 10 = 100.\n#### 100"},
    {"question": "A train carries 240 passengers and at the first stop one quarter of them leave while 35 new "
                 "passengers board. How many passengers are on the train now?",
     "answer": "240 / 4 = 60 leave, 240 - 60 = 180, 180 + 35 = 215.\n#### 215"},
]
SVAMP = [{"body": "Jack had 8 pens and Mary had 5 pens", "question": "How many pens do they have together?",
          "equation": "( 8.0 + 5.0 )", "answer": 13.0}]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, smollm2_dir):
    return tiny_student_base(tmp_path_factory.mktemp("student") / "tiny", smollm2_dir)


def student_home(tmp_path, base, sets: str) -> PrismHome:
    (tmp_path / "prism.yaml").write_text(
        f"student:\n  enabled: true\n  base: {base}\n  epochs: 1\n  batch_size: 4\n  max_tokens: 256\n"
        f"  eval_sets: {sets}\n")
    return PrismHome(home=str(tmp_path))


def test_eval_problems_planted_in_the_pool_are_removed_before_training(tmp_path, tiny_base):
    gsm = write_jsonl(tmp_path / "gsm.jsonl", GSM)
    svamp = write_jsonl(tmp_path / "svamp.jsonl", SVAMP)
    home = student_home(tmp_path, tiny_base, f"[{{path: {gsm}, name: gsm}}, {{path: {svamp}}}]")
    store = open_store(tmp_path / "store")
    fill_rounds(store)
    pool = store.read("pool", "r001")  # what r001 added to the pool
    planted = pool["id"][1]  # a generated row of r001 becomes GSM8K's third problem, in other case and spacing
    store.write("pool", "r001", pool.with_columns(prompt=pl.when(pl.col("id") == planted).then(
        pl.lit("  " + GSM[2]["question"].upper().replace(" ", "  "))).otherwise("prompt")))
    stale = pl.DataFrame([{"id": "old", "reason": REASON, "detail": "{}"}], schema=schema("rejections"))
    store.write("rejections", "r001", pl.concat([store.read("rejections", "r001"), stale]))

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r000", "r001"])
    resources = {"prism_home": home, "store": StoreResource(prism_home=home)}
    metadata = {}
    for key in ("r000", "r001"):
        result = materialize([student_eval], partition_key=key, instance=instance, resources=resources)
        assert result.success
        metadata[key] = result.asset_materializations_for_node("student_eval")[0].metadata

    rejections = store.read("rejections", "r001")
    assert rejections["reason"].to_list() == ["no_majority", REASON]  # the stale row replaced, the vote's kept
    assert rejections["id"][1] == planted
    assert json.loads(rejections["detail"][1]) == {"set": "gsm", "file": gsm, "item": "3", "ngram": None}
    about = store.read_metadata("student_eval", "r001")
    assert about["train"]["samples"] == 8 and about["round"] == "r001"  # 9 pool rows, one removed
    assert store.read_metadata("student_eval", "r000")["train"]["samples"] == 6

    rows = {row["set"]: row for row in store.read("student_eval", "r001").iter_rows(named=True)}
    assert list(rows) == ["gsm", "svamp"]
    assert [(r["n"], r["train_rows"], r["removed"], r["accuracy"], r["accuracy_n"]) for r in rows.values()] == [
        (3, 8, 1, None, 0), (1, 8, 1, None, 0)]
    items = {s.name: s.items for s in (load_eval_set(gsm), load_eval_set(svamp))}
    student_dir = tmp_path / "students" / "r001"
    for name, row in rows.items():
        expected = [reference_nll(student_dir, item.prompt, item.reference) for item in items[name]]
        base = [reference_nll(tiny_base, item.prompt, item.reference) for item in items[name]]
        assert row["nll"] == pytest.approx(sum(expected) / len(expected), rel=1e-4)
        assert row["base_nll"] == pytest.approx(sum(base) / len(base), rel=1e-4)
        assert row["nll"] != row["base_nll"] and math.isfinite(row["train_loss"])
    before = {row["set"]: row for row in store.read("student_eval", "r000").iter_rows(named=True)}
    assert {k: before[k]["base_nll"] for k in before} == {k: rows[k]["base_nll"] for k in rows}  # one base
    assert metadata["r001"]["nll/gsm"].value == rows["gsm"]["nll"] and metadata["r001"]["removed"].value == 1
    assert metadata["r001"]["nll by round"].value.startswith("![nll by round](data:image/png;base64,")
    assert "accuracy by round" not in metadata["r001"]  # no accuracy measured (accuracy_limit 0)


def test_decontamination_matches_ngrams_and_short_exact_prompts(tmp_path):
    gsm = load_eval_set(write_jsonl(tmp_path / "gsm.jsonl", GSM))
    short = load_eval_set(write_jsonl(tmp_path / "short.jsonl", [{"question": "What is 2 + 2?",
                                                                   "answer": "4\n#### 4"}]))
    rows = pl.DataFrame({"id": ["a", "b", "c", "d"], "prompt": [
        "Tom says: Lena reads 15 pages every evening for 6 evenings and then stops.",  # a 10-gram of GSM[1]
        "what is 2+2",  # the short problem, normalized
        "Lena reads 15 pages every evening for 5 evenings.",  # 9 shared words in a row: kept
        "A farmer packs eggs.",
    ]})
    kept, removed = decontaminate(rows, [gsm, short], ngram=10)
    assert kept["id"].to_list() == ["c", "d"] and removed["id"].to_list() == ["a", "b"]
    details = [json.loads(d) for d in removed["detail"]]
    assert details[0] == {"set": "gsm", "file": str(tmp_path / "gsm.jsonl"), "item": "2",
                          "ngram": "lena reads 15 pages every evening for 6 evenings and"}
    assert details[1]["set"] == "short" and details[1]["ngram"] is None


def test_the_student_is_in_the_round_job_only_when_enabled(tmp_path):
    off, on = tmp_path / "off", tmp_path / "on"
    off.mkdir()
    on.mkdir()
    (on / "prism.yaml").write_text("student:\n  enabled: true\n  eval_sets: [{path: x.jsonl}]\n")
    for home, expected in ((off, False), (on, True)):
        job = build_definitions(str(home)).resolve_job_def("prism_round")
        assert (AssetKey("student_eval") in job.asset_layer.selected_asset_keys) is expected


def test_a_bad_eval_set_stops_the_round_before_anything_is_written(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [GSM[0], {"question": "How many?", "answer": "no marker"}])
    home = tmp_path / "home"
    home.mkdir()
    (home / "prism.yaml").write_text(f"student:\n  enabled: true\n  eval_sets: [{{path: {bad}}}]\n")
    code, stdout, stderr = prism("run", "--round", "r000", home=home)
    assert (code, stdout) == (2, "") and stderr.count("\n") == 1
    assert f"{bad}:2: field 'answer':" in stderr
    assert sorted(p.name for p in home.iterdir()) == ["prism.yaml"]  # no store, no Dagster instance
