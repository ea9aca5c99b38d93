"""Fast per-sample gradient features: one forward+backward per batch, no weight gradient formed.

For a linear layer y = W x (+ b), a sample's gradient is G_W = Σ_t δ_t x_tᵀ (δ_t = ∂L/∂y_t over that
sample's tokens). Its factored projection with Rademacher P_out (k_out × out) and P_in (k_in × in),
each entry ±1/√k, is

    P_out G_W P_inᵀ = Σ_t (P_out δ_t)(P_in x_t)ᵀ          (k_out × k_in per sample),

the Kronecker projection (P_out ⊗ P_in) vec(G_W): inner products are preserved in expectation, as
for any Johnson–Lindenstrauss map. It is computed from forward hooks (P_in x) and output-gradient
hooks (P_out δ) for a whole padded batch, so the model's parameters never require grad and only
input-gradients are backpropagated (≈ 4·params·tokens FLOPs, against 6·params·tokens plus a dense
projection of every flattened gradient in the faithful path).

Covered, so the concatenation is the whole gradient up to projection:
- every nn.Linear but the output head (blocks as above; bias gradient Σ_t δ_t kept exactly);
- the output head and the input embedding: for tied weights E (V × h) the gradient is
  Σ_t δ^logits_t h_tᵀ (head) + Σ_t e_{token_t} g_tᵀ (embedding rows, g_t = ∂L/∂embedding_t); both are
  projected with the same P_V, P_h and added; untied weights get one block each;
- RMSNorm weights: Σ_t δ_t ⊙ x̂_t, kept exactly (h numbers each).
A layer side whose size is ≤ its block size is not projected (identity), so small layers are exact.
The concatenated vector is projected densely to `dim` with a seeded Rademacher matrix (÷√dim) and
each row is L2-normalized. Losses are as in the faithful path (mean over each sample's assistant
tokens), so per-sample gradients are exact up to the projections. Batches are right-padded and run
with plain causal attention (no padding mask, so SDPA takes its causal kernel): a padded position
comes after every real token of its row, so no real token attends to it, it gets no loss, and its
output-gradients δ are exactly zero, so it adds nothing to any block.
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

from prismatic.errors import PrismError
from prismatic.gradients import IGNORE, EncodedChat, FeatureSet, Shard, encode_chat, shard_units
from prismatic.gvendi import normalize_rows
from prismatic.projection import RademacherProjection


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

    def __init__(self, model, tokenizer, *, dim: int = 1024, seed: int = 0, block_in: int = 32,
                 block_out: int = 32, batch_tokens: int = 4096, max_tokens: int | None = None,
                 compute_dtype: torch.dtype | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.dim, self.seed, self.max_tokens = dim, seed, max_tokens
        self.block_in, self.block_out, self.batch_tokens = block_in, block_out, batch_tokens
        self.device = next(model.parameters()).device
        self.dtype = compute_dtype or next(model.parameters()).dtype
        self.head = model.get_output_embeddings()
        self.embedding = model.get_input_embeddings()
        self.tied = self.head.weight is self.embedding.weight
        self.segments: list[Segment] = []
        self._proj: dict[str, tuple[_SideProjection, _SideProjection]] = {}
        self._build_layout()
        self.concat_dim = sum(s.size for s in self.segments)
        self.dense = RademacherProjection(self.concat_dim, dim, seed=seed)
        self._dense_signs = None
        if self.concat_dim * dim * 2 <= 1 << 30:  # cache up to 1 GiB of bf16 signs
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
        return {"kind": "factored-rademacher-v1", "seed": self.seed, "dim": self.dim,
                "block_in": self.block_in, "block_out": self.block_out, "concat_dim": self.concat_dim,
                "segments": [[s.name, list(s.shape)] for s in self.segments]}

    # -- one batch ------------------------------------------------------------------------------
    def per_sample_blocks(self, chats: list[EncodedChat]) -> torch.Tensor:
        """Concatenated projected gradients (B × concat_dim, float32) from one forward+backward."""
        batch, length = len(chats), max(c.n_tokens for c in chats)
        ids = torch.full((batch, length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE, dtype=torch.long)
        mask = torch.zeros((batch, length), dtype=torch.long)
        for i, chat in enumerate(chats):
            ids[i, :chat.n_tokens], labels[i, :chat.n_tokens], mask[i, :chat.n_tokens] = (
                chat.input_ids, chat.labels, 1)
        ids, labels, mask = ids.to(self.device), labels.to(self.device), mask.to(self.device)
        out = torch.zeros(batch, self.concat_dim, dtype=torch.float32, device=self.device)
        handles = [m.register_forward_hook(self._linear_hook(n, out)) for n, m in self._linears]
        handles += [m.register_forward_hook(self._norm_hook(n, out)) for n, m in self._norms]
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            with torch.enable_grad():
                self._forward_backward(ids, labels, mask, out)
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in saved:
                p.requires_grad_(flag)
        return out

    def _segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    def _linear_hook(self, name: str, out: torch.Tensor):
        p_out, p_in = self._proj[name]
        weight_seg = self._segment(name + ".weight")
        bias_seg = next((s for s in self.segments if s.name == name + ".bias"), None)

        def hook(module, inputs, output):
            projected_in = p_in(inputs[0].detach()).float()  # B × T × k_in

            def on_grad(delta):
                projected_out = p_out(delta).float()  # B × T × k_out
                block = projected_out.transpose(1, 2) @ projected_in  # B × k_out × k_in
                out[:, weight_seg.offset:weight_seg.offset + weight_seg.size] += block.flatten(1)
                if bias_seg is not None:
                    out[:, bias_seg.offset:bias_seg.offset + bias_seg.size] += delta.float().sum(1)

            output.register_hook(on_grad)
        return hook

    def _norm_hook(self, name: str, out: torch.Tensor):
        seg = self._segment(name + ".weight")

        def hook(module, inputs, output):
            x = inputs[0].detach().float()
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
            normalized = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(inputs[0].dtype).float()

            def on_grad(delta):
                out[:, seg.offset:seg.offset + seg.size] += (delta.float() * normalized).sum(1)

            output.register_hook(on_grad)
        return hook

    def _forward_backward(self, ids, labels, mask, out) -> None:
        embeds = self.embedding(ids).detach().requires_grad_(True)
        hidden = self.model.base_model(inputs_embeds=embeds).last_hidden_state
        # Position t predicts token t+1: score only assistant targets, each sample's loss a mean.
        targets = labels[:, 1:]
        rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
        counts = (targets != IGNORE).sum(1).clamp(min=1).float()
        h_sel = hidden[rows, cols]  # N × h
        logits = (h_sel @ self.head.weight.T).float()
        weights = 1.0 / counts[rows]
        loss = (F.cross_entropy(logits, targets[rows, cols], reduction="none") * weights).sum()

        p_v, p_h = self._proj["embedding"]
        emb_seg = self.segments[-1] if self.tied else self._segment("lm_head.weight")
        head_in = p_h(h_sel.detach()).float()  # N × k_h
        captured = {}
        logits.register_hook(lambda g: captured.__setitem__("logits", g))
        loss.backward()
        # Head: Σ_t (P_V δ_t)(P_h h_t)ᵀ per sample, from the logits' gradient.
        head_out = p_v(captured["logits"].to(self.dtype)).float()  # N × k_v
        block = torch.zeros(out.shape[0], p_v.k, p_h.k, device=out.device)
        block.index_add_(0, rows, head_out[:, :, None] * head_in[:, None, :])
        if not self.tied:
            out[:, emb_seg.offset:emb_seg.offset + emb_seg.size] += block.flatten(1)
            p_v, p_h = self._proj["input_embedding"]
            emb_seg = self._segment("embed_tokens.weight")
            block = torch.zeros_like(block)
        # Embedding rows: Σ_t (P_V e_{token_t})(P_h g_t)ᵀ over every real token.
        grad_in = p_h(embeds.grad.to(self.dtype)).float() * mask[..., None]  # B × T × k_h
        block += p_v.columns(ids).float().transpose(1, 2) @ grad_in
        out[:, emb_seg.offset:emb_seg.offset + emb_seg.size] += block.flatten(1)

    # -- whole data set -------------------------------------------------------------------------
    def project(self, blocks: torch.Tensor) -> torch.Tensor:
        """Dense Rademacher projection of concatenated blocks to `dim` (÷√dim), float32."""
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
        padded = [chats[batch[-1]].n_tokens * len(batch) for batch in batches]
        batches = [batches[unit] for unit in shard_units(padded, shard)]
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
        """Consecutive runs of the length-sorted order whose padded size fits `batch_tokens`."""
        batch: list[int] = []
        for i in order:
            if batch and chats[i].n_tokens * (len(batch) + 1) > self.batch_tokens:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch
