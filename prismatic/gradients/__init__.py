"""Per-sample gradient features of the proxy LM (docs/formulas.md): chat encoding and the
assistant-token mask (chat.py), the random projection (projection.py), the faithful (per-sample
backward, faithful.py) and fast (factored per-layer, fast.py) paths, the feature set and its shards
(featureset.py), the entry point that loads the proxy and picks a path (proxy.py), and feature files
(files.py)."""
