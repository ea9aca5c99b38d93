"""Fast per-sample gradient features: one forward+backward per batch, no weight gradient formed.

For a linear layer y = W x (+ b), a sample's gradient is G_W = Σ_t δ_t x_tᵀ (δ_t = ∂L/∂y_t over that
sample's tokens). Its factored projection with Rademacher P_out (k_out × out) and P_in (k_in × in),
each entry ±1/√k, is

    P_out G_W P_inᵀ = Σ_t (P_out δ_t)(P_in x_t)ᵀ          (k_out × k_in per sample),

the Kronecker projection (P_out ⊗ P_in) vec(G_W): inner products are preserved in expectation, as
for any Johnson–Lindenstrauss map. It is computed from forward hooks (P_in x) and output-gradient
hooks (P_out δ) for a whole packed batch, so the model's parameters never require grad and only
input-gradients are backpropagated (≈ 4·params·tokens FLOPs, against 6·params·tokens plus a dense
projection of every flattened gradient in the faithful path).

Covered, so the concatenation is the whole gradient up to projection:
- every nn.Linear but the output head (blocks as above; bias gradient Σ_t δ_t kept exactly);
- the output head and the input embedding: for tied weights E (V × h) the gradient is
  Σ_t δ^logits_t h_tᵀ (head) + Σ_t e_{token_t} g_tᵀ (embedding rows, g_t = ∂L/∂embedding_t); both are
  projected with the same P_V, P_h and added; untied weights get one block each;
- RMSNorm weights: Σ_t δ_t ⊙ x̂_t, kept exactly (h numbers each).
A layer side whose size is ≤ its block size is not projected (identity), so small layers are exact.
The concatenated vector goes to `dim` through the final stage (`final`): a seeded CountSketch
(`sparse`, the default: each coordinate added with a random sign to one random output, O(concat) a
sample; `projection.CountSketch`) or a seeded dense Rademacher matrix (`dense`, ÷√dim, O(concat·dim));
each row is then L2-normalized. Losses are as in the faithful path (mean over each sample's assistant
tokens, chat.py), so per-sample gradients are exact up to the projections. See docs/formulas.md for
the derivation.

How closely each setting's cosines follow the exact per-sample gradients' (`benchmarks.gradient_agreement`),
and at what speed (`benchmarks.gradients`), is in their reports (docs/performance.md#gradient-features): a
final projection to d dimensions misplaces a cosine by about 1/√d, whatever the blocks.

Batches are packed: the samples of a batch are concatenated into one row with no padding, positions
restart at 0 for each sample and attention is causal within each sample (`packed_causal_attention`),
so every token sees what it would see alone and no FLOP is spent on padding. The vocabulary-sized logits
gradient is formed in row chunks without autograd (`_head_gradients`). What both changes gained is in
benchmarks/results/measurements.md ("From the code").
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from prismatic.config import FeaturesConfig
from prismatic.errors import PrismError
from prismatic.gradients.chat import IGNORE, EncodedChat, encode_chat
from prismatic.gradients.featureset import FeatureSet, Shard, shard_units
from prismatic.gradients.projection import CountSketch, RademacherProjection
from prismatic.metrics.vendi import normalize_rows

PACKED_ATTENTION = "prism_packed_causal"
SIGNS_CACHE_BYTES = 2 << 30
"""The final projection's bf16 signs (2·concat·d bytes, concat the concatenated blocks' size) are generated
once and kept when they fit this; larger ones are generated again for every batch."""


def packed_causal_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            prism_lengths=(), sliding_window=None, **kwargs):
    """Causal attention within each sample of one packed row (a transformers attention function).

    query (1, heads, T, d), key and value (1, kv_heads, T, d), `prism_lengths` the samples' token
    counts in row order. Per sample: softmax(q kᵀ · scaling, future masked) v, softmax in float32,
    the `heads / kv_heads` query heads of a group stacked against their shared key/value head (no
    repeated keys). Returns (1, T, heads, d). Plain matmuls: at GSM8K lengths their backward on CPU is
    faster than SDPA's flash kernel (benchmarks/results/measurements.md, "From the code").
    """
    if sliding_window:
        raise PrismError("fast gradients do not support sliding-window attention; use --mode faithful")
    heads, kv_heads, size = query.shape[1], key.shape[1], query.shape[-1]
    groups = heads // kv_heads
    scaling = size ** -0.5 if scaling is None else scaling
    pieces, start = [], 0
    for n in prism_lengths:
        q = query[0, :, start:start + n].reshape(kv_heads, groups * n, size)
        k, v = key[0, :, start:start + n], value[0, :, start:start + n]
        future = torch.ones(n, n, dtype=torch.bool, device=query.device).triu(1).repeat(groups, 1)
        scores = ((q @ k.transpose(-1, -2)) * scaling).masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        pieces.append((weights @ v).reshape(heads, n, size))
        start += n
    return torch.cat(pieces, dim=1).transpose(0, 1)[None].contiguous(), None


AttentionInterface.register(PACKED_ATTENTION, packed_causal_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, lambda *args, **kwargs: None)  # masking is per sample above


@dataclass
class _Packing:
    """Where each token of a packed row belongs: its sample and its position in that sample."""

    lengths: list[int]
    sample: torch.Tensor  # (T,) sample index of each token
    slot: torch.Tensor  # (T,) position of each token in its sample
    membership: torch.Tensor  # (B × T) float32, 1 where token t belongs to sample b

    @classmethod
    def of(cls, lengths: list[int], device: torch.device) -> _Packing:
        sample = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        slot = torch.cat([torch.arange(n) for n in lengths])
        membership = (sample[None, :] == torch.arange(len(lengths))[:, None]).float()
        return cls(lengths, sample.to(device), slot.to(device), membership.to(device))

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """T × k → B × longest × k, zero after each sample's end (for per-sample Σ_t by bmm)."""
        padded = values.new_zeros(len(self.lengths), max(self.lengths), values.shape[-1])
        padded[self.sample, self.slot] = values
        return padded

    def sum(self, values: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
        """T × n → B × n float32: each sample's sum over its tokens, Σ_t w_t values_t when weighted.

        One (B × T) @ (T × n) matmul in the values' dtype (float32 accumulation).
        """
        weights = self.membership if token_weights is None else self.membership * token_weights[None, :]
        return (weights.to(values.dtype) @ values).float()


def _derived_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


@dataclass
class Segment:
    """One piece of the concatenated per-sample vector: a parameter's (projected) gradient."""

    name: str
    kind: str  # linear | bias | norm | embedding
    shape: tuple[int, ...]  # shape of the block per sample (k_out, k_in) or (n,)
    offset: int = 0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


class _SideProjection:
    """P (size → k) stored transposed (size × k), entries ±1/√k; identity when size ≤ k."""

    def __init__(self, size: int, k: int, seed: int, dtype: torch.dtype, device: torch.device):
        self.identity = size <= k
        self.k = size if self.identity else k
        self.matrix = None
        if not self.identity:
            signs = RademacherProjection(in_dim=size, out_dim=k, seed=seed).signs(0, size, torch.float32)
            self.matrix = (signs / k ** 0.5).to(dtype=dtype, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else x @ self.matrix.to(x.dtype)

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """P e_i for token ids i (rows of the stored matrix): the projection of a one-hot row."""
        if self.identity:
            return F.one_hot(index, self.k).to(torch.float32)
        return F.embedding(index, self.matrix)


class FastFeaturizer:
    """Batched projected per-sample gradients of a causal LM (see the module docstring)."""

    def __init__(self, model, tokenizer, settings: FeaturesConfig | None = None, *, max_tokens: int | None = None,
                 compute_dtype: torch.dtype | None = None):
        """settings: prism.yaml's `features:` (of which this reads dim, seed, block_in, block_out, batch_tokens and
        final; None: the defaults); max_tokens: cut each chat to this many tokens (None: never); compute_dtype:
        the model's dtype when None."""
        settings = settings or FeaturesConfig()
        self.model, self.tokenizer = model, tokenizer
        self.dim, self.seed, self.final, self.max_tokens = settings.dim, settings.seed, settings.final, max_tokens
        self.block_in, self.block_out, self.batch_tokens = settings.block_in, settings.block_out, settings.batch_tokens
        self.device = next(model.parameters()).device
        self.dtype = compute_dtype or next(model.parameters()).dtype
        self.head = model.get_output_embeddings()
        self.embedding = model.get_input_embeddings()
        self.tied = self.head.weight is self.embedding.weight
        self.segments: list[Segment] = []
        self._proj: dict[str, tuple[_SideProjection, _SideProjection]] = {}
        self._build_layout()
        self.concat_dim = sum(s.size for s in self.segments)
        self.dense = RademacherProjection(self.concat_dim, self.dim, seed=self.seed)
        self.sketch = CountSketch(self.concat_dim, self.dim, seed=self.seed) if self.final == "sparse" else None
        self._dense_signs = None
        if self.sketch is None and self.concat_dim * self.dim * 2 <= SIGNS_CACHE_BYTES:
            self._dense_signs = self.dense.signs(0, self.concat_dim, torch.bfloat16).to(self.device)

    # -- layout ---------------------------------------------------------------------------------
    def _side_pair(self, name: str, n_out: int, n_in: int):
        p_out = _SideProjection(n_out, self.block_out, _derived_seed(self.seed, name + ":out"), self.dtype,
                                self.device)
        p_in = _SideProjection(n_in, self.block_in, _derived_seed(self.seed, name + ":in"), self.dtype,
                               self.device)
        self._proj[name] = (p_out, p_in)
        return p_out, p_in

    def _add(self, segment: Segment) -> None:
        segment.offset = sum(s.size for s in self.segments)
        self.segments.append(segment)

    def _build_layout(self) -> None:
        self._linears, self._norms = [], []
        for name, module in self.model.named_modules():
            if module is self.head:
                continue
            if isinstance(module, torch.nn.Linear):
                p_out, p_in = self._side_pair(name, module.out_features, module.in_features)
                self._add(Segment(name + ".weight", "linear", (p_out.k, p_in.k)))
                if module.bias is not None:
                    self._add(Segment(name + ".bias", "bias", (module.out_features,)))
                self._linears.append((name, module))
            elif type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
                self._add(Segment(name + ".weight", "norm", tuple(module.weight.shape)))
                self._norms.append((name, module))
            elif any(p.requires_grad for p in module.parameters(recurse=False)) and module is not self.embedding:
                raise PrismError(f"fast gradients do not cover parameters of {name} ({type(module).__name__}); "
                                 "use --mode faithful for this model")
        vocab, hidden = self.embedding.weight.shape
        p_v, p_h = self._side_pair("embedding", vocab, hidden)
        self._add(Segment("embedding" if self.tied else "lm_head.weight", "embedding", (p_v.k, p_h.k)))
        if not self.tied:
            p_v2, p_h2 = self._side_pair("input_embedding", vocab, hidden)
            self._add(Segment("embed_tokens.weight", "embedding", (p_v2.k, p_h2.k)))
        if getattr(self.head, "bias", None) is not None:
            raise PrismError("an output head with a bias is not covered by fast gradients")

    def describe(self) -> dict:
        """Projection identity stored with the features: seeds, block sizes and the layout."""
        kind = "factored-countsketch-v1" if self.sketch is not None else "factored-rademacher-v1"
        return {"kind": kind, "seed": self.seed, "dim": self.dim,
                "block_in": self.block_in, "block_out": self.block_out, "concat_dim": self.concat_dim,
                "segments": [[s.name, list(s.shape)] for s in self.segments]}

    # -- one batch ------------------------------------------------------------------------------
    def per_sample_blocks(self, chats: list[EncodedChat]) -> torch.Tensor:
        """Concatenated projected gradients (B × concat_dim, float32) from one forward+backward.

        The samples are packed into one row (no padding): positions restart at 0 for each sample and
        attention stays causal within each sample (`packed_causal_attention`), so each token sees
        exactly what it would see alone.
        """
        lengths = [chat.n_tokens for chat in chats]
        ignore = torch.tensor([IGNORE])
        ids = torch.cat([chat.input_ids for chat in chats])[None].to(self.device)
        # Position t predicts token t+1 of its own sample; a sample's last position predicts nothing.
        targets = torch.cat([torch.cat([chat.labels[1:], ignore]) for chat in chats]).to(self.device)
        positions = torch.cat([torch.arange(n) for n in lengths])[None].to(self.device)
        packing = _Packing.of(lengths, self.device)
        out = torch.zeros(len(chats), self.concat_dim, dtype=torch.float32, device=self.device)
        handles = [m.register_forward_hook(self._linear_hook(n, out, packing)) for n, m in self._linears]
        handles += [m.register_forward_hook(self._norm_hook(n, out, packing)) for n, m in self._norms]
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        attention = self.model.config._attn_implementation
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            self.model.config._attn_implementation = PACKED_ATTENTION
            with torch.enable_grad():
                self._forward_backward(ids, targets, positions, packing, out)
        finally:
            self.model.config._attn_implementation = attention
            for handle in handles:
                handle.remove()
            for p, flag in saved:
                p.requires_grad_(flag)
        return out

    def _segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    def _linear_hook(self, name: str, out: torch.Tensor, packing: _Packing):
        p_out, p_in = self._proj[name]
        weight_seg = self._segment(name + ".weight")
        bias_seg = next((s for s in self.segments if s.name == name + ".bias"), None)

        def hook(module, inputs, output):
            projected_in = p_in(inputs[0].detach()[0]).float()  # T × k_in

            def on_grad(delta):
                projected_out = p_out(delta[0]).float()  # T × k_out
                block = packing.pad(projected_out).transpose(1, 2) @ packing.pad(projected_in)  # B × k_out × k_in
                out[:, weight_seg.offset:weight_seg.offset + weight_seg.size] += block.flatten(1)
                if bias_seg is not None:
                    out[:, bias_seg.offset:bias_seg.offset + bias_seg.size] += packing.sum(delta[0])

            output.register_hook(on_grad)
        return hook

    def _norm_hook(self, name: str, out: torch.Tensor, packing: _Packing):
        seg = self._segment(name + ".weight")

        def hook(module, inputs, output):
            x = inputs[0].detach()[0]
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
            # y = w ⊙ x̂, x̂_t = r_t x_t with r_t = (mean(x_t²) + eps)^(-1/2), so the weight's
            # per-sample gradient is Σ_t r_t (δ_t ⊙ x_t): one product pass, r folded into the sum.
            squares = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).square()
            scale = torch.rsqrt(squares / x.shape[-1] + eps)

            def on_grad(delta):
                out[:, seg.offset:seg.offset + seg.size] += packing.sum(delta[0] * x, scale)

            output.register_hook(on_grad)
        return hook

    def _forward_backward(self, ids, targets, positions, packing: _Packing, out) -> None:
        embeds = self.embedding(ids).detach().requires_grad_(True)
        hidden = self.model.base_model(inputs_embeds=embeds, position_ids=positions, use_cache=False,
                                       prism_lengths=packing.lengths).last_hidden_state
        # Score only assistant targets, each sample's loss a mean over its own.
        (rows,) = (targets != IGNORE).nonzero(as_tuple=True)
        sample = packing.sample[rows]
        counts = torch.bincount(sample, minlength=len(packing.lengths)).clamp(min=1)
        h_sel = hidden[0, rows].detach()  # N × h
        grad_h, logits_grad_projected = self._head_gradients(h_sel, targets[rows], 1.0 / counts[sample])
        grad_hidden = torch.zeros_like(hidden)
        grad_hidden[0, rows] = grad_h
        hidden.backward(grad_hidden)

        p_v, p_h = self._proj["embedding"]
        emb_seg = self.segments[-1] if self.tied else self._segment("lm_head.weight")
        # Head: Σ_t (P_V δ_t)(P_h h_t)ᵀ per sample, δ_t the logits' gradient.
        # One batched matmul over the padded samples (tokens that are not scored stay zero), not an N × k_V × k_h
        # outer product summed by index: the latter wrote N·k_V·k_h floats and took ~15 % of the tiny preset's time.
        head_in = hidden.new_zeros(hidden.shape[1], p_h.k, dtype=torch.float32)
        head_in[rows] = p_h(h_sel).float()  # T × k_h
        head_delta = head_in.new_zeros(hidden.shape[1], p_v.k)
        head_delta[rows] = logits_grad_projected  # T × k_V
        block = packing.pad(head_delta).transpose(1, 2) @ packing.pad(head_in)  # B × k_V × k_h
        if not self.tied:
            out[:, emb_seg.offset:emb_seg.offset + emb_seg.size] += block.flatten(1)
            p_v, p_h = self._proj["input_embedding"]
            emb_seg = self._segment("embed_tokens.weight")
            block = torch.zeros_like(block)
        # Embedding rows: Σ_t (P_V e_{token_t})(P_h g_t)ᵀ over every token.
        grad_in = p_h(embeds.grad[0].to(self.dtype)).float()  # T × k_h
        block += packing.pad(p_v.columns(ids[0]).float()).transpose(1, 2) @ packing.pad(grad_in)
        out[:, emb_seg.offset:emb_seg.offset + emb_seg.size] += block.flatten(1)

    def _head_gradients(self, h_sel, target, weight):
        """Logits gradients of Σ_i weight_i · CE(W h_i, target_i), without autograd over the vocabulary.

        δ_i = weight_i (softmax(W h_i) − e_{target_i}), computed in row chunks of about 16M logits
        (softmax in float32, δ cast to the model dtype as autograd would): returns ∂L/∂h_i = δ_i W
        (N × h) and P_V δ_i (N × k_V, float32). Autograd through a float32 log-softmax would keep the
        N × V logits, their log-softmax and a zero-filled N × V gradient alive: about a quarter of
        the time on the Qwen2.5 shape's 152K vocabulary.
        """
        weight_matrix = self.head.weight  # V × h
        p_v = self._proj["embedding"][0]
        grad_h = torch.empty_like(h_sel)
        projected = torch.empty(len(h_sel), p_v.k, dtype=torch.float32, device=h_sel.device)
        chunk = max(1, (1 << 24) // weight_matrix.shape[0])
        for start in range(0, len(h_sel), chunk):
            part = slice(start, start + chunk)
            probabilities = torch.softmax(h_sel[part] @ weight_matrix.T, dim=-1, dtype=torch.float32)
            probabilities[torch.arange(len(probabilities), device=h_sel.device), target[part]] -= 1.0
            delta = probabilities.mul_(weight[part, None]).to(self.dtype)
            grad_h[part] = delta @ weight_matrix
            projected[part] = p_v(delta).float()
        return grad_h, projected

    # -- whole data set -------------------------------------------------------------------------
    def project(self, blocks: torch.Tensor) -> torch.Tensor:
        """The final stage: concatenated blocks to `dim`, float32; a CountSketch (`final: sparse`) or the
        dense Rademacher projection (÷√dim)."""
        if self.sketch is not None:
            return self.sketch.project(blocks)
        if self._dense_signs is None:
            return self.dense.project(blocks, dtype=torch.bfloat16)
        return (blocks.to(torch.bfloat16) @ self._dense_signs).float() / self.dim ** 0.5

    def features(self, samples: pl.DataFrame, progress: bool = True, shard: Shard | None = None) -> FeatureSet:
        """Unit-row features of `samples` (id, prompt, response), batched by length.

        `shard` = (index, count): only the rows of that shard's batches (`shard_units` of the whole
        length-sorted batch plan, weighted by padded tokens), in `samples` order.
        """
        started = time.perf_counter()
        chats = []
        for row in samples.iter_rows(named=True):
            try:
                chats.append(encode_chat(self.tokenizer, row["prompt"], row["response"], self.max_tokens))
            except PrismError as exc:
                raise PrismError(f"sample {row['id']!r}: {exc}") from None
        order = sorted(range(len(chats)), key=lambda i: chats[i].n_tokens)
        batches = list(self._batches(order, chats))
        tokens = [sum(chats[i].n_tokens for i in batch) for batch in batches]
        batches = [batches[unit] for unit in shard_units(tokens, shard)]
        rows = sorted(i for batch in batches for i in batch)
        position = {i: k for k, i in enumerate(rows)}
        features = torch.empty(len(rows), self.dim, dtype=torch.float32)
        bar = tqdm(total=len(rows), desc="gradient features (fast)", unit="sample", disable=not progress)
        for batch in batches:
            blocks = self.per_sample_blocks([chats[i] for i in batch])
            features[[position[i] for i in batch]] = normalize_rows(self.project(blocks)).cpu()
            bar.update(len(batch))
        bar.close()
        meta = {"mode": "fast", "dim": self.dim, "projection": self.describe(),
                "model_dtype": str(self.dtype).removeprefix("torch."), "max_tokens": self.max_tokens}
        ids = samples["id"].to_list()
        return FeatureSet(ids=[ids[i] for i in rows], features=features.numpy(),
                          n_tokens=[chats[i].n_tokens for i in rows], truncated=[chats[i].truncated for i in rows],
                          meta=meta, seconds=time.perf_counter() - started)

    def _batches(self, order: list[int], chats: list[EncodedChat]):
        """Consecutive runs of the length-sorted order whose packed size fits `batch_tokens`."""
        batch: list[int] = []
        size = 0
        for i in order:
            if batch and size + chats[i].n_tokens > self.batch_tokens:
                yield batch
                batch, size = [], 0
            batch.append(i)
            size += chats[i].n_tokens
        if batch:
            yield batch
