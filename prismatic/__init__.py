"""Prismatic: grow synthetic reasoning data and measure gradient-space diversity (G-Vendi).

The core science lives here and imports no Dagster; `prism_assets/` wraps it as assets.
"""

__version__ = "0.1.0"
