"""Dagster resources that bind the engines of `prismatic` to configuration."""
