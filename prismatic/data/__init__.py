"""Samples and their quality: reading users' JSONL/Parquet (`samples`), duplicate removal and
decontamination (`quality`), and the text and perplexity filters of generated problems (`filters`)."""
