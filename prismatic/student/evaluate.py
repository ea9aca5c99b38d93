"""How good a (student) model is on evaluation sets: reference NLL and answer accuracy (docs/formulas.md#student).

- `nll`: for each item i with reference assistant tokens A_i (masked as in training,
  `prismatic.gradients.chat.encode_chat`), ℓ_i = −(1/|A_i|) Σ_{t∈A_i} log p(x_t | x_<t); the set's
  `nll` is the mean of ℓ_i over its items (nats per assistant token; every problem weighs the same).
  Computed in float32 with transformers, in batches of items of similar length.
- `accuracy`: the share of the first `accuracy_limit` items whose greedy answer (temperature 0,
  through an in-process vLLM engine) has a final answer (`prismatic.synthesis.verify.extract_answer`)
  equal to the item's by math-verify (`math_equal`). `accuracy` is None when no item was generated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from prismatic.config import GeneratorConfig
from prismatic.gradients.chat import IGNORE, encode_chat
from prismatic.models import load_causal_lm
from prismatic.student.sets import EvalSet
from prismatic.synthesis.verify import extract_answer, math_equal

ANSWER_TOKENS = 384
"""New tokens at most for a greedy answer: GSM8K reference solutions run to about 200 tokens."""


@torch.no_grad()
def item_nlls(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8,
              progress: bool = False) -> list[float]:
    """ℓ_i of each (prompt, reference) pair, in the input order (nats per assistant token)."""
    encoded = [encode_chat(tokenizer, prompt, reference) for prompt, reference in pairs]
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].n_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    result = [math.nan] * len(encoded)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="nll", unit="batch")
    for batch in batches:
        width = max(encoded[i].n_tokens for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = encoded[i].n_tokens
            ids[row, :n], labels[row, :n], mask[row, :n] = encoded[i].input_ids, encoded[i].labels, 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        targets = labels[:, 1:].to(device)
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE,
                                                   reduction="none")
        scored = (targets != IGNORE).sum(dim=1)
        for row, i in enumerate(batch):
            result[i] = float(losses[row].sum() / scored[row])
    return result


def greedy_answers(model_dir: str | Path, prompts: Sequence[str], *, max_model_len: int = 2048) -> list[str]:
    """Greedy completions of `prompts` (one user turn each) from an in-process vLLM engine of `model_dir`."""
    from prismatic.generation.engines.factory import engine_from_config
    from prismatic.generation.requests import GenerationRequest, Sampling

    config = GeneratorConfig(backend="vllm", model=str(model_dir), max_model_len=max_model_len, kv_cache_gb=1)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=ANSWER_TOKENS, seed=0)
    requests = [GenerationRequest.build(str(model_dir), [{"role": "user", "content": prompt}], greedy)
                for prompt in prompts]
    engine = engine_from_config(config, Path(model_dir).parent)
    try:
        return engine.generate(requests)
    finally:
        engine.close()


def accuracy_of(texts: Sequence[str], answers: Sequence[str]) -> float | None:
    """Share of `texts` whose final answer equals the matching reference answer (None for no texts)."""
    if not texts:
        return None
    return sum(math_equal(extract_answer(text), answer) for text, answer in zip(texts, answers)) / len(texts)


def evaluate_student(model_dir: str | Path, sets: Sequence[EvalSet], *, accuracy_limit: int = 0,
                     progress: bool = False) -> dict:
    """`{"model", "sets": {name: {"n", "nll", "accuracy", "accuracy_n"}}, "seconds": {"nll", "accuracy"}}`."""
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_causal_lm(str(model_dir), torch.float32, device)
    report: dict = {"model": str(model_dir), "sets": {}, "seconds": {}}
    for evaluation in sets:
        nlls = item_nlls(model, tokenizer, [(item.prompt, item.reference) for item in evaluation.items],
                         progress=progress)
        report["sets"][evaluation.name] = {"n": len(nlls), "nll": sum(nlls) / len(nlls), "accuracy": None,
                                           "accuracy_n": 0}
    del model
    report["seconds"]["nll"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    if accuracy_limit:
        chosen = {evaluation.name: evaluation.items[:accuracy_limit] for evaluation in sets}
        prompts = [item.prompt for items in chosen.values() for item in items]
        texts = iter(greedy_answers(model_dir, prompts))
        for name, items in chosen.items():
            answers = [next(texts) for _ in items]
            report["sets"][name].update(accuracy=accuracy_of(answers, [item.answer for item in items]),
                                        accuracy_n=len(items))
    report["seconds"]["accuracy"] = round(time.perf_counter() - started, 3)
    return report
