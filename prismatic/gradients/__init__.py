"""Per-sample gradient features of the proxy LM: chat encoding and the assistant-token mask, the
random projections, the faithful (per-sample backward) and fast (factored per-layer) paths, the
feature set and its shards, and feature files."""
