"""Dagster assets of the Prismatic round pipeline: thin wrappers over `prismatic`."""
