"""projection.py: the seeded Rademacher projection, the same for any block size, never held whole."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from prismatic.gradients.projection import CHUNK, CountSketch, RademacherProjection


def test_signs_are_balanced_plus_minus_one():
    signs = RademacherProjection(in_dim=3 * CHUNK, out_dim=1024, seed=0).signs(0, 3 * CHUNK)
    assert set(torch.unique(signs).tolist()) == {-1.0, 1.0}
    n = signs.numel()
    assert abs(signs.mean().item()) < 5 / math.sqrt(n)
    # Columns (output coordinates) are uncorrelated: off-diagonal of SᵀS/rows ≈ 0.
    cross = (signs.T @ signs) / signs.shape[0]
    off = cross - torch.diag(torch.diag(cross))
    assert off.abs().max().item() < 6 / math.sqrt(signs.shape[0])


def test_deterministic_per_seed_and_independent_of_block_size_and_dtype():
    x = torch.randn(3, 2 * CHUNK + 123, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = RademacherProjection(x.shape[1], 64, seed=11, block_coords=CHUNK).project(x)
    b = RademacherProjection(x.shape[1], 64, seed=11, block_coords=4 * CHUNK).project(x)
    c = RademacherProjection(x.shape[1], 64, seed=12).project(x)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a, c)
    half = RademacherProjection(x.shape[1], 64, seed=11).project(x.float(), dtype=torch.bfloat16)
    assert torch.nn.functional.cosine_similarity(a, half).min() > 0.999


def test_projection_is_the_matrix_product_it_claims():
    proj = RademacherProjection(in_dim=CHUNK + 5, out_dim=32, seed=3)
    x = torch.randn(4, CHUNK + 5, dtype=torch.float64)
    matrix = proj.signs(0, CHUNK + 5).double()
    torch.testing.assert_close(proj.project(x, dtype=torch.float64), (x @ matrix / math.sqrt(32)).float())


def test_column_slices_sum_to_the_projection():
    proj = RademacherProjection(in_dim=3 * CHUNK + 7, out_dim=32, seed=4)
    x = torch.randn(5, 3 * CHUNK + 7, dtype=torch.float64)
    cuts = [0, CHUNK, 3 * CHUNK, 3 * CHUNK + 7]  # uneven slices, the last shorter than a chunk
    shares = sum(proj.project_columns(x[:, lo:hi], lo) for lo, hi in zip(cuts, cuts[1:]))
    torch.testing.assert_close(shares / math.sqrt(32), proj.project(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of"):
        proj.project_columns(x[:, 5:10], 5)


def test_inner_products_within_johnson_lindenstrauss_bounds():
    d, n, dim_in = 1024, 40, 20_000
    x = torch.randn(n, dim_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = RademacherProjection(dim_in, d, seed=5).project(x, dtype=torch.float64).double()
    unit = x / x.norm(dim=1, keepdim=True)
    # Relative error of each inner product has standard deviation ≤ √(2/d) ≈ 0.044.
    exact = unit @ unit.T
    approx = (y / x.norm(dim=1, keepdim=True)) @ (y / x.norm(dim=1, keepdim=True)).T
    err = (approx - exact).abs()
    bound = math.sqrt(2 / d)
    assert err.max().item() < 6 * bound
    assert err.mean().item() < 1.5 * bound
    norms = (y.norm(dim=1) / x.norm(dim=1)) ** 2
    assert (norms - 1).abs().max().item() < 6 * bound


def test_refuses_wrong_length():
    with pytest.raises(ValueError, match="expected vectors of length 10"):
        RademacherProjection(10, 16).project(torch.zeros(1, 11))


def test_never_materializes_the_full_matrix(tmp_path):
    """A 13.6M-parameter model at d=1024: the dense fp32 matrix would be 56 GB (> this machine's RAM).

    The faithful path runs it in a child process whose peak resident memory must stay under 4 GB.
    """
    script = textwrap.dedent("""
        import json, resource, sys, torch
        import polars as pl
        from transformers import Qwen2Config, Qwen2ForCausalLM
        from prismatic.gradients.faithful import faithful_features
        from prismatic.models import build_chatml_tokenizer
        tok = build_chatml_tokenizer()
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg).eval()
        n_params = sum(p.numel() for p in model.parameters())
        samples = pl.DataFrame({"id": ["a", "b"], "prompt": ["What is 2+3?", "Name a color."],
                                "response": ["2+3=5. \\\\boxed{5}", "Blue."]})
        out = faithful_features(model, tok, samples, dim=1024, projection_dtype=torch.float32,
                                buffer_bytes=2 * n_params * 4, progress=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"n_params": n_params, "peak": peak, "shape": list(out.features.shape)}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    full_matrix_bytes = report["n_params"] * 1024 * 4
    assert full_matrix_bytes > 50e9
    assert report["shape"] == [2, 1024]
    assert report["peak"] < 4e9, report


# ------------------------------------------------------------------------------------ CountSketch


def test_count_sketch_is_deterministic_per_seed():
    a, b, c = CountSketch(5000, 64, seed=3), CountSketch(5000, 64, seed=3), CountSketch(5000, 64, seed=4)
    assert torch.equal(a.buckets, b.buckets) and torch.equal(a.signs, b.signs)
    assert not torch.equal(a.buckets, c.buckets)
    assert a.describe() == {"kind": "countsketch-pcg64-v1", "seed": 3, "in_dim": 5000, "out_dim": 64}


def test_count_sketch_equals_the_dense_matrix_built_independently():
    """S built coordinate by coordinate from the drawn buckets and signs, then an ordinary matmul."""
    sketch = CountSketch(300, 16, seed=2)
    matrix = np.zeros((16, 300))
    for j, (bucket, sign) in enumerate(zip(sketch.buckets.tolist(), sketch.signs.tolist())):
        matrix[bucket, j] = sign
    assert set(np.count_nonzero(matrix, axis=0)) == {1} and set(np.unique(matrix)) <= {-1.0, 0.0, 1.0}
    x = torch.randn(7, 300, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(sketch.project(x).numpy(), x.numpy() @ matrix.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sketch.matrix().numpy(), matrix)
    # the draws are what they claim: buckets uniform over d, signs fair
    big = CountSketch(200_000, 16, seed=1)
    counts = np.bincount(big.buckets.numpy(), minlength=16)
    assert np.abs(counts / 200_000 - 1 / 16).max() < 0.005 and abs(float(big.signs.mean())) < 0.01


def test_count_sketch_inner_products_within_johnson_lindenstrauss_bounds():
    d, n, dim_in = 1024, 40, 20_000
    x = torch.randn(n, dim_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    unit = x / x.norm(dim=1, keepdim=True)
    y = CountSketch(dim_in, d, seed=5).project(unit).double()
    err = (y @ y.T - unit @ unit.T).abs()
    bound = math.sqrt(2 / d)  # standard deviation of the error of ⟨Sx, Sz⟩ for unit x, z: ≤ √(2/d)
    assert err.max().item() < 6 * bound
    assert err.mean().item() < 1.5 * bound
    assert ((y.norm(dim=1) ** 2) - 1).abs().max().item() < 6 * bound


def test_count_sketch_variance_matches_the_formula():
    """Over 300 seeds, ⟨Sx, Sz⟩ is unbiased with variance (‖x‖²‖z‖² + ⟨x,z⟩² − 2Σx_j²z_j²)/d."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=g, dtype=torch.float64)
    z = 0.5 * x + torch.randn(2000, generator=g, dtype=torch.float64)
    d = 128
    values = np.array([float(p[0] @ p[1]) for p in (CountSketch(2000, d, seed=s).project(torch.stack([x, z])).double()
                                                   for s in range(300))])
    exact = float(x @ z)
    variance = (float(x @ x) * float(z @ z) + exact ** 2 - 2 * float((x ** 2 * z ** 2).sum())) / d
    assert abs(values.mean() - exact) < 4 * math.sqrt(variance / 300)
    assert 0.75 < values.var() / variance < 1.3  # the sample variance of 300 draws is within ±25% (4 sd)


def test_count_sketch_refuses_wrong_length():
    with pytest.raises(ValueError, match="expected vectors of length 10"):
        CountSketch(10, 4).project(torch.zeros(1, 11))
