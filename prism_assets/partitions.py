"""One partition per synthesis round: keys r000 (the seed round), r001, r002, …"""

from dagster import DynamicPartitionsDefinition

rounds = DynamicPartitionsDefinition(name="rounds")


def round_key(number: int) -> str:
    """Zero-padded round key, so lexical order is round order."""
    return f"r{number:03d}"
