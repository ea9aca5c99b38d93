"""Diversity metrics (DESIGN §9–10): `registry` (by name), `baselines` (n-gram, compression,
embedding, proxy NLL), `cluster_agent` (LLM judge) with its `prompts`, `embeddings`, `plots`."""
