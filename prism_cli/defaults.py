"""Defaults quoted in the `prism` help texts, read from the configuration model so that no help text holds a
hand-written copy of one (tests/test_docs.py checks every `default` a help text names against the model)."""

from __future__ import annotations

from functools import reduce

from prismatic.config import PrismConfig

_DEFAULTS = PrismConfig()


def default_value(key: str) -> object:
    """The model's default of a dotted prism.yaml key, e.g. `features.dim` (an AttributeError for an unknown key)."""
    return reduce(getattr, key.split("."), _DEFAULTS)


def default_of(key: str) -> str:
    """`default <key> = <value>` for a help text: the option falls back to `key` of prism.yaml, whose own default
    (what the model gives when prism.yaml does not set it) is `value`."""
    return f"default {key} = {default_value(key)}"
