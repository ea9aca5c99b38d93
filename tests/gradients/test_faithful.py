"""faithful.py: one backward per sample over every parameter, the dense projection, unit rows."""

import numpy as np
import polars as pl
import torch

from prismatic.gradients.chat import encode_chat
from prismatic.gradients.faithful import faithful_features, flat_parameters, per_sample_gradient
from prismatic.gradients.projection import RademacherProjection
from prismatic.metrics.vendi import normalize_rows

SAMPLES = [
    ("What is 12 + 30?", "12 + 30 = 42, so the answer is \\boxed{42}."),
    ("Premise: A dog runs.\nHypothesis: An animal moves.", "Running is moving. \\boxed{entailment}"),
    ("Tom has 3 apples and eats one. How many are left?", "3 - 1 = 2. \\boxed{2}"),
]


def _independent_gradient(model, tok, prompt, response):
    """Autograd of a loss built another way: token positions from tokenizing the prefix separately."""
    user = [{"role": "user", "content": prompt}]
    prefix_ids = tok(tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    full_text = tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    ids = torch.tensor(tok(full_text, add_special_tokens=False)["input_ids"])
    assert ids[:len(prefix_ids)].tolist() == prefix_ids
    targets = range(len(prefix_ids), len(ids) - 1)  # response tokens and <|im_end|>, not the final "\n"
    log_probs = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
    loss = -torch.stack([log_probs[t - 1, ids[t]] for t in targets]).mean()
    params = list(dict(model.named_parameters()).values())
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


def test_faithful_gradient_equals_independent_autograd(tiny_lm):
    model, tok = tiny_lm
    for prompt, response in SAMPLES:
        ours = per_sample_gradient(model, encode_chat(tok, prompt, response)).double()
        ref = _independent_gradient(model, tok, prompt, response)
        assert ours.shape == ref.shape
        assert ((ours - ref).norm() / ref.norm()).item() <= 1e-5


def test_all_parameters_and_tied_embedding_once(tiny_lm):
    model, tok = tiny_lm
    assert model.config.tie_word_embeddings
    names = [name for name, _ in flat_parameters(model)]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert sum(p.numel() for _, p in flat_parameters(model)) == sum(p.numel() for p in model.parameters())
    chat = encode_chat(tok, *SAMPLES[0])
    grad = per_sample_gradient(model, chat)
    assert grad.numel() == model.num_parameters()
    # The embedding gradient includes the tied output layer's share: rows of tokens never seen are non-zero.
    unseen = torch.ones(model.config.vocab_size, dtype=torch.bool)
    unseen[chat.input_ids] = False
    emb = grad[:model.config.vocab_size * model.config.hidden_size].view(model.config.vocab_size, -1)
    assert emb[unseen].abs().sum() > 0


def _frame(pairs):
    return pl.DataFrame({"id": [f"s{i}" for i in range(len(pairs))], "prompt": [p for p, _ in pairs],
                         "response": [r for _, r in pairs]})


def test_features_are_normalized_projected_gradients_regardless_of_buffering(tiny_lm):
    model, tok = tiny_lm
    frame = _frame(SAMPLES)
    n_params = model.num_parameters()
    one = faithful_features(model, tok, frame, dim=64, seed=3, projection_dtype=torch.float32,
                            buffer_bytes=1, progress=False)
    many = faithful_features(model, tok, frame, dim=64, seed=3, projection_dtype=torch.float32,
                             buffer_bytes=10 * n_params * 4, progress=False)
    np.testing.assert_allclose(one.features, many.features, rtol=1e-5, atol=1e-6)
    projection = RademacherProjection(n_params, 64, seed=3)
    grads = torch.stack([per_sample_gradient(model, encode_chat(tok, p, r)) for p, r in SAMPLES])
    manual = normalize_rows(projection.project(grads))
    np.testing.assert_allclose(one.features, manual.numpy(), rtol=1e-5, atol=1e-6)
    assert np.allclose(np.linalg.norm(one.features, axis=1), 1.0, atol=1e-5)
    assert one.ids == ["s0", "s1", "s2"]
    assert one.meta["projection"]["seed"] == 3 and one.meta["projection"]["in_dim"] == n_params


def test_bf16_model_gives_close_features(tiny_model_dir):
    from prismatic.models import load_causal_lm

    frame = _frame(SAMPLES)
    feats = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = load_causal_lm(str(tiny_model_dir), dtype, torch.device("cpu"))
        feats[dtype] = faithful_features(model, tok, frame, dim=256, progress=False).features
    cos = (feats[torch.float32] * feats[torch.bfloat16]).sum(axis=1)
    assert cos.min() > 0.95
