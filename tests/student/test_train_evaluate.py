"""The student: training lowers the loss on its data, is deterministic for a seed, LoRA merges into a plain model;
`nll` equals an independent computation with plain transformers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from prismatic.config import StudentConfig
from prismatic.data.chats import sample_chat
from prismatic.errors import PrismError
from prismatic.student.evaluate import evaluate_student, item_nlls
from prismatic.student.sets import EvalItem, EvalSet
from prismatic.student.train import REPORT_FILE, train_student

PAIRS = [(f"What is {a} plus {b}?", f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}") for a, b in
         [(2, 3), (10, 7), (41, 1), (6, 6), (13, 29), (8, 0)]]
CHATS = [sample_chat(prompt, response) for prompt, response in PAIRS]


def weights(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    config = StudentConfig(epochs=4, lr=3e-3, batch_size=2, seed=7)
    out = tmp_path_factory.mktemp("student")
    return train_student(CHATS, out / "a", config, base_model=tiny_model_dir), config, out


def test_training_lowers_the_loss_on_its_own_data(trained, tiny_model_dir, tiny_lm):
    report, _, _ = trained
    assert (report.samples, report.steps, report.method) == (6, 12, "full")
    assert len(report.losses) == 12
    assert sum(report.losses[-3:]) / 3 < sum(report.losses[:3]) / 3
    model, tokenizer = tiny_lm
    before = item_nlls(model, tokenizer, PAIRS)
    after = evaluate_student(report.model_dir, [EvalSet("train", report.model_dir, tuple(
        EvalItem(str(i), p, r, "0") for i, (p, r) in enumerate(PAIRS)))])["sets"]["train"]["nll"]
    assert after < sum(before) / len(before) - 0.5
    saved = json.loads((report.model_dir / REPORT_FILE).read_text())
    assert saved["losses"] == report.losses and saved["assistant_tokens"] > 0


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(trained, tiny_model_dir):
    report, config, out = trained
    again = train_student(CHATS, out / "b", config, base_model=tiny_model_dir)
    other = train_student(CHATS, out / "c", config.model_copy(update={"seed": 8}), base_model=tiny_model_dir)
    first, second, third = weights(report.model_dir), weights(again.model_dir), weights(other.model_dir)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], third[name]) for name in first)


def test_lora_trains_adapters_and_saves_a_plain_merged_model(tiny_model_dir, tmp_path):
    report = train_student(CHATS, tmp_path / "lora", StudentConfig(epochs=2, lr=1e-2, batch_size=3, lora_rank=4),
                           base_model=tiny_model_dir)
    assert report.method == "lora-r4"
    assert not (tmp_path / "lora" / "adapter_config.json").exists()
    base, merged = weights(tiny_model_dir), weights(report.model_dir)
    assert set(base) == set(merged)
    changed = [name for name in base if not torch.equal(base[name], merged[name])]
    assert changed and all(name.endswith(".weight") for name in changed)
    assert not any("embed" in name or "norm" in name for name in changed)  # adapters sit on linear layers only


def test_a_chat_of_other_turns_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(PrismError, match="one user turn then one assistant turn"):
        train_student([[{"role": "user", "content": "hi"}]], tmp_path / "x", StudentConfig(),
                      base_model=tiny_model_dir)
    with pytest.raises(PrismError, match="empty"):
        train_student([], tmp_path / "x", StudentConfig(), base_model=tiny_model_dir)


def test_nll_equals_plain_transformers_one_chat_at_a_time(tiny_model_dir, tiny_lm):
    """Independent computation: the assistant span is the full chat's tokens after the tokenized generation
    prompt, through the end-of-turn token; the loss is transformers' own `labels=` loss of one unpadded chat."""
    model, tokenizer = tiny_lm
    ours = item_nlls(model, tokenizer, PAIRS, batch_size=4)
    for (prompt, response), value in zip(PAIRS, ours):
        user = [{"role": "user", "content": prompt}]
        prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=True,
                                             return_dict=True)["input_ids"]
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, :len(prefix["input_ids"])] = -100
        end = full.index(tokenizer.eos_token_id, len(prefix["input_ids"]))  # the assistant's end-of-turn token
        labels[0, end + 1:] = -100
        with torch.no_grad():
            expected = model(input_ids=ids, labels=labels).loss.item()
        assert value == pytest.approx(expected, rel=1e-5)
