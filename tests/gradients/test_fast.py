"""fast.py: packed batches, factored per-layer projections of exact per-sample gradients, unit rows."""

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from prismatic.config import FeaturesConfig
from prismatic.gradients.chat import encode_chat
from prismatic.gradients.faithful import faithful_features, flat_parameters, per_sample_gradient
from prismatic.gradients.fast import FastFeaturizer, packed_causal_attention
from prismatic.metrics.vendi import gvendi

SAMPLES = [
    ("What is 12 + 30?", "12 + 30 = 42, so the answer is \\boxed{42}."),
    ("Premise: A dog runs.\nHypothesis: An animal moves.", "Running is moving. \\boxed{entailment}"),
    ("Tom has 3 apples and eats one. How many are left? Think step by step.",
     "He starts with 3 apples. Eating one leaves 3 - 1 = 2. \\boxed{2}"),
]
EXACT = 10**9  # block sizes larger than any layer: every projection is the identity


def _autograd_by_name(model, chat):
    flat = per_sample_gradient(model, chat)
    grads, offset = {}, 0
    for name, p in flat_parameters(model):
        grads[name] = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return grads


def test_identity_projection_gives_exact_per_sample_gradients(tiny_lm):
    model, tok = tiny_lm
    chats = [encode_chat(tok, p, r) for p, r in SAMPLES]
    fast = FastFeaturizer(model, tok, FeaturesConfig(block_in=EXACT, block_out=EXACT))
    blocks = fast.per_sample_blocks(chats)  # one padded batch
    assert fast.concat_dim == model.num_parameters()
    for i, chat in enumerate(chats):
        reference = _autograd_by_name(model, chat)
        for seg in fast.segments:
            name = "model.embed_tokens.weight" if seg.kind == "embedding" else seg.name
            ours = blocks[i, seg.offset:seg.offset + seg.size].view(reference[name].shape)
            ref = reference[name]
            rel = ((ours - ref).norm() / ref.norm().clamp(min=1e-30)).item()
            assert rel <= 1e-4, (seg.name, rel)
    # Parameters are left as they were.
    assert all(p.requires_grad for p in model.parameters())


def test_projected_blocks_preserve_gradient_inner_products(tiny_lm):
    model, tok = tiny_lm
    chats = [encode_chat(tok, p, r) for p, r in SAMPLES]
    exact = torch.stack([per_sample_gradient(model, c) for c in chats]).double()
    fast = FastFeaturizer(model, tok, FeaturesConfig(block_in=16, block_out=16))
    projected = fast.per_sample_blocks(chats).double()
    assert fast.concat_dim < model.num_parameters() / 4
    cos = lambda m: (m / m.norm(dim=1, keepdim=True)) @ (m / m.norm(dim=1, keepdim=True)).T  # noqa: E731
    assert (cos(projected) - cos(exact)).abs().max().item() < 0.15


@pytest.mark.parametrize("final", ["dense", "sparse"])
def test_packing_does_not_change_a_sample(tiny_lm, final):
    """A sample's blocks, and its features after either final stage, are the same alone and packed with
    others of different lengths, in any order."""
    model, tok = tiny_lm
    fast = FastFeaturizer(model, tok, FeaturesConfig(dim=64, block_in=8, block_out=8, final=final))
    chats = [encode_chat(tok, p, r) for p, r in SAMPLES]
    assert len({c.n_tokens for c in chats}) > 1
    alone = torch.cat([fast.per_sample_blocks([c]) for c in chats])
    together = fast.per_sample_blocks(chats)
    reversed_order = fast.per_sample_blocks(chats[::-1]).flip(0)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(reversed_order, alone, rtol=1e-4, atol=1e-6)
    frame = pl.DataFrame({"id": ["a", "b", "c"], "prompt": [p for p, _ in SAMPLES],
                          "response": [r for _, r in SAMPLES]})
    one_batch = fast.features(frame, progress=False).features
    fast.batch_tokens = 1  # every sample its own batch
    np.testing.assert_allclose(fast.features(frame, progress=False).features, one_batch, atol=2e-3)


def test_packed_attention_equals_causal_attention_of_each_sample_alone():
    """Grouped-query heads (6 query heads over 2 key/value heads), three samples in one row."""
    torch.manual_seed(0)
    lengths, heads, kv_heads, size = [5, 9, 3], 6, 2, 8
    query = torch.randn(1, heads, sum(lengths), size, dtype=torch.float64)
    key, value = (torch.randn(1, kv_heads, sum(lengths), size, dtype=torch.float64) for _ in range(2))
    packed, _ = packed_causal_attention(None, query, key, value, None, scaling=0.3, prism_lengths=lengths)
    start = 0
    for n in lengths:
        piece = slice(start, start + n)
        k, v = (t[:, :, piece].repeat_interleave(heads // kv_heads, dim=1) for t in (key, value))
        expected = F.scaled_dot_product_attention(query[:, :, piece], k, v, is_causal=True, scale=0.3)
        torch.testing.assert_close(packed[:, piece], expected.transpose(1, 2))
        start += n


def test_features_are_deterministic_unit_rows_with_recorded_projection(tiny_lm):
    model, tok = tiny_lm
    frame = pl.DataFrame({"id": ["a", "b", "c"], "prompt": [p for p, _ in SAMPLES],
                          "response": [r for _, r in SAMPLES]})
    a = FastFeaturizer(model, tok, FeaturesConfig(dim=64, seed=5, batch_tokens=64)).features(frame, progress=False)
    b = FastFeaturizer(model, tok, FeaturesConfig(dim=64, seed=5, batch_tokens=10_000)).features(frame, progress=False)
    c = FastFeaturizer(model, tok, FeaturesConfig(dim=64, seed=6)).features(frame, progress=False)
    np.testing.assert_allclose(a.features, b.features, atol=2e-3)
    assert not np.allclose(a.features, c.features, atol=1e-2)
    assert np.allclose(np.linalg.norm(a.features, axis=1), 1, atol=1e-5)
    assert a.meta["mode"] == "fast" and a.meta["projection"]["seed"] == 5
    assert a.meta["projection"]["block_in"] == FeaturesConfig().block_in and a.meta["projection"]["segments"]


def test_sparse_final_stage_is_deterministic_and_recorded(tiny_lm):
    model, tok = tiny_lm
    frame = pl.DataFrame({"id": ["a", "b", "c"], "prompt": [p for p, _ in SAMPLES],
                          "response": [r for _, r in SAMPLES]})
    a = FastFeaturizer(model, tok, FeaturesConfig(dim=64, seed=5, final="sparse"))
    b = FastFeaturizer(model, tok, FeaturesConfig(dim=64, seed=5, final="sparse")).features(frame, progress=False)
    dense = FastFeaturizer(model, tok, FeaturesConfig(dim=64, seed=5, final="dense")).features(frame, progress=False)
    features = a.features(frame, progress=False)
    np.testing.assert_array_equal(features.features, b.features)
    assert np.allclose(np.linalg.norm(features.features, axis=1), 1, atol=1e-5)
    assert features.meta["projection"]["kind"] == "factored-countsketch-v1"
    assert dense.meta["projection"]["kind"] == "factored-rademacher-v1"
    # the sparse stage is the CountSketch of the same blocks the dense stage projects
    blocks = a.per_sample_blocks([encode_chat(tok, p, r) for p, r in SAMPLES])
    sketched = blocks @ a.sketch.matrix().T
    np.testing.assert_allclose(features.features, (sketched / sketched.norm(dim=1, keepdim=True)).numpy(),
                               atol=1e-4)


def _datasets():
    rng = np.random.default_rng(0)
    near_duplicates = [(f"What is 17 + 25?{' ' * (i % 3)}", "17 + 25 = 42. \\boxed{42}") for i in range(12)]
    one_topic = []
    for _ in range(12):
        a, b = (int(x) for x in rng.integers(2, 99, size=2))
        one_topic.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}"))
    mixed = one_topic[:4] + [
        ("Premise: The cat sleeps on the mat.\nHypothesis: The cat is awake.", "\\boxed{contradiction}"),
        ("Premise: Rain fell all day.\nHypothesis: The ground got wet.", "\\boxed{entailment}"),
        ("Premise: A man reads.\nHypothesis: He reads a novel.", "\\boxed{neutral}"),
        ("Name three colors of the rainbow.", "Red, orange and yellow."),
        ("Translate 'bonjour' into English.", "Hello."),
        ("Write a haiku about snow.", "White silence settles / on roofs and gardens / the world holds its breath"),
        ("A rectangle is 4 by 7. What is its area?", "4 × 7 = 28. \\boxed{28}"),
        ("List two prime numbers above 10.", "11 and 13."),
    ]
    frame = lambda pairs: pl.DataFrame({"id": [str(i) for i in range(len(pairs))],  # noqa: E731
                                        "prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})
    return frame(near_duplicates), frame(one_topic), frame(mixed)


def test_gvendi_ranking_is_the_same_in_both_modes(tiny_lm):
    model, tok = tiny_lm
    scores = {"fast": [], "fast sparse": [], "faithful": []}
    for frame in _datasets():
        fast = FastFeaturizer(model, tok, FeaturesConfig(dim=256, final="dense")).features(frame, progress=False)
        sparse = FastFeaturizer(model, tok, FeaturesConfig(dim=256, final="sparse")).features(frame, progress=False)
        faithful = faithful_features(model, tok, frame, dim=256, progress=False)
        scores["fast"].append(gvendi(fast.features))
        scores["fast sparse"].append(gvendi(sparse.features))
        scores["faithful"].append(gvendi(faithful.features))
    for mode, (dup, topic, mixed) in scores.items():
        assert dup < topic < mixed, (mode, scores)
