"""Diversity metrics (docs/formulas.md): `registry` (by name), `baselines` (n-gram, compression,
embedding, proxy NLL), `cluster_agent` (LLM judge) with its `prompts`, `embeddings`, `plots`."""
