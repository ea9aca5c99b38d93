"""The round assets, one module per asset family (docs/architecture.md)."""
